"""The grader against submissions that try to get marks without the work (issue 18), and batch grading.

Each attack is a file in ``assignments/attacks/``; each must be caught: a failed check or a capped score,
a report written by the grading process whatever the submission did, and no hang. Short limits keep
this file fast (hang tests: 8 s per check, one restart).
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infergen.course.batch import grade_all
from infergen.course.channel import ProtocolError, loads
from infergen.course.grade import PACKAGED, grade
from infergen.course.notebook import notebook_source

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "assignments"
ATTACKS = TEACHER / "attacks"
FAST = dict(assignments=TEACHER, timeout=8, import_timeout=60, max_restarts=1)


def graded(name, assignment="a1", **kw):
    return grade(assignment, ATTACKS / f"{name}.py", **{**FAST, **kw})


def test_patching_the_grader_changes_nothing():
    """Old grader: 22/22 (the module replaced _run_test/_conformance_rows). Nothing of the grader is in the
    submission's process now: the starter it is scores 0."""
    report = graded("a1_patches_grader")
    assert report.score == 0 and report.max_score > 20, report.table()


def test_hidden_reference_is_not_in_the_submission_process():
    """Old grader: the hidden module was imported next to the submission, its reference callable."""
    report = graded("a1_calls_hidden_reference")
    assert report.score == 0, report.table()
    assert all(c.status in ("todo", "error", "fail") for c in report.checks)


def test_hidden_checks_are_not_loaded_into_the_worker(tmp_path):
    """Old grader: 125 KB of grading.py written out. Nothing is leaked from memory now; the file system is
    readable only when the worker runs as the grader's user, and the report says so."""
    report = graded("a1_leaks_hidden_checks")
    assert report.score == 0
    isolation = next(n for n in report.notes if n.startswith("isolation:"))
    if "not readable" not in isolation:
        assert "readable" in isolation.lower()   # said, for the teacher to see


def test_endless_loop_times_out_and_the_report_is_written():
    """Old grader: hung with --timeout 10. Now each check is killed from outside after its limit."""
    start = time.monotonic()
    report = graded("a1_endless_loop")
    assert time.monotonic() - start < 120
    assert report.score <= 0.25 * report.max_score
    assert any("timed out after 8 s" in c.message for c in report.checks), report.table()
    assert report.error and "stopped" in report.error


def test_a_loop_that_swallows_every_exception_is_killed():
    """Old grader: hung indefinitely (the timeout was an exception the loop caught)."""
    report = graded("a1_swallows_everything")
    assert report.score <= 0.25 * report.max_score
    assert any("timed out" in c.message for c in report.checks)


def test_exit_at_import_is_a_failed_grade_with_its_reason():
    """Old grader: exit 0 and no output at all."""
    report = graded("a1_exits_at_import")
    assert report.score == 0 and "SystemExit" in report.error
    assert all(c.status == "error" for c in report.checks)


def test_exit_of_the_process_is_named(tmp_path):
    bad = tmp_path / "quits.py"
    bad.write_text("import os\nos._exit(0)\n")
    report = grade("a1", bad, **FAST)
    assert report.score == 0 and "exited with status 0 before the checks ran" in report.error


def test_keyboard_interrupt_is_a_failed_check_not_a_crash():
    """Old grader: exit 130 and a traceback, no report."""
    report = graded("a1_keyboard_interrupt")
    assert report.score == 0
    assert any("KeyboardInterrupt" in c.message for c in report.checks), report.table()


def test_100_mb_of_output_keeps_the_report_valid_json():
    """Old grader: full marks but --json was no longer JSON. The output is truncated into a field."""
    out = subprocess.run([sys.executable, "-m", "infergen.course", "grade", "a1", str(ATTACKS / "a1_prints_100mb.py"),
                          "--assignments", str(TEACHER), "--json", "--timeout", "120"],
                         capture_output=True, text=True, timeout=900)
    report = json.loads(out.stdout)
    assert report["score"] == report["max_score"], out.stdout[-3000:]
    assert len(out.stdout) < 2_000_000 and "more bytes of output dropped" in report["output"]


