"""Grade a course-assignment submission: public tests + the teacher's hidden checks, one row each.

The command line is ``python -m infergen.course`` (``grade``, ``grade-all``, ``check``, ``start``, ``list``).
Each assignment has two halves:

* ``infergen/course/assignments/aN_name/`` -- shipped in the package: ``starter.py`` (the functions to
  write) and ``test_student.py`` (the public tests: functions ``test_*``);
* ``assignments/aN_name/grading.py`` in the repository -- the teacher's hidden checks, not shipped:
  functions ``check_*`` and, optionally, a ``CONFORMANCE`` spec that expands into one row per rule of
  :mod:`infergen.testing` (shapes, no mutation, EOS per row...). The folder is found from
  ``assignments=`` (``--assignments``), ``$INFERGEN_ASSIGNMENTS``, or a repository checkout.

**Isolation.** The submission is never imported here. It runs in a worker process
(:mod:`infergen.course.sandbox`: own session, memory cap, truncated output, wall-clock limit enforced from
here by killing its process group); the tests and checks run *here*, in the grading process, on a
``solution`` that is a proxy (:mod:`infergen.course.channel`): each call sends its inputs to the worker and
gets the submission's outputs back. So the verdict -- the comparison with the teacher's reference -- is
computed where the submission cannot reach it, the hidden checks are never loaded into the worker, and
the report is written by this process whatever the submission prints, raises, patches or how it exits.
A model passed to the submission stays here too: its forward passes run, and are counted, in this process.

Every ``test_*`` and ``check_*`` function takes its inputs by parameter name, like pytest fixtures:
``solution`` (the submission), ``tiny_model`` (a tiny random Llama), ``unseen_model`` (the same
architecture with weights drawn from a secret seed, for checks the submission must not be able to
reproduce offline) or ``smollm`` ((model, tokenizer) of the bundled model). A function may carry
``points = n`` (default 1) and a ``hint`` (else its docstring's first line is the hint students see);
``CONFORMANCE`` may carry ``"points"`` per rule row. Statuses: ``pass``, ``fail``, ``error`` (the code
raised, timed out or the worker died: the message says which), ``todo`` (``NotImplementedError``),
``skip``.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import inspect
import json
import os
import secrets
import sys
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from infergen.testing import CheckResult, check_names, run_checks, run_one, tiny_model

from .sandbox import Sandbox, Stopped, isolation_summary

__all__ = ["FIXTURES", "GradeReport", "GradedCheck", "PACKAGED", "SubmissionError", "find_assignment", "grade",
           "hidden_checks_dir", "list_assignments", "load_submission", "submission_source"]

#: The assignments that ship with the package: ``aN_name/starter.py`` and ``aN_name/test_student.py``.
PACKAGED = Path(__file__).resolve().parent / "assignments"


class SubmissionError(Exception):
    """The submission could not be read or imported (syntax error, missing file, failing import)."""


@dataclass
class GradedCheck:
    """One row of the report. ``message``: the full detail (teacher); ``hint``: what the student sees."""
    name: str
    kind: str          # "public" (test_student.py), "conformance" or "hidden" (grading.py)
    status: str        # pass / fail / error / todo / skip
    points: float
    max_points: float
    message: str = ""
    seconds: float = 0.0
    hint: str = ""


@dataclass
class GradeReport:
    """The grade of one submission: one :class:`GradedCheck` per check, notes and the worker's output."""
    assignment: str
    submission: str
    checks: list[GradedCheck] = field(default_factory=list)
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    output: str = ""
    seconds: float = 0.0

    @property
    def score(self) -> float:
        """Points obtained."""
        return round(sum(c.points for c in self.checks), 6)

    @property
    def max_score(self) -> float:
        """Points available (skipped checks excluded)."""
        return round(sum(c.max_points for c in self.checks), 6)

    def by_name(self) -> dict[str, GradedCheck]:
        """The rows by check name."""
        return {c.name: c for c in self.checks}

    def failed(self) -> list[str]:
        """Names of the checks that did not pass (skipped ones excluded)."""
        return [c.name for c in self.checks if c.status not in ("pass", "skip")]

    def to_dict(self) -> dict:
        """Everything, for the teacher (``--json``)."""
        return {"assignment": self.assignment, "submission": self.submission, "score": self.score,
                "max_score": self.max_score, "error": self.error, "notes": list(self.notes),
                "checks": [asdict(c) for c in self.checks], "output": self.output, "seconds": self.seconds}

    def table(self, width: int = 110, student: bool = False) -> str:
        """The human-readable report: one line per check, its message (``student``: its hint) below it."""
        lines = [f"Grading {self.assignment}: {self.submission}"]
        if self.error:
            lines.append(f"  ! {self.error}")
        lines += [f"  note: {n}" for n in self.notes]
        name_width = max([len(c.name) for c in self.checks] + [5])
        lines.append(f"  {'#':>2}  {'kind':<11}  {'check':<{name_width}}  {'status':<6}  {'points':>7}")
        for i, c in enumerate(self.checks, 1):
            pts = "-" if c.status == "skip" else f"{c.points:g}/{c.max_points:g}"
            lines.append(f"  {i:>2}  {c.kind:<11}  {c.name:<{name_width}}  {c.status:<6}  {pts:>7}")
            message = " ".join((c.hint if student else c.message).split())
            if message and (c.status != "pass" or not student):
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
    """Import the submission at ``path`` *in this process* (for a student's own pytest run; the grader
    never does this). A notebook's code cells are extracted as :func:`submission_source` does."""
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"no such file: {path}")
    if path.suffix == ".ipynb":
        import types

        module = types.ModuleType(f"infergen_submission_{path.stem}")
        module.__file__ = str(path)
        exec(compile(submission_source(path)[0], str(path), "exec"), module.__dict__)
        return module
    try:
        return _import_path(path, "infergen_submission")
    except Exception as err:  # a syntax or import error is the submission's, report it as a result
        raise SubmissionError(f"could not import {path}: {type(err).__name__}: {err}") from err


