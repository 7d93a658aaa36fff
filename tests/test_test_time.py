"""Test-time compute: best-of-N, self-consistency, MBR (infergen/decoding/test_time.py)."""
from __future__ import annotations

import pytest
import torch

from infergen.bench import stats, tasks
from infergen.decoding import test_time as tt

PROMPT = torch.tensor([[5, 6, 7, 8]])


# --- the choosing rules on hand-made candidates -------------------------------------------------------

def test_majority_vote_picks_the_mode():
    index, votes = tt.majority_vote([5, 3, 3, None, 5, 3])
    assert index == 1  # the first candidate whose answer (3) has the most votes
    assert votes == [2, 3, 3, 0, 2, 3]


def test_majority_vote_ties_go_to_the_first_and_none_never_wins():
    assert tt.majority_vote([7, 4, 4, 7])[0] == 0
    assert tt.majority_vote([None, None, 9])[0] == 2
    assert tt.majority_vote([None, None]) == (0, [0, 0])


def test_mbr_picks_the_medoid():
    # utility -|a - b|: the candidate with the smallest total distance to the others is the median, 4
    index, expected = tt.mbr_select([0, 10, 4, 3, 5], utility=lambda a, b: -abs(a - b))
    assert index == 2
    assert expected[2] == pytest.approx(-(4 + 6 + 1 + 1) / 4)
    # on texts: the sample that shares most words with the others
    texts = ["the answer is 7", "it is 9", "the answer is 7 .", "answer 7"]
    assert tt.mbr_select(texts)[0] == 0
    assert tt.mbr_select(["only"]) == (0, [0.0])


def test_unigram_f1():
    assert tt.unigram_f1("a b c", "a b c") == 1.0
    assert tt.unigram_f1("a b", "c d") == 0.0
    assert tt.unigram_f1("a b c d", "a b") == pytest.approx(2 * 2 / 6)
    assert tt.unigram_f1([1, 2, 2], [2, 2, 3]) == pytest.approx(2 * 2 / 6)
    assert tt.unigram_f1("", "") == 1.0 and tt.unigram_f1("", "a") == 0.0


# --- the strategies on a tiny model ---------------------------------------------------------------------

def test_best_of_n_picks_the_argmax_of_the_scorer(tiny_native):
    [choice] = tt.best_of_n(tiny_native, PROMPT, n=6, max_new_tokens=5, scorer=lambda ids: float(sum(ids)),
                            temperature=1.0, seed=0, eos_token_id=[])
    sums = [float(sum(c)) for c in choice.candidates]
    assert choice.scores == sums
    assert choice.index == sums.index(max(sums))
    assert choice.token_ids == choice.candidates[choice.index]
    assert len({tuple(c) for c in choice.candidates}) > 1  # real samples, not one sample six times


def test_best_of_n_default_scorer_is_the_mean_logprob(tiny_native):
    [choice] = tt.best_of_n(tiny_native, PROMPT, n=4, max_new_tokens=5, temperature=1.0, seed=3, eos_token_id=[])
    out = tt.sample_candidates(tiny_native, PROMPT, 4, 5, temperature=1.0, seed=3, eos_token_id=[])
    means = out.logprobs.mean(1)
    assert choice.scores == pytest.approx(means.tolist(), abs=1e-5)
    assert choice.index == int(means.argmax())
    assert choice.model_calls == 4 * 5


