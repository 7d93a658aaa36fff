"""A student's notebook (``.ipynb``, e.g. from Colab) as the source of a ``.py`` submission.

The notebook is read as JSON (no Jupyter needed). From its code cells, in order, the grader keeps what
*defines* the assignment: ``import``/``from`` statements, ``def`` and ``class`` blocks, and assignments of
constants (``NEG_INF = float("-inf")``: names bound to literals, or to calls of ``float``, ``int``,
``tuple``...); ``from __future__`` imports, from any cell, move to the top. Everything else -- calls at the top level (``print(...)``, ``out = my_decode(model, ...)``),
loops, plots, a model download, shell lines (``!pip ...``) and magics (``%time``) -- is left out: the
experiments a student ran while working are not re-run by the grader (they would be slow, and need things
the grader does not have). A cell that does not parse is left out with a note; so the functions you want
graded must be defined at the top level of a cell that runs.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

__all__ = ["notebook_source"]

#: Calls allowed in a kept constant assignment.
CONSTANT_CALLS = frozenset({"float", "int", "str", "tuple", "list", "dict", "set", "frozenset", "range", "bool"})


def _is_constant(value: ast.AST) -> bool:
    for node in ast.walk(value):
        if isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id in CONSTANT_CALLS):
                return False
        elif isinstance(node, (ast.Lambda, ast.Await, ast.Yield, ast.YieldFrom, ast.NamedExpr)):
            return False
    return True


def _keep(node: ast.stmt) -> bool:
    if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return True
    if isinstance(node, ast.Assign):
        return all(isinstance(t, ast.Name) for t in node.targets) and _is_constant(node.value)
    if isinstance(node, ast.AnnAssign):
        return isinstance(node.target, ast.Name) and (node.value is None or _is_constant(node.value))
    return False


def _segment(lines: list[str], node: ast.stmt) -> str:
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return "\n".join(lines[first - 1:node.end_lineno])


def notebook_source(path) -> tuple[str, list[str]]:
    """``(source, notes)``: the kept top-level statements of the notebook's code cells, each preceded by a
    ``# cell N`` comment (line numbers in messages then point into it), and notes on cells left out."""
    path = Path(path)
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
        cells = nb["cells"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        from .grade import SubmissionError

        raise SubmissionError(f"{path.name} is not a readable notebook: {type(err).__name__}: {err}") from err
    parts, notes, skipped = [], [], 0
    features: set[str] = set()   # `from __future__ import ...` names, from any cell
    for number, cell in enumerate(cells, 1):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        text = cell.get("source", "")
        text = "".join(text) if isinstance(text, list) else str(text)
        lines = ["" if line.lstrip().startswith(("!", "%")) else line for line in text.splitlines()]
        code = "\n".join(lines)
        try:
            tree = ast.parse(code)
        except SyntaxError as err:
            notes.append(f"notebook cell {number} left out: it does not parse (SyntaxError line {err.lineno})")
            continue
        kept = [node for node in tree.body if _keep(node)]
        skipped += len(tree.body) - len(kept)
        future = [n for n in kept if isinstance(n, ast.ImportFrom) and n.module == "__future__"]
        for node in future:   # Python wants them first in the file: they move to the top, once each
            features.update(a.name for a in node.names)
        kept = [n for n in kept if n not in future]
        if kept:
            parts.append(f"# cell {number}\n" + "\n".join(_segment(lines, n) for n in kept))
    if skipped:
        notes.append(f"notebook: {skipped} top-level statement(s) that are not definitions, imports or constants "
                     "were not run (experiments, prints, plots)")
    head = [f"from __future__ import {', '.join(sorted(features))}"] if features else []
    return "\n\n".join(head + parts) + "\n", notes
