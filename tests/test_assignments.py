"""Honest grading of the course assignments (``assignments/``, ``python -m infergen.grade``).

For every assignment: the starter scores 0 (NotImplementedError reported), the reference solution passes
every check, and the known-wrong solution fails the specific checks its bug breaks -- so each grade is
shown to be able to fail, and to fail for the right reason.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infergen.grade import grade, list_assignments, main

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENTS = ROOT / "assignments"

#: The checks each known-wrong solution must fail (its bug, in its file's docstring).
WRONG_FAILS = {
    "a1_top_n_sigma": ["conformance/no_mutation", "conformance/new_tensor",
                       "test_input_not_modified_and_surviving_logits_unchanged"],
    "a2_dry": ["test_sequence_breakers", "check_last_token_is_a_breaker", "check_random_histories_match_definition"],
    "a3_stochastic_beam": ["conformance/eos_per_row", "conformance/return_dict"],
    "a4_sentiment_value": ["test_whole_words_case_insensitive"],
    "a5_prompt_lookup": ["check_identical_to_greedy_for_all_settings", "conformance/eos_per_row"],
}
NAMES = sorted(WRONG_FAILS)


def test_five_assignments_with_every_part():
    assert list_assignments() == NAMES
    for name in NAMES:
        for path in (ASSIGNMENTS / name / "starter.py", ASSIGNMENTS / name / "test_student.py",
                     ASSIGNMENTS / name / "grading.py", ASSIGNMENTS / "solutions" / f"{name}.py",
                     ASSIGNMENTS / "wrong" / f"{name}.py", ROOT / "book" / "assignments" / f"{name}.md"):
            assert path.is_file(), f"missing {path.relative_to(ROOT)}"
        starter = (ASSIGNMENTS / name / "starter.py").read_text()
        assert "NotImplementedError" in starter and "solutions" not in starter


@pytest.mark.parametrize("name", NAMES)
def test_starter_scores_zero(name):
    report = grade(name, ASSIGNMENTS / name / "starter.py")
    assert report.score == 0 and report.max_score >= 10
    statuses = {c.status for c in report.checks}
    assert statuses <= {"todo", "fail", "error", "skip"}, statuses
    assert sum(c.status == "todo" for c in report.checks) >= len(report.checks) // 2, report.table()


@pytest.mark.parametrize("name", NAMES)
def test_reference_solution_passes_everything(name):
    report = grade(name, ASSIGNMENTS / "solutions" / f"{name}.py")
    assert report.failed() == [], report.table()
    assert report.score == report.max_score
    hidden = [c for c in report.checks if c.kind == "hidden"]
    assert len(hidden) >= 5 and any(c.name.startswith("conformance/") for c in hidden)


@pytest.mark.parametrize("name", NAMES)
def test_known_wrong_solution_fails_its_specific_checks(name):
    report = grade(name, ASSIGNMENTS / "wrong" / f"{name}.py")
    checks = report.by_name()
    for check in WRONG_FAILS[name]:
        assert checks[check].status == "fail", f"{check}: {checks[check].status}\n{report.table()}"
    assert 0 < report.score < report.max_score
    # the bug is targeted: most checks still pass, so the grade tells *what* is wrong
    assert report.score >= report.max_score / 2, report.table()


def test_broken_submission_is_a_result_not_a_crash(tmp_path, capsys):
    bad = tmp_path / "broken.py"
    bad.write_text("def apply_top_n_sigma(logits, n_sigma:\n    pass\n")
    report = grade("a1", bad)
    assert report.error and "SyntaxError" in report.error
    assert report.score == 0 and all(c.status == "error" for c in report.checks)
    assert main(["a1", str(bad)]) == 0
    assert "score: 0/" in capsys.readouterr().out


def test_usage_errors_exit_2(capsys, tmp_path):
    assert main(["a9", str(ASSIGNMENTS / "a1_top_n_sigma" / "starter.py")]) == 2
    assert "unknown assignment 'a9'" in capsys.readouterr().err
    assert main(["a1", str(tmp_path / "missing.py")]) == 2
    assert "no such submission file" in capsys.readouterr().err
    assert main([]) == 2
    assert main(["--list"]) == 0
    assert capsys.readouterr().out.split() == NAMES


def test_command_line_json():
    """The real entry point, in a fresh process: ``python -m infergen.grade a1 FILE --json``."""
    out = subprocess.run([sys.executable, "-m", "infergen.grade", "a1", str(ASSIGNMENTS / "a1_top_n_sigma" / "starter.py"),
                          "--json"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["assignment"] == "a1_top_n_sigma" and report["score"] == 0 and report["max_score"] >= 10
    assert {c["status"] for c in report["checks"]} <= {"todo", "fail"}


def test_students_run_the_public_tests_with_pytest():
    """The student workflow: pytest on test_student.py with INFERGEN_SOLUTION (assignments/conftest.py)."""
    env = dict(os.environ, INFERGEN_SOLUTION=str(ASSIGNMENTS / "solutions" / "a1_top_n_sigma.py"))
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(ASSIGNMENTS / "a1_top_n_sigma" / "test_student.py")],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 0 and "7 passed" in out.stdout, out.stdout + out.stderr