def submission_source(path) -> tuple[str, list[str]]:
    """The Python source of a submission and notes about it: a ``.py`` file as it is; a notebook's code cells
    as :func:`infergen.course.notebook.notebook_source` extracts them."""
    path = Path(path)
    if path.suffix == ".ipynb":
        from .notebook import notebook_source

        return notebook_source(path)
    try:
        return path.read_text(encoding="utf-8", errors="replace"), []
    except OSError as err:
        raise SubmissionError(f"cannot read {path}: {err}") from err


@functools.lru_cache(maxsize=None)
def _load_support(path: str):
    """test_student.py / grading.py, imported once per grading process (never in a worker)."""
    return _import_path(Path(path), "infergen_grading")


# --------------------------------------------------------------------------------------------------------
# Fixtures (the inputs a check may ask for by parameter name)
# --------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _smollm():
    import infergen as ig

    return ig.load_model("smollm2-135m", device="cpu")


@functools.lru_cache(maxsize=1)
def _unseen_model():
    """A tiny random Llama whose seed is drawn when the grader starts: a submission cannot rebuild it."""
    return tiny_model(secrets.randbelow(2**31 - 2) + 1)


#: The inputs a public test or hidden check may ask for by parameter name (besides ``solution``); the
#: pytest fixtures of ``assignments/conftest.py`` are these same functions.
FIXTURES: dict[str, Callable[[], object]] = {"tiny_model": tiny_model, "smollm": _smollm,
                                             "unseen_model": _unseen_model}


def _call_with_fixtures(fn: Callable, fixtures: dict):
    kwargs = {}
    for name, param in inspect.signature(fn).parameters.items():
        if name in fixtures:
            kwargs[name] = fixtures[name]()
        elif param.default is inspect.Parameter.empty:
            raise TypeError(f"{fn.__name__} asks for an unknown fixture {name!r}; known: {sorted(fixtures)}")
    return fn(**kwargs)


def _skip_exception():
    try:
        import pytest

        return pytest.skip.Exception
    except ImportError:  # no pytest: nothing can raise its skip exception
        return ()


def _run_test(fn: Callable, fixtures: dict) -> CheckResult:
    skip = _skip_exception()

    def body():
        try:
            note = _call_with_fixtures(fn, fixtures)
        except skip as err:  # pytest.skip(...) inside a test, where pytest is installed
            return f"skip:{getattr(err, 'msg', err)}"
        return note if isinstance(note, str) else None  # a check may return what it measured

    return run_one(fn.__name__, body)