def test_the_n_samples_come_from_one_batched_call(tiny_native, monkeypatch):
    calls = []
    real = tt.generate_autoregressive

    def counting(model, input_ids, *args, **kwargs):
        calls.append(tuple(input_ids.shape))
        return real(model, input_ids, *args, **kwargs)

    monkeypatch.setattr(tt, "generate_autoregressive", counting)
    prompts = torch.tensor([[0, 5, 6], [7, 8, 9]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    for strategy in (tt.best_of_n, tt.self_consistency, tt.mbr):
        calls.clear()
        choices = strategy(tiny_native, prompts, n=5, max_new_tokens=4, attention_mask=mask, seed=1)
        assert calls == [(2 * 5, 3)]  # one call, every prompt repeated n times
        assert len(choices) == 2 and all(len(c.candidates) == 5 for c in choices)


def test_self_consistency_votes_on_extracted_answers(tiny_native):
    [choice] = tt.self_consistency(tiny_native, PROMPT, n=8, max_new_tokens=3, extract=lambda ids: ids[0] % 3,
                                   temperature=1.0, seed=0, eos_token_id=[])
    answers = [c[0] % 3 for c in choice.candidates]
    assert choice.answers == answers
    top = max(answers.count(a) for a in answers)
    assert answers.count(choice.answer) == top and choice.answer == answers[choice.index]
    assert choice.scores == [answers.count(a) for a in answers]


def test_same_seed_same_candidates_for_every_strategy(tiny_native):
    kw = dict(n=4, max_new_tokens=4, seed=7, temperature=1.0)
    a = tt.best_of_n(tiny_native, PROMPT, **kw)[0].candidates
    assert tt.mbr(tiny_native, PROMPT, **kw)[0].candidates == a
    assert tt.self_consistency(tiny_native, PROMPT, **kw)[0].candidates == a


# --- bad input ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, error", [(0, ValueError), (-2, ValueError), (1.5, TypeError), (True, TypeError)])
def test_n_is_checked(tiny_native, n, error):
    with pytest.raises(error, match="n must"):
        tt.best_of_n(tiny_native, PROMPT, n=n, max_new_tokens=2)


def test_bad_callables_and_empty_sets(tiny_native):
    with pytest.raises(TypeError, match="scorer"):
        tt.best_of_n(tiny_native, PROMPT, n=2, scorer="logprob")
    with pytest.raises(TypeError, match="extract"):
        tt.self_consistency(tiny_native, PROMPT, n=2, extract=3)
    with pytest.raises(TypeError, match="utility"):
        tt.mbr(tiny_native, PROMPT, n=2, utility=None)
    with pytest.raises(ValueError, match="answers"):
        tt.majority_vote([])
    with pytest.raises(ValueError, match="candidates"):
        tt.mbr_select([])
    with pytest.raises(ValueError, match="input_ids"):
        tt.sample_candidates(tiny_native, torch.tensor([[[1, 2, 3]]]), 2)  # [1, 1, 3]: not [B, T]


# --- the task (infergen.bench.tasks) ---------------------------------------------------------------------------------------------

def test_addition_problems_are_seeded_and_right():
    pairs = tasks.addition_problems(20, seed=4)
    assert pairs == tasks.addition_problems(20, seed=4) and pairs != tasks.addition_problems(20, seed=5)
    for prompt, answer in pairs:
        a, b = (int(x) for x in prompt.removeprefix("What is ").removesuffix("?").split(" + "))
        assert 2 <= a <= 9 and 2 <= b <= 9 and answer == a + b
    with pytest.raises(ValueError, match="high"):
        tasks.addition_problems(3, low=5, high=4)


def test_extract_number():
    assert tasks.extract_number("3 + 4 = 7") == 7
    assert tasks.extract_number("The answer is -12.") == -12
    assert tasks.extract_number("no digits") is None


def test_wilson_interval():
    low, high = stats.wilson_interval(8, 20)
    assert low == pytest.approx(0.2188, abs=1e-3) and high == pytest.approx(0.6134, abs=1e-3)  # textbook values
    assert stats.wilson_interval(0, 10)[0] == 0.0 and stats.wilson_interval(0, 10)[1] > 0
    assert stats.wilson_interval(10, 10)[1] == pytest.approx(1.0) and stats.wilson_interval(10, 10)[0] < 1
    with pytest.raises(ValueError, match="successes"):
        stats.wilson_interval(11, 10)


def test_strategies_reuse_given_samples(tiny_native, monkeypatch):
    out = tt.sample_candidates(tiny_native, PROMPT, 4, 4, seed=2)
    monkeypatch.setattr(tt, "generate_autoregressive", lambda *a, **k: pytest.fail("sampled again"))
    [a] = tt.mbr(tiny_native, PROMPT, n=4, samples=out)
    assert a.candidates == [row[:k] for row, k in zip(out.new_tokens.tolist(), out.lengths)]
    assert a.model_calls == sum(out.lengths)
    with pytest.raises(ValueError, match="samples"):
        tt.best_of_n(tiny_native, PROMPT, n=3, samples=out)