def test_no_state_leaks_between_submissions():
    """Old grader: starter 0/22, the patching file, then the starter again 22/22 in one process."""
    starter = PACKAGED / "a1_top_n_sigma" / "starter.py"
    first = grade("a1", starter, **FAST).score
    graded("a1_patches_grader")
    assert first == 0 and grade("a1", starter, **FAST).score == 0


@pytest.mark.parametrize("assignment", ["a1", "a2", "a3", "a4", "a5"])
def test_identity_submission_is_capped_at_a_quarter(assignment):
    """Old grader: 16/22 (73%) for an a1 processor returning its input unchanged. Each assignment's
    identity submission (``attacks/aN_identity.py``: logits unchanged, the library's deterministic beam
    search, a constant value, plain greedy search -- each with tidy input validation) scores at most 25%;
    the do-nothing starter scores 0 (tests/test_assignments.py)."""
    report = graded(f"{assignment}_identity", assignment, timeout=120)
    assert report.score <= 0.25 * report.max_score, report.table()
    assert any(c.status == "pass" for c in report.checks), "nothing passed: the cap would prove nothing"


def test_a5_forward_passes_are_counted_in_the_grader():
    """Old grader: 20/20 for greedy through type(m).forward(m, ...). The model stays in the grader: the
    submission holds a proxy, so every forward pass it gets runs (and is counted) there."""
    report = graded("a5_type_forward", "a5", timeout=120)
    checks = report.by_name()
    assert checks["check_forwards_reported"].status == "fail"   # it ran, and the grader's count differs
    assert "but the model was called 30 times" in checks["check_forwards_reported"].message, report.table()
    assert checks["test_fewer_forward_passes"].status != "pass"
    assert report.score < 0.5 * report.max_score, report.table()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except FileNotFoundError:
        return False


def test_a_child_left_behind_by_the_worker_is_killed_with_its_group():
    """Own attack: the worker forks a child and exits. Before: the group was killed only while the worker
    itself ran, so the child lived on after grading. Now the whole group is killed whatever the worker did."""
    pidfile = Path("/tmp/infergen_attack_child.pid")
    pidfile.unlink(missing_ok=True)
    report = graded("a1_forks_and_exits")
    assert report.score == 0 and "exited with status 3 before the checks ran" in report.error, report.error
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = _alive(pid)
    if alive:
        os.kill(pid, 9)
    assert not alive, "the submission's child process outlived the grading"


def test_memory_cap_fails_the_check_not_the_grader():
    """Own attack: correct code that allocates 3 GiB per call. Under a 2 GiB cap every call fails in the
    worker (MemoryError): failed checks, a report, the grader unharmed."""
    report = graded("a1_allocates_memory", memory_gb=2, timeout=60)
    assert report.score <= 0.25 * report.max_score, report.table()
    assert any("MemoryError" in c.message for c in report.checks), report.table()


def test_the_grader_refuses_model_calls_over_its_limit():
    """Own attack: a5's model runs in the grader, so a submission asks it for a million-position cache and a
    forward pass of a million tokens. Refused before any work is done: the checks fail with the reason."""
    start = time.monotonic()
    report = graded("a5_floods_the_model", "a5", timeout=60)
    assert time.monotonic() - start < 600 and report.score <= 0.25 * report.max_score, report.table()
    assert any("over the grader's limit" in c.message for c in report.checks), report.table()
    assert not any("a forward pass of a million tokens" in c.message for c in report.checks)


def test_a_grading_process_that_dies_is_a_row_not_a_crashed_batch(tmp_path):
    """A grading process can die (the machine's out-of-memory killer); simulated with a teacher's folder
    whose grading.py exits. The pool breaks; the batch still ends with a row for each submission."""
    teacher = tmp_path / "teacher" / "a1_top_n_sigma"
    teacher.mkdir(parents=True)
    (teacher / "grading.py").write_text("import os\nos._exit(1)\n")
    subs = tmp_path / "subs"
    subs.mkdir()
    for name in ("ann", "bob"):
        shutil.copy(PACKAGED / "a1_top_n_sigma" / "starter.py", subs / f"{name}.py")
    summary = grade_all("a1", subs, tmp_path / "out", workers=2, assignments=tmp_path / "teacher", timeout=8)
    assert summary["submissions"] == 2
    assert "the grading process died" in (tmp_path / "out" / "scores.csv").read_text()