# --------------------------------------------------------------------------------------------------------
# Planning: every row of the report, before anything runs
# --------------------------------------------------------------------------------------------------------
@dataclass
class _Planned:
    kind: str
    name: str
    points: float
    hint: str
    run: Callable[[object, dict], CheckResult]     # (solution, fixtures) -> result
    needs: tuple = ()                               # fixtures to build before its clock starts


def _collect(module, prefix: str) -> list[Callable]:
    return [f for n, f in vars(module).items() if n.startswith(prefix) and callable(f) and inspect.isfunction(f)
            and f.__module__ == module.__name__]


def _hint(fn: Callable, hidden: bool) -> str:
    if getattr(fn, "hint", None):
        return str(fn.hint)
    doc = inspect.getdoc(fn) or ""
    first = doc.split("\n\n")[0].replace("\n", " ").strip()
    return first or ("a hidden check of the specification (book page)" if hidden else "")


def _specs(conformance) -> list[dict]:
    if conformance is None:
        return []
    return [conformance] if isinstance(conformance, dict) else list(conformance)


def _conformance_row(spec: dict, rule: str) -> Callable:
    """One rule of one CONFORMANCE spec, as a check: ``{"kind", "function", "params", ...}`` plus the options
    of :func:`~infergen.testing.run_checks` and an optional ``"factory": f(solution) -> callable``."""
    spec = dict(spec)
    for key in ("label", "points"):
        spec.pop(key, None)
    attr, kind, params = spec.pop("function"), spec.pop("kind"), spec.pop("params", {})
    factory = spec.pop("factory", None)

    def run(solution, fixtures) -> CheckResult:
        try:
            fn = getattr(solution, attr)
        except AttributeError:
            return CheckResult(rule, "error", f"the submission defines no {attr!r}")
        if factory is not None:
            built: list = []
            result = run_one(rule, lambda: built.append(factory(solution)))
            if result.status != "pass":
                return result
            fn = built[0]
        return run_checks(fn, kind, only=[rule], **spec, **params)[0]

    return run


def _plan(folder: Path, grading, public: bool) -> list[_Planned]:
    planned: list[_Planned] = []
    if public:
        tests = _load_support(str(folder / "test_student.py"))
        for f in _collect(tests, "test_"):
            planned.append(_Planned("public", f.__name__, float(getattr(f, "points", 1)), _hint(f, False),
                                    lambda sol, fx, f=f: _run_test(f, {"solution": lambda: sol, **fx}),
                                    tuple(inspect.signature(f).parameters)))
    if grading is not None:
        specs = _specs(getattr(grading, "CONFORMANCE", None))
        for spec in specs:
            prefix = "conformance" if len(specs) == 1 else f"conformance/{spec.get('label', spec['function'])}"
            for rule in check_names(spec["kind"]):
                planned.append(_Planned("conformance", f"{prefix}/{rule}", float(spec.get("points", 1)),
                                        f"the {spec['kind']} rule '{rule}' of infergen.testing",
                                        lambda sol, fx, run=_conformance_row(spec, rule): run(sol, fx)))
        for f in _collect(grading, "check_"):
            planned.append(_Planned("hidden", f.__name__, float(getattr(f, "points", 1)), _hint(f, True),
                                    lambda sol, fx, f=f: _run_test(f, {"solution": lambda: sol, **fx}),
                                    tuple(inspect.signature(f).parameters)))
    return planned


