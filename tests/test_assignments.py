"""Honest grading of the course assignments (``python -m infergen.course``).

The starters and public tests ship in the package (``infergen/course/assignments/``); the hidden checks,
reference solutions and known-wrong solutions stay in the repository (``assignments/``). For every
assignment: the starter scores 0 (NotImplementedError reported), the reference solution passes every check,
and each known-wrong solution fails the specific checks its bug breaks -- so each grade is shown to be able
to fail, and to fail for the right reason. Some wrong solutions are attempts to fool the grader.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infergen.course.__main__ import main, start
from infergen.course.grade import PACKAGED, grade, list_assignments

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "assignments"
NAMES = ["a1_top_n_sigma", "a2_dry", "a3_stochastic_beam", "a4_sentiment_value", "a5_prompt_lookup"]

#: Each known-wrong solution (assignments/wrong/<file>.py): its assignment and the checks it must fail.
WRONG_FAILS = {
    "a1_top_n_sigma": ("a1_top_n_sigma", ["conformance/no_mutation", "conformance/new_tensor",
                                          "test_input_not_modified_and_surviving_logits_unchanged"]),
    "a1_top_n_sigma_bfloat16": ("a1_top_n_sigma", ["check_half_precision"]),
    "a2_dry": ("a2_dry", ["test_sequence_breakers", "check_last_token_is_a_breaker",
                          "check_random_histories_match_definition"]),
    "a2_dry_exponent": ("a2_dry", ["check_registered_step_sees_prompt_and_generated",
                                   "check_random_histories_match_definition"]),
    "a2_dry_penalised_token": ("a2_dry", ["check_registered_step_sees_prompt_and_generated",
                                          "check_random_histories_match_definition"]),
    "a3_stochastic_beam": ("a3_stochastic_beam", ["conformance/eos_per_row", "conformance/return_dict"]),
    "a4_sentiment_value": ("a4_sentiment_value", ["test_whole_words_case_insensitive"]),
    "a5_prompt_lookup": ("a5_prompt_lookup", ["check_identical_to_greedy_for_all_settings",
                                              "conformance/eos_per_row"]),
    "a5_prompt_lookup_mutates_padding": ("a5_prompt_lookup", ["conformance/no_input_mutation"]),
    "a5_prompt_lookup_bypasses_counter": ("a5_prompt_lookup", ["test_fewer_forward_passes", "check_forwards_reported",
                                                               "check_speedup_on_the_bundled_model"]),
}


@pytest.fixture(scope="module")
def wrong_reports():
    """Each known-wrong solution graded once (several tests read the same report)."""
    return {}


def graded_wrong(reports, stem):
    if stem not in reports:
        reports[stem] = grade(WRONG_FAILS[stem][0], TEACHER / "wrong" / f"{stem}.py", assignments=TEACHER, timeout=300)
    return reports[stem]


def test_five_assignments_with_every_part():
    assert list_assignments() == NAMES
    for name in NAMES:
        for path in (PACKAGED / name / "starter.py", PACKAGED / name / "test_student.py",
                     TEACHER / name / "grading.py", TEACHER / "solutions" / f"{name}.py",
                     TEACHER / "wrong" / f"{name}.py", ROOT / "book" / "assignments" / f"{name}.md"):
            assert path.is_file(), f"missing {path.relative_to(ROOT)}"
        starter = (PACKAGED / name / "starter.py").read_text()
        assert "NotImplementedError" in starter and "solutions" not in starter
        # one source of truth: what ships is not also kept in the teacher's folder
        assert sorted(p.name for p in (TEACHER / name).iterdir() if p.suffix == ".py") == ["grading.py"]
    assert sorted(p.stem for p in (TEACHER / "wrong").glob("*.py")) == sorted(WRONG_FAILS)


def test_public_tests_do_not_need_pytest():
    for name in NAMES:
        text = (PACKAGED / name / "test_student.py").read_text()
        assert "import pytest" not in text and "pytest." not in text, name


@pytest.mark.parametrize("name", NAMES)
def test_starter_scores_zero(name):
    report = grade(name, PACKAGED / name / "starter.py", assignments=TEACHER, timeout=300)
    assert report.score == 0 and report.max_score >= 10
    statuses = {c.status for c in report.checks}
    assert statuses <= {"todo", "fail", "error", "skip"}, statuses
    assert sum(c.status == "todo" for c in report.checks) >= len(report.checks) // 2, report.table()


@pytest.mark.parametrize("name", NAMES)
def test_reference_solution_passes_everything(name):
    report = grade(name, TEACHER / "solutions" / f"{name}.py", assignments=TEACHER, timeout=300)
    assert report.failed() == [], report.table()
    assert report.score == report.max_score and all(n.startswith("isolation:") for n in report.notes)
    teacher = [c.kind for c in report.checks if c.kind in ("hidden", "conformance")]   # not shipped
    assert len(teacher) >= 5 and {"hidden", "conformance"} <= set(teacher), teacher


@pytest.mark.parametrize("stem", sorted(WRONG_FAILS))
def test_known_wrong_solution_fails_its_specific_checks(stem, wrong_reports):
    report = graded_wrong(wrong_reports, stem)
    checks = report.by_name()
    for check in WRONG_FAILS[stem][1]:
        assert checks[check].status == "fail", f"{check}: {checks[check].status}\n{report.table()}"
    assert 0 < report.score < report.max_score
    # the bug is targeted: other checks still pass, so the grade tells *what* is wrong
    assert sum(c.status == "pass" for c in report.checks) >= len(report.checks) / 2, report.table()


@pytest.mark.parametrize("stem,rule,not_this", [
    ("a2_dry_exponent", "base ** (M - allowed_length)", "context.all_ids"),
    ("a2_dry_penalised_token", "FOLLOWED an earlier occurrence", "context.all_ids"),
])
def test_a2_messages_name_the_failing_rule(stem, rule, not_this, wrong_reports):
    """The registered-step check tests the history rule and the penalty rule apart, and says which broke."""
    message = graded_wrong(wrong_reports, stem).by_name()["check_registered_step_sees_prompt_and_generated"].message
    assert rule in message and not_this not in message, message


def test_table_prints_whole_messages(wrong_reports):
    report = graded_wrong(wrong_reports, "a2_dry_exponent")
    long = [c.message for c in report.checks if len(c.message) > 150]
    assert long, "no long message to show"
    table = " ".join(report.table().split())
    for message in long:
        assert " ".join(message.split()) in table


def test_counting_model_counts_passes_run_around_it():
    """CountingModel counts what ran on the model, however it was reached (the bypass of a5's cheat)."""
    import infergen as ig
    from infergen.testing import CountingModel, left_pad, tiny_model

    ids, _ = left_pad([5], seed=2)
    model = tiny_model()
    with CountingModel(model) as counter:
        assert not hasattr(counter, "inner")
        ig.greedy_search(model, ids, 6)                      # not through the wrapper at all
        assert counter.calls == 6 and counter.tokens == ids.shape[1] + 5
    ig.greedy_search(model, ids, 6)                          # after the block: no longer counted
    assert counter.calls == 6


def test_broken_submission_is_a_result_not_a_crash(tmp_path, capsys):
    bad = tmp_path / "broken.py"
    bad.write_text("def apply_top_n_sigma(logits, n_sigma:\n    pass\n")
    report = grade("a1", bad, assignments=TEACHER)
    assert report.error and "SyntaxError" in report.error and "broken.py:1" in report.error
    assert report.score == 0 and all(c.status == "error" for c in report.checks)
    assert main(["grade", "a1", str(bad), "--assignments", str(TEACHER)]) == 0
    assert "score: 0/" in capsys.readouterr().out


def test_usage_errors_exit_2(capsys, tmp_path):
    starter = str(PACKAGED / "a1_top_n_sigma" / "starter.py")
    assert main(["grade", "a9", starter]) == 2
    assert "unknown assignment 'a9'" in capsys.readouterr().err
    assert main(["check", "a1", str(tmp_path / "missing.py")]) == 2
    assert "no such submission file" in capsys.readouterr().err
    assert main(["grade", "a1", starter, "--assignments", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([]) == 2
    assert main(["list"]) == 0
    assert capsys.readouterr().out.split() == NAMES


def test_start_writes_the_files_and_keeps_existing_work(tmp_path, capsys):
    folder = start("a2", tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["conftest.py", "starter.py", "test_student.py"]
    assert (folder / "starter.py").read_text() == (PACKAGED / "a2_dry" / "starter.py").read_text()
    (folder / "starter.py").write_text("# my work\n")
    assert main(["start", "a2", "--dir", str(tmp_path)]) == 2
    assert "already exist" in capsys.readouterr().err
    assert (folder / "starter.py").read_text() == "# my work\n"


def _run(args, cwd, **env):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=600,
                          env=dict(os.environ, **env))


def test_student_workflow_outside_the_repository_without_pytest(tmp_path):
    """As on Colab: start an assignment in an empty folder, check a file, grade it with the teacher's folder
    -- in a process where pytest cannot be imported."""
    no_pytest = "import sys, runpy; sys.modules['pytest'] = None; sys.argv[0] = 'infergen.course'; " \
                "runpy.run_module('infergen.course', run_name='__main__')"
    out = _run(["-c", no_pytest, "start", "a1"], tmp_path)
    assert out.returncode == 0, out.stderr
    mine = tmp_path / "a1_top_n_sigma" / "starter.py"
    mine.write_text((TEACHER / "solutions" / "a1_top_n_sigma.py").read_text())
    out = _run(["-c", no_pytest, "check", "a1", str(mine), "--json"], tmp_path)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["score"] == report["max_score"] > 0 and {c["kind"] for c in report["checks"]} == {"public"}
    out = _run(["-c", no_pytest, "grade", "a1", str(mine), "--assignments", str(TEACHER), "--json"], tmp_path)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["score"] == report["max_score"] and any(c["kind"] == "hidden" for c in report["checks"])


def test_students_run_the_public_tests_with_pytest(tmp_path):
    """The pytest route: the started folder's conftest.py gives the fixtures; INFERGEN_SOLUTION picks the file."""
    folder = start("a1", tmp_path)
    out = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "test_student.py"], folder,
               INFERGEN_SOLUTION=str(TEACHER / "solutions" / "a1_top_n_sigma.py"))
    assert out.returncode == 0 and "7 passed" in out.stdout, out.stdout + out.stderr
