"""Assignment 4 (sentiment value for MCTS): the tests you can see. The grader runs these and more.

    python -m infergen.course check a4 my_solution.py      # no pytest needed
    INFERGEN_SOLUTION=my_solution.py pytest test_student.py   # the same tests under pytest
"""
import math

import torch

from infergen.course.asserts import approx, raises
from infergen.decoding.mcts import ValueContext

POS, NEG = [10, 11, 12], [20, 21]


def make_ctx(prompt, new, logprobs, tokenizer=None):
    ids = torch.tensor(prompt + new)
    return ValueContext(token_ids=ids, prompt_length=len(prompt), num_committed=0, path_length=len(new),
                        rollout_length=0, logprobs=torch.tensor(logprobs, dtype=torch.float32),
                        committed_logprobs=torch.zeros(0), ends_with_eos=False, tokenizer=tokenizer)


class WordTokenizer:
    """A stand-in tokenizer: token id i decodes to WORDS[i]."""
    WORDS = ["<pad>", "<s>", "</s>", " the", " film", " was", " good", " goodbye", " bad", " Good", ",", " not"]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.WORDS[i] for i in ids if not (skip_special_tokens and i < 3))


def test_worked_example(solution):
    """2 positive, 1 negative: reward (1 + 1/4) / 2 = 0.625; fluency exp(-1) = 0.368."""
    value = solution.sentiment_value(POS, NEG, weight=0.5)
    ctx = make_ctx([5, 6], [10, 30, 20, 11], [-1.0, -1.0, -1.0, -1.0])
    assert value(ctx) == approx(0.5 * math.exp(-1.0) + 0.5 * 0.625, abs=1e-6)


def test_prompt_does_not_count(solution):
    value = solution.sentiment_value(POS, NEG, weight=1.0)
    assert value(make_ctx([10, 11, 12], [30, 31], [-0.5, -0.5])) == approx(0.5)


def test_whole_words_case_insensitive(solution):
    tok = WordTokenizer()
    value = solution.sentiment_value(["good"], ["bad"], tokenizer=tok, weight=1.0)
    # " the film was goodbye" has no positive word; " Good" counts as "good"
    assert value(make_ctx([3], [4, 5, 7], [-1, -1, -1])) == approx(0.5)
    assert value(make_ctx([3], [4, 5, 9], [-1, -1, -1])) == approx(0.75)
    assert value(make_ctx([3], [8, 10, 8], [-1, -1, -1])) == approx((1 - 2 / 3) / 2)


def test_tokenizer_from_the_context(solution):
    value = solution.sentiment_value(["good"], ["bad"], weight=1.0)
    assert value(make_ctx([3], [6], [-1], tokenizer=WordTokenizer())) == approx(0.75)


def test_empty_continuation(solution):
    value = solution.sentiment_value(POS, NEG, weight=0.3)
    assert value(make_ctx([1, 2, 3], [], [])) == approx(0.7 * 1.0 + 0.3 * 0.5)


def test_bad_parameters(solution):
    with raises(ValueError, match="weight"):
        solution.sentiment_value(POS, NEG, weight=1.5)
    with raises(ValueError, match="positive"):
        solution.sentiment_value([], NEG)
    with raises(TypeError):
        solution.sentiment_value([1.5], NEG)


def test_runs_inside_mcts(solution, tiny_model):
    from infergen.decoding.mcts import mcts_decode
    from infergen.testing import left_pad

    ids, _ = left_pad([4], seed=0)
    out = mcts_decode(tiny_model, ids, 4, num_simulations=6, top_k=5, seed=0,
                      value_fn=solution.sentiment_value(POS, NEG, weight=0.8))
    assert out.shape == (1, ids.shape[1] + 4)


# Points follow what the assignment teaches (the rule itself), not input validation or hygiene.
test_bad_parameters.points = 0.5
test_worked_example.points = 2
test_runs_inside_mcts.points = 0.5   # a constant value function runs inside MCTS too
