"""Assignment 5 (prompt-lookup decoding): the tests you can see. The grader runs these and more.

    python -m infergen.course check a5 my_solution.py      # no pytest needed
    INFERGEN_SOLUTION=my_solution.py pytest test_student.py   # the same tests under pytest
"""
import torch

from infergen.course.asserts import raises

import infergen as ig
from infergen.testing import CountingModel, left_pad


def test_find_draft(solution):
    seq = [1, 2, 3, 4, 5, 9, 2, 3, 4, 7, 2, 3]
    # the last 3-gram (7, 2, 3) never occurred before; the last 2-gram (2, 3) first occurs at index 1
    assert solution.find_draft(seq, 3, 4) == [4, 5, 9, 2]
    assert solution.find_draft(seq, 3, 2) == [4, 5]
    assert solution.find_draft([5, 6, 7], 3, 4) == []
    assert solution.find_draft([8, 1, 8], 1, 3) == [1, 8]


def test_identical_to_greedy(solution, tiny_model):
    ids, mask = left_pad([3, 5, 8, 12], seed=1)
    want = ig.greedy_search(tiny_model, ids, 30, attention_mask=mask)
    got = solution.prompt_lookup_decode(tiny_model, ids, 30, attention_mask=mask)
    assert torch.equal(got, want), "prompt-lookup output differs from greedy search"


def test_fewer_forward_passes(solution, unseen_model):
    """Greedy on a tiny random model loops, so copied drafts are right: the same output, far fewer model
    calls. The model's weights come from a seed drawn when the tests start: the output can only come from
    calling it (passes run around the counter are counted too)."""
    ids, _ = left_pad([6], seed=1)
    with CountingModel(unseen_model) as greedy:     # counts every pass that runs on the model in the block
        want = ig.greedy_search(greedy, ids, 40)
    with CountingModel(unseen_model) as ours:
        got = solution.prompt_lookup_decode(ours, ids, 40)
    assert torch.equal(got, want), "prompt-lookup output differs from greedy search"
    assert ours.calls <= greedy.calls / 2, f"{ours.calls} forward passes vs {greedy.calls} for greedy"


def test_conformance(solution):
    from infergen.testing import check_decoder

    check_decoder(solution.prompt_lookup_decode)


def test_bad_parameters(solution, tiny_model):
    ids, _ = left_pad([3], seed=0)
    for name, bad in [("num_draft_tokens", 0), ("max_ngram_size", 0)]:
        with raises(ValueError, match=name):
            solution.prompt_lookup_decode(tiny_model, ids, 4, **{name: bad})


# Points follow what the assignment teaches (the rule itself), not input validation or hygiene.
# Plain greedy search passes the last three as well (right output, the protocol): they weigh little.
test_find_draft.points = 2
test_fewer_forward_passes.points = 2
test_bad_parameters.points = 0.25
test_conformance.points = 0.25
test_identical_to_greedy.points = 0.5