# --------------------------------------------------------------------------------------------------------
# Grading
# --------------------------------------------------------------------------------------------------------
def grade(assignment: str, submission, *, assignments=None, public: bool = True, hidden: bool = True,
          timeout: float = 60.0, import_timeout: float = 60.0, total_timeout: float | None = None,
          memory_gb: float = 8.0, output_limit: int = 64 * 1024, max_restarts: int = 3,
          separate_user: bool | None = None) -> GradeReport:
    """Grade ``submission`` (a ``.py`` or ``.ipynb`` path) for ``assignment`` (``"a1"`` or a folder name).

    ``public``: run the shipped public tests; ``hidden``: the teacher's ``grading.py`` from
    :func:`hidden_checks_dir` (``assignments``) -- where there is none, the report says so in its notes.
    ``timeout``: seconds per check (the worker is killed past it, the check fails, a fresh worker runs
    the next check, at most ``max_restarts`` times); ``import_timeout``: seconds to import the submission;
    ``total_timeout``: seconds for the whole submission (the checks left fail); ``memory_gb``: the worker's
    address-space cap; ``output_limit``: bytes of its output kept; ``separate_user``: run the worker as an
    unprivileged user id (default: when the grader is root and the interpreter allows it).
    """
    start = time.monotonic()
    folder = find_assignment(assignment)
    report = GradeReport(assignment=folder.name, submission=str(submission))
    grading, teacher = None, None
    if hidden:
        teacher = hidden_checks_dir(assignments)
        grading_path = None if teacher is None else teacher / folder.name / "grading.py"
        if grading_path is not None and grading_path.is_file():
            grading = _load_support(str(grading_path))
        else:
            report.notes.append("hidden checks not run: no grading.py for this assignment (pass --assignments "
                                "DIR, the teacher's assignments folder, or set INFERGEN_ASSIGNMENTS)")
    planned = _plan(folder, grading, public)
    try:
        source, notes = submission_source(submission)
        report.notes += notes
    except SubmissionError as err:
        source, report.error = None, str(err)
    sandbox = None
    solution = None
    restarts = 0
    fixtures = {k: v for k, v in FIXTURES.items()}
    try:
        for item in planned:
            began = time.monotonic()
            if report.error is None and total_timeout is not None and began - start > total_timeout:
                report.error = f"the submission used its {total_timeout:g} s; the remaining checks were not run"
            if report.error is None and solution is None:
                if sandbox is not None:
                    sandbox.close()
                    report.output += sandbox.output_text()
                    if restarts >= max_restarts:
                        report.error = (f"the submission's process was stopped {restarts + 1} times; the "
                                        "remaining checks were not run")
                    restarts += 1
                if report.error is None:
                    sandbox = Sandbox(source, Path(submission).name if Path(submission).suffix == ".py"
                                      else f"{Path(submission).stem}.py", memory_gb=memory_gb,
                                      output_limit=output_limit, separate_user=separate_user)
                    try:
                        solution = sandbox.start(timeout=import_timeout)
                    except Stopped as stop:
                        report.error = stop.reason
            if report.error is not None:
                result = CheckResult(item.name, "error", report.error)
            else:
                for need in item.needs:   # models load before the check's clock starts
                    if need in fixtures:
                        fixtures[need]()
                sandbox.limit(timeout)
                try:
                    result = item.run(solution, fixtures)
                except Stopped as stop:
                    result = CheckResult(item.name, "error", stop.reason)
                if sandbox.stopped:   # timed out, crashed or broke the channel during this check
                    if result.status == "pass" or stop_reason_missing(result, sandbox.stopped):
                        result = CheckResult(item.name, "error", sandbox.stopped)
                    solution = None
                sandbox.limit(None)
            result.seconds = time.monotonic() - began
            got = item.points if result.status == "pass" else 0.0
            hint = item.hint if item.kind == "hidden" else (result.message or item.hint)
            if result.status == "error" and sandbox is not None and sandbox.stopped and item.kind == "hidden":
                hint = f"{item.hint} -- {sandbox.stopped}"
            report.checks.append(GradedCheck(item.name, item.kind, result.status, got,
                                             0.0 if result.status == "skip" else item.points, result.message,
                                             round(result.seconds, 3), hint))
    finally:
        if sandbox is not None:
            sandbox.close()
            report.output += sandbox.output_text()
        _forget_models()
    report.notes.append(isolation_summary(teacher / folder.name if grading is not None else None,
                                          sandbox.separate_user if sandbox is not None else bool(separate_user)))
    if len(report.output) > 2 * output_limit:
        report.output = report.output[:2 * output_limit] + "\n[... output dropped]"
    report.seconds = round(time.monotonic() - start, 2)
    return report


def stop_reason_missing(result: CheckResult, reason: str) -> bool:
    """A check that caught the worker's end as an ordinary error should still say why it ended."""
    return reason not in result.message


def _forget_models():
    """Drop the cached tiny models: the next submission gets freshly built ones (nothing one submission did
    through the model protocol can reach the next)."""
    tiny_model.cache_clear()
    from infergen.testing import tiny_gpt2

    tiny_gpt2.cache_clear()


def report_json(report: GradeReport) -> str:
    """The teacher's JSON report (always valid JSON: the submission's output is a string field in it)."""
    return json.dumps(report.to_dict(), indent=2)
