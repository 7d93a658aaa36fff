"""Assignment 3 (stochastic beam search): the tests you can see. The grader runs these and a few more.

    python -m infergen.course check a3 my_solution.py      # no pytest needed
    INFERGEN_SOLUTION=my_solution.py pytest test_student.py   # the same tests under pytest
"""
import math

import torch

from infergen.course.asserts import approx, raises

from infergen.testing import left_pad


def test_truncated_gumbel_worked_example(solution):
    parent = torch.tensor([[-1.0]])
    perturbed = torch.tensor([[0.5, -0.3, -2.0]])
    got = solution.truncated_gumbel(parent, perturbed)
    z = 0.5
    want = -torch.log(torch.exp(torch.tensor(1.0)) - math.exp(-z) + torch.exp(-perturbed))
    assert torch.allclose(got, want, atol=1e-5), f"{got} vs {want}"
    assert got[0, 0] == approx(-1.0), "the best child takes exactly the parent's value"


def test_truncated_gumbel_is_stable(solution):
    parent = torch.tensor([[-50.0], [0.0]])
    perturbed = torch.tensor([[10.0, 9.9999, -300.0], [-0.5, -0.5, -1e4]])
    got = solution.truncated_gumbel(parent, perturbed)
    assert torch.isfinite(got).all(), f"not finite: {got}"
    assert (got <= parent + 1e-6).all(), "no child may exceed its parent"


def test_conformance(solution):
    """The decoder protocol: shapes, prompt kept, EOS per row with padding, seeds, return_dict, ..."""
    from infergen.testing import check_decoder

    check_decoder(solution.stochastic_beam_search, deterministic=False, num_beams=3)


def test_samples_are_distinct(solution, tiny_model):
    ids, mask = left_pad([3, 6], seed=1)
    out = solution.stochastic_beam_search(tiny_model, ids, 4, num_beams=4, num_return_sequences=4,
                                          temperature=0.1, attention_mask=mask, seed=0)
    assert out.shape == (8, ids.shape[1] + 4)
    for b in range(2):
        rows = {tuple(r) for r in out[4 * b:4 * b + 4, ids.shape[1]:].tolist()}
        assert len(rows) == 4, f"prompt {b}: the 4 samples are not distinct: {out[4 * b:4 * b + 4].tolist()}"


def test_every_token_once_when_beams_cover_the_vocabulary(solution, tiny_model):
    """One step with num_beams = V: sampling V items without replacement returns each exactly once."""
    ids, _ = left_pad([4], seed=2)
    V = tiny_model.config.vocab_size
    out = solution.stochastic_beam_search(tiny_model, ids, 1, num_beams=V, num_return_sequences=V, seed=0)
    assert sorted(out[:, -1].tolist()) == list(range(V))


def test_bad_parameters(solution, tiny_model):
    ids, _ = left_pad([3], seed=0)
    for kwargs, name in [(dict(num_beams=0), "num_beams"), (dict(num_beams=2, num_return_sequences=3),
                                                            "num_return_sequences"),
                         (dict(temperature=0.0), "temperature")]:
        with raises(ValueError, match=name):
            solution.stochastic_beam_search(tiny_model, ids, 2, **kwargs)


# Points follow what the assignment teaches (the rule itself), not input validation or hygiene.
test_truncated_gumbel_worked_example.points = 2
test_bad_parameters.points = 0.5
# Deterministic beam search passes these three as well (distinct beams, the protocol): they weigh little.
test_conformance.points = 0.25
test_samples_are_distinct.points = 0.5
test_every_token_once_when_beams_cover_the_vocabulary.points = 0.5