def test_channel_refuses_code_in_frames():
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    with pytest.raises(ProtocolError):
        loads(pickle.dumps(Evil()))
    with pytest.raises(ProtocolError):
        loads(b"\x80\x04garbage")


def test_students_see_hints_not_hidden_assertions():
    report = grade("a1", TEACHER / "wrong" / "a1_top_n_sigma_bfloat16.py", **{**FAST, "timeout": 120})
    row = report.by_name()["check_half_precision"]
    assert row.status == "fail" and "tokens kept or removed differently" in row.message
    assert "tokens kept or removed differently" not in row.hint and row.hint


def _notebook(path, cells):
    nb = {"cells": [{"cell_type": "code", "source": c, "metadata": {}, "outputs": [], "execution_count": None}
                    for c in cells], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb))
    return path


def test_notebook_keeps_definitions_and_drops_experiments(tmp_path):
    solution = (TEACHER / "solutions" / "a1_top_n_sigma.py").read_text()
    nb = _notebook(tmp_path / "alice.ipynb", ["!pip install infergen\nimport torch", solution,
                                              "out = apply_top_n_sigma(torch.zeros(3), 1.0)\nprint(out)\nwhile True: pass",
                                              "def broken(:\n"])
    source, notes = notebook_source(nb)
    assert "def apply_top_n_sigma" in source and "while True" not in source and "print(out)" not in source
    assert any("cell 4" in n for n in notes)
    report = grade("a1", nb, **{**FAST, "timeout": 120})
    assert report.score == report.max_score, report.table()


def test_grade_all_on_a_mixed_class(tmp_path):
    """Honest, wrong, cheating, hanging, crashing files and a notebook: a CSV, feedback, results.json each."""
    subs = tmp_path / "subs"
    subs.mkdir()
    shutil.copy(TEACHER / "solutions" / "a1_top_n_sigma.py", subs / "honest.py")
    shutil.copy(TEACHER / "wrong" / "a1_top_n_sigma.py", subs / "wrong.py")
    for name in ("a1_endless_loop", "a1_exits_at_import", "a1_patches_grader", "a1_identity"):
        shutil.copy(ATTACKS / f"{name}.py", subs / f"{name}.py")
    (subs / "crash.py").write_text("import does_not_exist\n")
    _notebook(subs / "nb.ipynb", [(TEACHER / "solutions" / "a1_top_n_sigma.py").read_text()])
    out = tmp_path / "results"
    summary = grade_all("a1", subs, out, workers=2, assignments=TEACHER, timeout=8, max_restarts=0)
    rows = (out / "scores.csv").read_text().splitlines()
    assert len(rows) == 1 + 8 and summary["submissions"] == 8
    scores = summary["scores"]
    assert scores["honest"][0] == scores["honest"][1] == scores["nb"][0]
    for cheat in ("a1_endless_loop", "a1_exits_at_import", "a1_patches_grader", "crash"):
        assert scores[cheat][0] == 0, (cheat, scores[cheat])
    assert scores["a1_identity"][0] <= 0.25 * scores["a1_identity"][1]
    feedback = (out / "feedback" / "wrong.md").read_text()
    assert "FAILED" in feedback
    gs = json.loads((out / "gradescope" / "honest" / "results.json").read_text())
    assert gs["score"] == scores["honest"][0] and all(t["status"] == "passed" for t in gs["tests"])


def test_gradescope_autograder_writes_results_json(tmp_path):
    """On Gradescope, run_autograder grades one submission and writes /autograder/results/results.json."""
    from infergen.course.__main__ import main

    bad = tmp_path / "submission.py"
    bad.write_text("def apply_top_n_sigma(logits, n_sigma:\n    pass\n")
    target = tmp_path / "results" / "results.json"
    assert main(["grade", "a1", str(bad), "--assignments", str(TEACHER), "--gradescope", str(target)]) == 0
    result = json.loads(target.read_text())
    assert result["score"] == 0 and result["tests"] and "SyntaxError" in result["output"]
    assert {t["status"] for t in result["tests"]} == {"failed"} and all("max_score" in t for t in result["tests"])
