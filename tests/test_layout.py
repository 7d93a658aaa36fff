"""The shape of the package: a small core, and companions the core never imports.

The size rule (tests/core_size.py counts): the core holds at most 3,500 lines of code (docstrings,
comments and blank lines not counted) and no core module is over 400 lines in all. The layering is
written as import-linter contracts in pyproject.toml and checked by ``make lint``; here, that the
contracts name every core module and that they do catch a forbidden import.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import core_size

ROOT = Path(__file__).resolve().parents[1]


def test_the_core_holds_at_most_3500_lines_of_code():  # 4,519 code lines at the redesign (issue 24): enforced
    rows = core_size.table()
    total = sum(code for _, code, _ in rows)
    assert total <= core_size.MAX_CODE_LINES, \
        f"the core has {total} code lines, over {core_size.MAX_CODE_LINES}:\n{core_size.report(rows)}"


def test_no_core_module_is_over_400_lines():  # holds since the redesign: enforced
    rows = core_size.table()
    too_long = [path for path, _, physical in rows if physical > core_size.MAX_MODULE_LINES]
    assert not too_long, f"core modules over {core_size.MAX_MODULE_LINES} lines: {too_long}\n{core_size.report(rows)}"


def test_code_lines_leave_out_docstrings_comments_and_blank_lines():
    source = '''"""A module docstring,
on two lines."""
import math  # a comment after code counts as code


def f(x):
    """The docstring of f."""
    # a comment line
    text = """a string that is not a docstring
    spans two lines"""
    return math.sqrt(x) + len(text)


class C:
    """A class docstring."""

    y = 1
'''
    assert core_size.code_lines(source) == 7  # import, def, text = (2 lines), return, class, y


def test_the_core_is_the_package_minus_its_companions():
    files = {str(p.relative_to(ROOT)) for p in core_size.core_files()}
    assert "infergen/__init__.py" in files and "infergen/decoding/__init__.py" in files
    assert not [f for f in files if f.startswith(("infergen/book/", "infergen/bench/", "infergen/course/")) or f == "infergen/testing.py"]


def contracts() -> dict[str, dict]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf8"))
    return {c["id"]: c for c in config["tool"]["importlinter"]["contracts"]}


def test_the_contracts_name_every_core_module():
    """A new core module is covered by the forbidden contracts the day it is added (else they would not
    look at it), and the companions are the ones the contracts keep apart."""
    core = core_size.core_modules()
    for name in ("core-imports-no-companion", "core-draws-nothing"):
        listed = set(contracts()[name]["source_modules"])
        assert listed == core, (f"pyproject.toml's contract {name!r}: add {sorted(core - listed)}, "
                                f"remove {sorted(listed - core)}")
    companions = {f"infergen.{c}" for c in core_size.COMPANIONS}
    assert set(contracts()["core-imports-no-companion"]["forbidden_modules"]) == companions
    assert set(contracts()["companions-independent"]["modules"]) == companions


@pytest.mark.parametrize("module, line, broken", [
    ("text.py", "from infergen.book import viz", "infergen.text is not allowed to import infergen.book"),
    ("__init__.py", "from .bench import timing", "infergen is not allowed to import infergen.bench"),
    ("text.py", "import matplotlib", "infergen.text is not allowed to import matplotlib"),
])
def test_the_contracts_catch_a_forbidden_import(tmp_path, module, line, broken):
    """lint-imports, run on a copy of the package with one forbidden import added, names it."""
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("import-linter is not installed (the dev extra)")
    shutil.copytree(ROOT / "infergen", tmp_path / "infergen", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "infergen" / module
    target.write_text(target.read_text(encoding="utf8") + f"\n{line}\n", encoding="utf8")
    out = subprocess.run([str(lint), "--no-cache"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 1, out.stdout + out.stderr
    assert broken in out.stdout, out.stdout
