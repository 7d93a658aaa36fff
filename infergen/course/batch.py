"""Grade a whole class: every ``.py`` and ``.ipynb`` in a folder, in parallel, with one file per student.

``python -m infergen.course grade-all a1 SUBMISSIONS/ --out results/ --workers 4`` writes::

    results/scores.csv                   one row per student: score, max, percent, then the points of each check
    results/feedback/<student>.md        for the student: each check's name, pass/fail and a hint
    results/teacher/<student>.md         for the teacher: full messages, the submission's output, notes
    results/gradescope/<student>/results.json   the Gradescope autograder format, one per submission
    results/summary.json                 the run: files, wall time, workers, the isolation line

A student is named by the file's stem (``alice.py``, ``alice.ipynb`` -> ``alice``; two files with one stem
are both graded, as ``alice`` and ``alice.ipynb``). Each submission is graded by its own grading process
from a pool (``workers``), which runs the submission in its own sandboxed worker
(:mod:`infergen.course.sandbox`); one student's endless loop costs that student's time limit, not the class's.
"""
from __future__ import annotations

import concurrent.futures as cf
import csv
import json
import multiprocessing
import os
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from .grade import GradeReport, GradedCheck, find_assignment, grade

__all__ = ["feedback_markdown", "gradescope_json", "grade_all", "teacher_markdown"]


def _students(folder: Path) -> list[tuple[str, Path]]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".py", ".ipynb")
                   and not p.name.startswith("."))
    stems = [p.stem for p in files]
    return [(p.stem if stems.count(p.stem) == 1 or p.suffix == ".py" else p.name, p) for p in files]


def _grade_one(args) -> dict:
    assignment, path, options = args
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch

        torch.set_num_threads(1)
        return grade(assignment, path, **options).to_dict()
    except Exception as err:  # the grader itself failed on this file: a row that says so, not a crash
        return _failed(args, f"the grader failed: {type(err).__name__}: {err}")


def _pooled(jobs: list, workers: int) -> list[dict]:
    """``_grade_one`` of each job in a pool of fresh grading processes. A grading process that dies (killed
    by the machine's out-of-memory killer, say) breaks the pool: the jobs it took down are graded again,
    one pool each, and a job that breaks its own pool too gets a row saying so -- never a crashed batch."""
    ctx = multiprocessing.get_context("spawn")   # fresh grading processes: no state shared between them
    results: list = [None] * len(jobs)
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = {pool.submit(_grade_one, job): i for i, job in enumerate(jobs)}
        for future in cf.as_completed(futures):
            try:
                results[futures[future]] = future.result()
            except BrokenProcessPool:
                pass
    for i, job in enumerate(jobs):
        if results[i] is None:
            with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as alone:
                try:
                    results[i] = alone.submit(_grade_one, job).result()
                except BrokenProcessPool as err:
                    results[i] = _failed(job, f"the grading process died ({err})")
    return results


def _failed(job, why: str) -> dict:
    return {"assignment": job[0], "submission": job[1], "score": 0.0, "max_score": 0.0, "error": why,
            "notes": [], "checks": [], "output": "", "seconds": 0.0}


def _report(d: dict) -> GradeReport:
    report = GradeReport(d["assignment"], d["submission"], [GradedCheck(**c) for c in d["checks"]], d["error"],
                         list(d["notes"]), d.get("output", ""), d.get("seconds", 0.0))
    return report


def feedback_markdown(student: str, report: GradeReport) -> str:
    """What the student sees: check names, pass/fail and hints -- no hidden assertion text or expected values."""
    pct = 100 * report.score / report.max_score if report.max_score else 0.0
    lines = [f"# {report.assignment}: feedback for {student}", "",
             f"**Score: {report.score:g} / {report.max_score:g} ({pct:.0f}%)**", ""]
    if report.error:
        lines += [f"> {report.error}", ""]
    lines += [f"- {n}" for n in report.notes if not n.startswith("isolation:")]
    lines += ["", "| check | kind | result | points | hint |", "|---|---|---|---|---|"]
    for c in report.checks:
        result = {"pass": "passed", "skip": "skipped", "todo": "not implemented"}.get(c.status, "FAILED")
        hint = "" if c.status == "pass" else " ".join(c.hint.split()).replace("|", "\\|")[:400]
        lines.append(f"| {c.name} | {c.kind} | {result} | {c.points:g}/{c.max_points:g} | {hint} |")
    return "\n".join(lines) + "\n"


