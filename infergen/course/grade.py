"""Grade a course-assignment submission: public tests + the teacher's hidden checks, one row each.

The command line is ``python -m infergen.course`` (``grade``, ``check``, ``start``, ``list``). Each
assignment has two halves:

* ``infergen/course/assignments/aN_name/`` -- shipped in the package: ``starter.py`` (the functions to
  write) and ``test_student.py`` (the public tests: functions ``test_*``);
* ``assignments/aN_name/grading.py`` in the repository -- the teacher's hidden checks, not shipped:
  functions ``check_*`` and, optionally, a ``CONFORMANCE`` spec that expands into one row per rule of
  :mod:`infergen.course.checks` (shapes, no mutation, EOS per row...). The folder is found from
  ``assignments=`` (``--assignments``), ``$INFERGEN_ASSIGNMENTS``, or a repository checkout.

Every ``test_*`` and ``check_*`` function takes its inputs by parameter name, like pytest fixtures:
``solution`` (the submitted module), ``tiny_model`` (a tiny random Llama) or ``smollm`` ((model,
tokenizer) of the bundled model, loaded once). The grader imports the submission from its path, runs
every public test and hidden check in a fresh call -- pytest is not needed, the public tests use
:mod:`infergen.course.asserts` -- and reports one row per check with its status (``pass``, ``fail``,
``error``: the code raised, ``todo``: it raised ``NotImplementedError``, ``skip``) and the points. A
function may carry ``points = n`` (default 1); skipped checks count for nothing. A check that returns a
string (e.g. what it measured) has it printed as its message.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import inspect
import os
import signal
import sys
import textwrap
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .checks import CheckResult, check_names, run_checks, run_one, tiny_model

__all__ = ["FIXTURES", "GradeReport", "GradedCheck", "PACKAGED", "SubmissionError", "find_assignment", "grade",
           "hidden_checks_dir", "list_assignments", "load_submission"]

#: The assignments that ship with the package: ``aN_name/starter.py`` and ``aN_name/test_student.py``.
PACKAGED = Path(__file__).resolve().parent / "assignments"


class SubmissionError(Exception):
    """The submission could not be imported (syntax error, missing file, failing import)."""


@dataclass
class GradedCheck:
    """One row of the report."""
    name: str
    kind: str          # "public" (test_student.py) or "hidden" (grading.py)
    status: str        # pass / fail / error / todo / skip
    points: float
    max_points: float
    message: str = ""
    seconds: float = 0.0


@dataclass
class GradeReport:
    assignment: str
    submission: str
    checks: list[GradedCheck] = field(default_factory=list)
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def score(self) -> float:
        return sum(c.points for c in self.checks)

    @property
    def max_score(self) -> float:
        return sum(c.max_points for c in self.checks)

    def by_name(self) -> dict[str, GradedCheck]:
        return {c.name: c for c in self.checks}

    def failed(self) -> list[str]:
        """Names of the checks that did not pass (skipped ones excluded)."""
        return [c.name for c in self.checks if c.status not in ("pass", "skip")]

    def to_dict(self) -> dict:
        return {"assignment": self.assignment, "submission": self.submission, "score": self.score,
                "max_score": self.max_score, "error": self.error, "notes": list(self.notes),
                "checks": [asdict(c) for c in self.checks]}

    def table(self, width: int = 110) -> str:
        """The human-readable report: one line per check, its whole message wrapped below it, the score."""
        lines = [f"Grading {self.assignment}: {self.submission}"]
        if self.error:
            lines.append(f"  ! {self.error}")
        lines += [f"  note: {n}" for n in self.notes]
        name_width = max([len(c.name) for c in self.checks] + [5])
        lines.append(f"  {'#':>2}  {'kind':<6}  {'check':<{name_width}}  {'status':<6}  {'points':>6}")
        for i, c in enumerate(self.checks, 1):
            pts = "-" if c.status == "skip" else f"{c.points:g}/{c.max_points:g}"
            lines.append(f"  {i:>2}  {c.kind:<6}  {c.name:<{name_width}}  {c.status:<6}  {pts:>6}")
            message = " ".join(c.message.split())
            if message:
                lines += textwrap.wrap(message, width, initial_indent="        ", subsequent_indent="        ",
                                       break_long_words=False, break_on_hyphens=False)
        pct = 100 * self.score / self.max_score if self.max_score else 0.0
        lines.append(f"score: {self.score:g}/{self.max_score:g} ({pct:.0f}%)")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------
# Finding and loading things
# --------------------------------------------------------------------------------------------------------
def list_assignments() -> list[str]:
    """The assignments that ship with the package (folder names, e.g. ``"a1_top_n_sigma"``)."""
    return sorted(p.name for p in PACKAGED.iterdir() if p.is_dir() and (p / "test_student.py").exists())


def find_assignment(name: str) -> Path:
    """``"a1"`` or ``"a1_top_n_sigma"`` -> the packaged folder; ValueError listing the valid names."""
    names = list_assignments()
    matches = [n for n in names if n == name or n.split("_", 1)[0] == name]
    if len(matches) != 1:
        raise ValueError(f"unknown assignment {name!r}; valid: {', '.join(names)} (or their short names "
                         f"{', '.join(n.split('_', 1)[0] for n in names)})")
    return PACKAGED / matches[0]


def hidden_checks_dir(path=None) -> Path | None:
    """The teacher's folder holding ``aN_name/grading.py``: ``path``, else ``$INFERGEN_ASSIGNMENTS``, else the
    ``assignments/`` folder of a repository checkout this package runs from; None if there is none.
    A ``path`` or ``$INFERGEN_ASSIGNMENTS`` that is not a folder is a ``FileNotFoundError``."""
    for given in (path, os.environ.get("INFERGEN_ASSIGNMENTS")):
        if given:
            if not Path(given).is_dir():
                raise FileNotFoundError(f"assignments folder {str(given)!r} does not exist")
            return Path(given)
    checkout = Path(__file__).resolve().parents[2] / "assignments"
    return checkout if checkout.is_dir() else None


def _import_path(path: Path, prefix: str):
    path = Path(path).resolve()
    digest = hashlib.sha1(f"{path}:{time.perf_counter_ns()}".encode()).hexdigest()[:10]
    name = f"{prefix}_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load_submission(path) -> object:
    """Import the submission at ``path`` as a fresh module (re-imported on every call)."""
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"no such file: {path}")
    try:
        return _import_path(path, "infergen_submission")
    except Exception as err:  # a syntax or import error is the submission's, report it as a result
        raise SubmissionError(f"could not import {path}: {type(err).__name__}: {err}") from err


@functools.lru_cache(maxsize=None)
def _load_support(path: str):
    """test_student.py / grading.py, imported once per process (their caches survive between submissions)."""
    return _import_path(Path(path), "infergen_grading")


# --------------------------------------------------------------------------------------------------------
# Fixtures (the inputs a check may ask for by parameter name)
# --------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _smollm():
    from ..models.loading import load_model

    return load_model("smollm2-135m", device="cpu")


#: The inputs a public test or hidden check may ask for by parameter name (besides ``solution``); the
#: pytest fixtures of ``assignments/conftest.py`` are these same functions.
FIXTURES: dict[str, Callable[[], object]] = {"tiny_model": tiny_model, "smollm": _smollm}


def _fixtures(solution) -> dict[str, Callable[[], object]]:
    return {"solution": lambda: solution, **FIXTURES}


def _call_with_fixtures(fn: Callable, fixtures: dict):
    kwargs = {}
    for name, param in inspect.signature(fn).parameters.items():
        if name in fixtures:
            kwargs[name] = fixtures[name]()
        elif param.default is inspect.Parameter.empty:
            raise TypeError(f"{fn.__name__} asks for an unknown fixture {name!r}; known: {sorted(fixtures)}")
    return fn(**kwargs)


class _Timeout(Exception):
    pass


def _with_timeout(fn: Callable, seconds: float | None):
    """Run ``fn()``; on the main thread of a Unix process, stop it after ``seconds`` (an endless loop in a
    submission must not hang the grader)."""
    usable = (seconds and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread())
    if not usable:
        return fn()

    def on_alarm(signum, frame):
        raise _Timeout(f"timed out after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _skip_exception():
    try:
        import pytest

        return pytest.skip.Exception
    except ImportError:  # no pytest: nothing can raise its skip exception
        return ()


def _run_test(fn: Callable, fixtures: dict, timeout: float | None) -> CheckResult:
    skip = _skip_exception()

    def body():
        try:
            note = _with_timeout(lambda: _call_with_fixtures(fn, fixtures), timeout)
        except skip as err:  # pytest.skip(...) inside a test, where pytest is installed
            return f"skip:{getattr(err, 'msg', err)}"
        except _Timeout as err:
            raise AssertionError(str(err)) from None
        return note if isinstance(note, str) else None  # a check may return what it measured

    return run_one(fn.__name__, body)


# --------------------------------------------------------------------------------------------------------
# Grading
# --------------------------------------------------------------------------------------------------------
def _collect(module, prefix: str) -> list[Callable]:
    return [f for n, f in vars(module).items() if n.startswith(prefix) and callable(f) and inspect.isfunction(f)
            and f.__module__ == module.__name__]


def _specs(conformance) -> list[dict]:
    if conformance is None:
        return []
    return [conformance] if isinstance(conformance, dict) else list(conformance)


def _prefix(spec: dict, specs: list[dict]) -> str:
    return "conformance" if len(specs) == 1 else f"conformance/{spec.get('label', spec['function'])}"


def _conformance_rows(spec: dict, solution) -> list[CheckResult]:
    """Expand one CONFORMANCE spec into one result per rule of :mod:`infergen.course.checks`.

    ``{"kind": "processor" | "decoder" | "value", "function": name in the submission, "params": {...}}`` plus
    the options of :func:`~infergen.course.checks.run_checks` (``history``, ``deterministic``, ``tokenizer``) and
    an optional ``"factory": f(solution) -> callable`` for submissions that *build* the function to check
    (e.g. a value-function factory).
    """
    spec = dict(spec)
    spec.pop("label", None)
    attr, kind, params = spec.pop("function"), spec.pop("kind"), spec.pop("params", {})
    factory = spec.pop("factory", None)
    names = check_names(kind)
    if getattr(solution, attr, None) is None:
        return [CheckResult(n, "error", f"the submission defines no {attr!r}") for n in names]
    fn = getattr(solution, attr)
    if factory is not None:
        built: list = []
        result = run_one("factory", lambda: built.append(factory(solution)))
        if result.status != "pass":
            return [CheckResult(n, result.status, result.message) for n in names]
        fn = built[0]
    return run_checks(fn, kind, **spec, **params)


def grade(assignment: str, submission, *, assignments=None, public: bool = True, hidden: bool = True,
          timeout: float | None = 300.0) -> GradeReport:
    """Grade ``submission`` (a path) for ``assignment`` (``"a1"`` or a folder name); returns a report.

    ``public``: run the shipped public tests; ``hidden``: run the teacher's ``grading.py`` from
    :func:`hidden_checks_dir` (``assignments``) -- where there is none, the report says so in its notes.
    """
    folder = find_assignment(assignment)
    report = GradeReport(assignment=folder.name, submission=str(submission))
    tests = _load_support(str(folder / "test_student.py")) if public else None
    grading = None
    if hidden:
        teacher = hidden_checks_dir(assignments)
        grading_path = None if teacher is None else teacher / folder.name / "grading.py"
        if grading_path is not None and grading_path.is_file():
            grading = _load_support(str(grading_path))
        else:
            report.notes.append("hidden checks not run: no grading.py for this assignment (pass --assignments "
                                "DIR, the teacher's assignments folder, or set INFERGEN_ASSIGNMENTS)")
    planned: list[tuple[str, str, float, Callable | None]] = []
    if tests is not None:
        planned += [("public", f.__name__, float(getattr(f, "points", 1)), f) for f in _collect(tests, "test_")]
    conformance = getattr(grading, "CONFORMANCE", None) if grading is not None else None
    if grading is not None:
        checks = _collect(grading, "check_")
    try:
        solution = load_submission(submission)
    except SubmissionError as err:
        report.error = str(err)
        solution = None
    specs = _specs(conformance)
    if solution is None:  # every check fails with the import error; the score is 0
        names = [(k, n, p) for k, n, p, _ in planned]
        if grading is not None:
            names += [("hidden", f"{_prefix(s, specs)}/{n}", 1.0) for s in specs for n in check_names(s["kind"])]
            names += [("hidden", f.__name__, float(getattr(f, "points", 1))) for f in checks]
        report.checks = [GradedCheck(n, k, "error", 0.0, p, report.error) for k, n, p in names]
        return report
    fixtures = _fixtures(solution)
    results: list[tuple[str, float, CheckResult]] = []
    for kind, _, pts, fn in planned:
        results.append((kind, pts, _run_test(fn, fixtures, timeout)))
    if grading is not None:
        for spec in specs:
            for r in _conformance_rows(spec, solution):
                r.name = f"{_prefix(spec, specs)}/{r.name}"
                results.append(("hidden", 1.0, r))
        for fn in checks:
            results.append(("hidden", float(getattr(fn, "points", 1)), _run_test(fn, fixtures, timeout)))
    for kind, pts, r in results:
        got = pts if r.status == "pass" else 0.0
        report.checks.append(GradedCheck(r.name, kind, r.status, got, 0.0 if r.status == "skip" else pts,
                                         r.message, round(r.seconds, 3)))
    return report
