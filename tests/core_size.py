"""The size of infergen's core: code lines per module, the one counter (tests/test_layout.py and the lead's
notes use it). Run ``python tests/core_size.py`` from the repository root for the table.

The core is ``infergen/`` minus its companions (:data:`COMPANIONS`). A *code line* is a physical line that
holds a token of code: blank lines, comment lines and docstrings (the first string of a module, class or
function) are not counted, so the rule "at most 3,500 code lines" never asks for a shorter docstring.
"""
from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "infergen"
COMPANIONS = ("book", "bench", "course", "testing", "interop", "__main__")  # infergen.book, ... and python -m infergen
MAX_CODE_LINES = 3500   # the whole core, code lines
MAX_MODULE_LINES = 400  # any one core module, physical lines (docstrings and comments included)


def code_lines(source: str) -> int:
    """The number of lines of ``source`` that hold code (not blank, not only a comment, not a docstring)."""
    docstrings: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                docstrings.update(range(first.lineno, first.end_lineno + 1))
    lines: set[int] = set()
    skip = (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in skip:
            lines.update(n for n in range(tok.start[0], tok.end[0] + 1) if n not in docstrings)
    return len(lines)


def core_files(package: Path = PACKAGE) -> list[Path]:
    """Every .py file of the core, sorted."""
    companions = {package / name for name in COMPANIONS}
    return sorted(p for p in package.rglob("*.py")
                  if not any(p == c.with_suffix(".py") or c in p.parents for c in companions))


def core_modules(package: Path = PACKAGE) -> set[str]:
    """The dotted names of the core's top-level modules and subpackages (``infergen.decoding``, ...)."""
    names = set()
    for entry in package.iterdir():
        if entry.stem in COMPANIONS or entry.name.startswith(".") or entry.name == "__pycache__":
            continue
        if entry.suffix == ".py" and entry.name != "__init__.py":
            names.add(f"infergen.{entry.stem}")
        elif entry.is_dir() and (entry / "__init__.py").exists():
            names.add(f"infergen.{entry.name}")
    return names


def table(package: Path = PACKAGE) -> list[tuple[str, int, int]]:
    """(path, code lines, physical lines) of every core file, largest code first."""
    rows = []
    for path in core_files(package):
        text = path.read_text(encoding="utf8")
        rows.append((str(path.relative_to(package.parent)), code_lines(text), len(text.splitlines())))
    return sorted(rows, key=lambda row: (-row[1], row[0]))


def report(rows) -> str:
    """The table as text, with the totals and the limits."""
    lines = [f"{'module':44} {'code':>6} {'lines':>6}"]
    for path, code, physical in rows:
        flag = "  > %d lines" % MAX_MODULE_LINES if physical > MAX_MODULE_LINES else ""
        lines.append(f"{path:44} {code:6} {physical:6}{flag}")
    lines.append(f"{'core':44} {sum(r[1] for r in rows):6} {sum(r[2] for r in rows):6}"
                 f"   (limits: {MAX_CODE_LINES} code lines; {MAX_MODULE_LINES} lines per module)")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(table()))