def teacher_markdown(student: str, report: GradeReport) -> str:
    """Everything, for the teacher: full messages, the hidden checks' assertion text, the output, notes."""
    lines = [f"# {report.assignment}: {student} (teacher's copy)", "", f"- file: `{report.submission}`",
             f"- score: {report.score:g} / {report.max_score:g}", f"- grading time: {report.seconds:g} s"]
    if report.error:
        lines.append(f"- error: {report.error}")
    lines += [f"- {n}" for n in report.notes]
    lines += ["", "```text", report.table(), "```", "", "## What the submission printed (truncated)", "",
              "```text", report.output[:20000] or "(nothing)", "```"]
    return "\n".join(lines) + "\n"


def gradescope_json(report: GradeReport) -> dict:
    """The Gradescope autograder ``results.json``: ``score``, ``tests`` (name, score, max_score, status,
    output with the student's hint only, visibility ``visible``), ``output``."""
    tests = [{"name": c.name, "score": c.points, "max_score": c.max_points,
              "status": "passed" if c.status == "pass" else "failed",
              "output": "" if c.status == "pass" else c.hint, "visibility": "visible",
              "tags": [c.kind]} for c in report.checks if c.status != "skip"]
    return {"score": report.score, "max_score": report.max_score, "tests": tests,
            "output": report.error or "", "visibility": "visible", "execution_time": report.seconds}


def grade_all(assignment: str, folder, out, *, workers: int = 2, **options) -> dict:
    """Grade every submission in ``folder`` for ``assignment``; write the files listed in the module
    docstring under ``out``; return the summary (also written to ``out/summary.json``). ``options`` go
    to :func:`infergen.course.grade.grade` (``timeout``, ``memory_gb``, ``assignments``...)."""
    folder, out = Path(folder), Path(out)
    name = find_assignment(assignment).name
    if not folder.is_dir():
        raise FileNotFoundError(f"no such submissions folder: {folder}")
    students = _students(folder)
    for sub in ("feedback", "teacher", "gradescope"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    jobs = [(name, str(path), options) for _, path in students]
    results = [_grade_one(j) for j in jobs] if workers <= 1 else _pooled(jobs, workers)
    wall = time.monotonic() - start
    reports = [(student, _report(d)) for (student, _), d in zip(students, results)]
    names: list[str] = []
    for _, r in reports:
        names += [c.name for c in r.checks if c.name not in names]
    with open(out / "scores.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["student", "file", "score", "max_score", "percent", "error", *names])
        for student, r in reports:
            pts = r.by_name()
            w.writerow([student, Path(r.submission).name, f"{r.score:g}", f"{r.max_score:g}",
                        f"{100 * r.score / r.max_score:.1f}" if r.max_score else "0.0", r.error or "",
                        *[f"{pts[n].points:g}" if n in pts else "" for n in names]])
    for student, r in reports:
        (out / "feedback" / f"{student}.md").write_text(feedback_markdown(student, r))
        (out / "teacher" / f"{student}.md").write_text(teacher_markdown(student, r))
        (out / "gradescope" / student).mkdir(exist_ok=True)
        (out / "gradescope" / student / "results.json").write_text(json.dumps(gradescope_json(r), indent=2))
    isolation = next((n for _, r in reports for n in r.notes if n.startswith("isolation:")), "")
    summary = {"assignment": name, "folder": str(folder), "submissions": len(reports), "workers": workers,
               "wall_seconds": round(wall, 1), "isolation": isolation,
               "scores": {s: [r.score, r.max_score] for s, r in reports}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
