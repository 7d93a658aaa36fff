"""Assignment 2 (DRY): the tests you can see. The grader runs these and a few more.

    python -m infergen.course check a2 my_solution.py      # no pytest needed
    INFERGEN_SOLUTION=my_solution.py pytest test_student.py   # the same tests under pytest
"""
import torch

from infergen.course.asserts import approx, raises

V = 16


def penalties(solution, history, **params):
    """How much each token's logit went down (0 = untouched)."""
    logits = torch.zeros(V)
    return -solution.apply_dry(logits, torch.tensor(history), **params)


def test_worked_example(solution):
    """History 5 6 7 8 5 6 7: the suffix (5, 6, 7) occurred before, followed by 8 -> M[8] = 3."""
    pen = penalties(solution, [5, 6, 7, 8, 5, 6, 7], multiplier=1.0, base=2.0, allowed_length=2)
    expected = torch.zeros(V)
    expected[8] = 1.0 * 2.0 ** (3 - 2)
    assert torch.allclose(pen, expected), f"penalties {pen.tolist()}"


def test_short_repeats_are_allowed(solution):
    """M[8] = 3 < allowed_length = 4: nothing is penalised."""
    pen = penalties(solution, [5, 6, 7, 8, 5, 6, 7], multiplier=1.0, base=2.0, allowed_length=4)
    assert torch.equal(pen, torch.zeros(V)), f"penalties {pen.tolist()}"


def test_the_longest_match_wins(solution):
    """Token 9 follows the suffix (3, 4) once and (4) once: its match length is the longer one, 2."""
    pen = penalties(solution, [3, 4, 9, 1, 4, 9, 2, 3, 4], multiplier=1.0, base=3.0, allowed_length=1)
    assert pen[9] == approx(3.0 ** (2 - 1)), f"penalty of 9: {float(pen[9])}"
    assert torch.count_nonzero(pen) == 1


def test_sequence_breakers(solution):
    """A breaker (id 1) inside the match cuts it: (5, 1, 7) -> only (7) matches, M[8] = 1 < 2."""
    hist = [5, 1, 7, 8, 5, 1, 7]
    assert penalties(solution, hist, multiplier=1.0, base=2.0, allowed_length=2)[8] > 0
    pen = penalties(solution, hist, multiplier=1.0, base=2.0, allowed_length=2, sequence_breakers=[1])
    assert torch.equal(pen, torch.zeros(V)), f"with breaker 1, penalties {pen.tolist()}"


def test_padding_is_ignored(solution):
    logits = torch.randn(2, V, generator=torch.Generator().manual_seed(0))
    padded = torch.tensor([[-1, -1, 5, 6, 7, 8, 5, 6, 7], [3, 4, 3, 4, 3, 4, 3, 4, 3]])
    out = solution.apply_dry(logits, padded, multiplier=0.8, base=1.75, allowed_length=2)
    alone = solution.apply_dry(logits[0], torch.tensor([5, 6, 7, 8, 5, 6, 7]), multiplier=0.8, base=1.75,
                               allowed_length=2)
    assert torch.allclose(out[0], alone), "padding (-1) must be dropped before matching"


def test_multiplier_zero_is_identity(solution):
    logits = torch.randn(V)
    out = solution.apply_dry(logits, torch.tensor([1, 2, 3, 1, 2, 3]), multiplier=0.0)
    assert torch.equal(out, logits) and out is not logits


def test_bad_parameters(solution):
    logits, hist = torch.zeros(V), torch.tensor([1, 2, 1, 2])
    for name, bad in [("multiplier", -0.5), ("base", 0.5), ("allowed_length", 0)]:
        with raises(ValueError, match=name):
            solution.apply_dry(logits, hist, **{name: bad})
    with raises(TypeError, match="allowed_length"):
        solution.apply_dry(logits, hist, allowed_length=2.5)


def test_conformance(solution):
    from infergen.testing import check_processor

    check_processor(solution.apply_dry, history=True, multiplier=0.8, base=1.75, allowed_length=2)


# Points follow what the assignment teaches (the rule itself), not input validation or hygiene.
test_bad_parameters.points = 0.5
# A processor that penalises nothing passes these three as well: they weigh half a point.
test_short_repeats_are_allowed.points = 0.5
test_padding_is_ignored.points = 0.5
test_multiplier_zero_is_identity.points = 0.5
test_conformance.points = 0.5
