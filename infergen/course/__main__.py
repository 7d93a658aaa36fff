"""``python -m infergen.course``: start, check and grade the course assignments.

    python -m infergen.course list                      # the assignments
    python -m infergen.course start a1                  # a1_top_n_sigma/: starter.py, test_student.py, conftest.py
    python -m infergen.course check a1 starter.py       # the public tests, pytest not needed
    python -m infergen.course grade a1 FILE --assignments DIR   # public tests + the teacher's hidden checks
    python -m infergen.course grade-all a1 SUBMISSIONS/ --out results/ --workers 4   # a whole class

The exit status is 0 whatever the score (a failing submission is a result, not an error); it is 2 only for
usage errors: an unknown assignment, a missing file, a missing ``--assignments`` folder, or a ``start`` that
would overwrite a file. ``--json`` prints the report as JSON (always valid: the submission runs in another
process, its output is a field of the report). ``--student`` prints what a student may see (hints, not the
hidden checks' messages). Submissions are ``.py`` files or notebooks (``.ipynb``).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from .grade import PACKAGED, find_assignment, grade, hidden_checks_dir, list_assignments, report_json

#: What ``start`` writes: the packaged starter and public tests, and the pytest fixtures for them.
STARTED_FILES = ("starter.py", "test_student.py", "conftest.py")


def start(assignment: str, directory=".", force: bool = False) -> Path:
    """Write ``aN_name/{starter.py, test_student.py, conftest.py}`` under ``directory``; return that folder.
    Existing files are kept (FileExistsError) unless ``force``."""
    folder = find_assignment(assignment)
    target = Path(directory) / folder.name
    sources = {"starter.py": folder / "starter.py", "test_student.py": folder / "test_student.py",
               "conftest.py": PACKAGED / "conftest.py"}
    existing = [str(target / n) for n in STARTED_FILES if (target / n).exists()]
    if existing and not force:
        raise FileExistsError(f"{', '.join(existing)} already exist: your work is kept (use --force to "
                              "overwrite)")
    target.mkdir(parents=True, exist_ok=True)
    for name in STARTED_FILES:
        shutil.copyfile(sources[name], target / name)
    return target


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m infergen.course",
                                     description="Start, check and grade the course assignments.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the assignments")
    p = sub.add_parser("start", help="write an assignment's starter and public tests into a folder")
    p.add_argument("assignment", help="a1 .. a5, or the folder name (e.g. a1_top_n_sigma)")
    p.add_argument("--dir", default=".", help="where to create the assignment's folder (default: here)")
    p.add_argument("--force", action="store_true", help="overwrite files that exist")
    for name, text in (("check", "run the public tests on a file (no pytest needed)"),
                       ("grade", "public tests + the teacher's hidden checks, and a score"),
                       ("grade-all", "grade every .py/.ipynb of a folder: scores.csv, feedback, results.json")):
        p = sub.add_parser(name, help=text)
        p.add_argument("assignment", help="a1 .. a5, or the folder name (e.g. a1_top_n_sigma)")
        if name == "grade-all":
            p.add_argument("folder", help="the folder of submissions (.py and .ipynb files)")
            p.add_argument("--out", required=True, help="where to write scores.csv, feedback/, teacher/, ...")
            p.add_argument("--workers", type=int, default=2, help="submissions graded at once (default 2)")
        else:
            p.add_argument("submission", help="path to the .py or .ipynb file")
            p.add_argument("--json", action="store_true", help="print the report as JSON")
            p.add_argument("--gradescope", metavar="PATH", help="also write the Gradescope results.json there "
                                                                "(/autograder/results/results.json)")
        p.add_argument("--timeout", type=float, default=60.0, help="seconds per check (default 60)")
        p.add_argument("--import-timeout", type=float, default=60.0, help="seconds to import (default 60)")
        p.add_argument("--total-timeout", type=float, default=None, help="seconds per submission (default none)")
        p.add_argument("--memory-gb", type=float, default=8.0, help="the worker's memory cap (default 8 GiB)")
        p.add_argument("--max-restarts", type=int, default=3,
                       help="fresh workers after one is stopped, before the remaining checks fail (default 3)")
        if name != "check":
            p.add_argument("--assignments", help="the teacher's assignments folder (with aN_name/grading.py); "
                                                 "default $INFERGEN_ASSIGNMENTS or the repository's")
        if name == "grade":
            p.add_argument("--public-only", action="store_true", help="run only the public tests")
            p.add_argument("--student", action="store_true", help="print the student's view (hints only)")
    return parser


def main(argv=None) -> int:
    """Run the command line (``argv``: its arguments); the exit status: 0, or 2 for a usage error."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as stop:  # argparse's usage errors exit 2; --help exits 0
        return int(stop.code or 0)
    try:
        if args.command == "list":
            print("\n".join(list_assignments()))
            return 0
        if args.command == "start":
            folder = start(args.assignment, args.dir, args.force)
            print(f"wrote {folder}/: starter.py (your code goes here), test_student.py, conftest.py\n"
                  f"check it with:  python -m infergen.course check {args.assignment} {folder / 'starter.py'}")
            return 0
        find_assignment(args.assignment)
        limits = dict(timeout=args.timeout, import_timeout=args.import_timeout, total_timeout=args.total_timeout,
                      memory_gb=args.memory_gb, max_restarts=args.max_restarts)
        if args.command == "grade-all":
            hidden_checks_dir(args.assignments)
            from .batch import grade_all

            if args.workers < 1:
                raise ValueError(f"--workers must be >= 1, got {args.workers}")
            summary = grade_all(args.assignment, args.folder, args.out, workers=args.workers,
                                assignments=args.assignments, **limits)
            print(f"graded {summary['submissions']} submissions in {summary['wall_seconds']} s with "
                  f"{args.workers} workers -> {args.out}/scores.csv, feedback/, teacher/, gradescope/\n"
                  f"{summary['isolation']}")
            return 0
        if not Path(args.submission).is_file():
            raise FileNotFoundError(f"no such submission file: {args.submission}")
        hidden = args.command == "grade" and not args.public_only
        if hidden:
            hidden_checks_dir(args.assignments)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report = grade(args.assignment, args.submission, assignments=getattr(args, "assignments", None),
                   hidden=hidden, **limits)
    print(report_json(report) if args.json else report.table(student=getattr(args, "student", False)))
    if args.gradescope:
        import json

        from .batch import gradescope_json

        Path(args.gradescope).parent.mkdir(parents=True, exist_ok=True)
        Path(args.gradescope).write_text(json.dumps(gradescope_json(report), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
