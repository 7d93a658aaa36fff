"""Assignment 1 (top-n-sigma): the tests you can see. The grader runs these and a few more.

    python -m infergen.course check a1 my_solution.py      # no pytest needed
    INFERGEN_SOLUTION=my_solution.py pytest test_student.py   # the same tests under pytest
"""
import math

import torch

from infergen.course.asserts import raises

NEG_INF = float("-inf")


def test_worked_example(solution):
    """The book's example: logits [2, 1, 0, -1, -2] have mean 0 and std sqrt(2) = 1.414."""
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, -2.0])
    one = solution.apply_top_n_sigma(logits, 1.0)           # threshold 2 - 1.414 = 0.586
    two = solution.apply_top_n_sigma(logits, 2.0)           # threshold 2 - 2.828 = -0.828
    assert torch.equal(one, torch.tensor([2.0, 1.0, NEG_INF, NEG_INF, NEG_INF])), f"n_sigma=1 gave {one}"
    assert torch.equal(two, torch.tensor([2.0, 1.0, 0.0, NEG_INF, NEG_INF])), f"n_sigma=2 gave {two}"


def test_n_sigma_zero_keeps_only_the_maximum(solution):
    logits = torch.tensor([[0.5, 3.0, 3.0, -1.0], [1.0, 2.0, 0.0, 4.0]])
    out = solution.apply_top_n_sigma(logits, 0.0)
    kept = torch.isfinite(out)
    assert kept.tolist() == [[False, True, True, False], [False, False, False, True]], f"kept {kept.tolist()}"


def test_temperature_does_not_change_the_kept_set(solution):
    """max - z and std both scale with 1/T, so the set of kept tokens is the same at every temperature."""
    logits = torch.randn(4, 200, generator=torch.Generator().manual_seed(0)) * 2
    kept = torch.isfinite(solution.apply_top_n_sigma(logits, 1.5))
    for t in (0.3, 0.7, 2.0):
        assert torch.equal(torch.isfinite(solution.apply_top_n_sigma(logits / t, 1.5)), kept), f"T={t}"


def test_input_not_modified_and_surviving_logits_unchanged(solution):
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(1))
    before = logits.clone()
    out = solution.apply_top_n_sigma(logits, 1.0)
    assert torch.equal(logits, before), "the caller's logits were modified in place"
    kept = torch.isfinite(out)
    assert torch.equal(out[kept], logits[kept]), "kept tokens must keep their logits"


def test_bad_n_sigma(solution):
    logits = torch.zeros(5)
    for bad in (-1.0, math.nan, math.inf):
        with raises(ValueError, match="n_sigma"):
            solution.apply_top_n_sigma(logits, bad)
    with raises(TypeError, match="n_sigma"):
        solution.apply_top_n_sigma(logits, "1")


def test_conformance(solution):
    """The rules every infergen processor keeps (infergen.testing.check_processor lists what failed)."""
    from infergen.testing import check_processor

    check_processor(solution.apply_top_n_sigma, n_sigma=1.0)


def test_joins_a_pipeline_by_name(solution):
    from infergen import LogitsPipeline, register_processor

    register_processor("a1_top_n_sigma", solution.top_n_sigma_step, overwrite=True)
    pipe = LogitsPipeline.from_params(temperature=0.7).add_registered("a1_top_n_sigma", n_sigma=1.0)
    logits = torch.randn(2, 64, generator=torch.Generator().manual_seed(2))
    expected = solution.apply_top_n_sigma(logits / 0.7, 1.0)
    assert torch.equal(pipe(logits), expected)


# Points follow what the assignment teaches (the rule itself), not input validation or hygiene.
test_worked_example.points = 3
test_n_sigma_zero_keeps_only_the_maximum.points = 2
test_temperature_does_not_change_the_kept_set.points = 0.5
test_input_not_modified_and_surviving_logits_unchanged.points = 0.5
test_bad_n_sigma.points = 0.5
test_conformance.points = 0.5
test_joins_a_pipeline_by_name.points = 0.5
