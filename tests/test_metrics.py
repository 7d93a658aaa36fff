"""infergen.metrics: n-gram repetition/diversity on hand-checked examples, and batched log-likelihood
checked against per-row scoring, transformers' own forward, a decoder's logprobs and a uniform model.

Runs in a few seconds (tiny models only).
"""
from __future__ import annotations

import math

import pytest
import torch

from infergen import greedy_search, metrics
from infergen.bench import stats
from infergen.metrics import (distinct_n, diversity, mean_logprob, ngrams, perplexity, rep_n,
                              sequence_logprob)


# ---------------------------------------------------------------------------------------------------------
# n-gram metrics, checked by hand
# ---------------------------------------------------------------------------------------------------------
def test_ngrams_lists_every_window():
    assert ngrams("a b c".split(), 2) == [("a", "b"), ("b", "c")]
    assert ngrams([1, 2], 3) == []


def test_rep_n_hand_examples():
    # bigrams ab, ba, ab: 2 unique of 3
    assert rep_n("a b a b", 2) == pytest.approx(100 * (1 - 2 / 3))
    assert rep_n("a b c d", 2) == 0.0
    # unigrams a, a, a: 1 unique of 3
    assert rep_n("a a a", 1) == pytest.approx(100 * (1 - 1 / 3))


def test_rep_n_counts_the_last_ngram():
    # ab bc ca ab: the repeat is the *last* bigram (the SimCTG loop would stop before it and report 0)
    assert rep_n("a b c a b", 2) == pytest.approx(25.0)


def test_rep_n_pools_counts_over_texts():
    # text 1: 2 unique of 3, text 2: 1 of 1 -> pooled 1 - 3/4 = 25% (the mean of per-text rates is 16.7%)
    assert rep_n(["a b a b", "c d"], 2) == pytest.approx(25.0)
    # repeats *across* texts are not repetition
    assert rep_n(["a b", "a b"], 2) == 0.0


def test_rep_n_accepts_token_ids_and_a_tokenizer():
    assert rep_n([[1, 2, 1, 2]], 2) == pytest.approx(100 / 3)
    assert rep_n(torch.tensor([[1, 2, 1, 2], [3, 4, 5, 6]]), 2) == pytest.approx(100 * (1 - 5 / 6))
    assert rep_n("abab", 2, tokenize=list) == pytest.approx(100 / 3)


def test_rep_n_without_ngrams_is_nan():
    assert math.isnan(rep_n("one", 2))
    assert math.isnan(rep_n([], 2))


def test_distinct_n_pools_ngrams_over_texts():
    assert distinct_n(["a b", "a b"], 2) == pytest.approx(0.5)
    assert distinct_n(["a b c", "c d e"], 1) == pytest.approx(5 / 6)
    assert math.isnan(distinct_n("a", 2))


def test_diversity_hand_examples():
    assert diversity("a b c d e f") == pytest.approx(100.0)
    # "a" x 6: rep-2 = 1 - 1/5, rep-3 = 1 - 1/4, rep-4 = 1 - 1/3
    assert diversity("a a a a a a") == pytest.approx(100 * (1 / 5) * (1 / 4) * (1 / 3))


@pytest.mark.parametrize("fn", [rep_n, distinct_n])
def test_bad_n_is_rejected(fn):
    with pytest.raises(ValueError, match="n must be in"):
        fn("a b c", 0)
    with pytest.raises(TypeError, match="n must be an integer"):
        fn("a b c", 1.5)


def test_bad_texts_are_rejected():
    with pytest.raises(TypeError, match="texts"):
        rep_n(3, 2)
    with pytest.raises(TypeError, match="each text"):
        rep_n([1.5], 2)


# ---------------------------------------------------------------------------------------------------------
# log-likelihood
# ---------------------------------------------------------------------------------------------------------
def _padded_batch():
    """Two prompts of different lengths (left-padded) and right-padded continuations."""
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 96, (n,), generator=g) for n in (6, 3)]
    conts = [torch.randint(3, 96, (n,), generator=g) for n in (4, 2)]
    T, n = 6, 4
    ids = torch.zeros(2, T, dtype=torch.long)
    mask = torch.zeros(2, T, dtype=torch.long)
    cont = torch.zeros(2, n, dtype=torch.long)
    cmask = torch.zeros(2, n, dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompts, conts)):
        ids[i, T - len(p):], mask[i, T - len(p):] = p, 1
        cont[i, :len(c)], cmask[i, :len(c)] = c, 1
    return prompts, conts, ids, mask, cont, cmask


def _reference_logprob(hf_model, prompt, cont):
    """One row, no padding, transformers' own forward: sum of log p(cont_t | prefix)."""
    full = torch.cat([prompt, cont])[None]
    with torch.no_grad():
        logp = torch.log_softmax(hf_model(full).logits[0].float(), -1)
    T = len(prompt)
    return sum(float(logp[T - 1 + t, tok]) for t, tok in enumerate(cont.tolist()))


@pytest.mark.parametrize("which", ["tiny_native", "tiny_hf"])
def test_batched_logprob_matches_rowwise_transformers(which, request, tiny_hf):
    model = request.getfixturevalue(which)
    prompts, conts, ids, mask, cont, cmask = _padded_batch()
    got = sequence_logprob(model, ids, cont, attention_mask=mask, continuation_mask=cmask)
    want = torch.tensor([_reference_logprob(tiny_hf, p, c) for p, c in zip(prompts, conts)])
    assert got.shape == (2,)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    per_token = sequence_logprob(model, ids, cont, attention_mask=mask, continuation_mask=cmask,
                                 reduction="none")
    assert per_token.shape == (2, 4)
    assert bool((per_token[1, 2:] == 0).all())  # padding contributes nothing
    assert bool((per_token[cmask.bool()] < 0).all())


def test_logprob_matches_the_decoders_logprobs(tiny_native):
    _, _, ids, mask, _, _ = _padded_batch()
    out = greedy_search(tiny_native, ids, 8, attention_mask=mask, return_dict=True)
    cmask = torch.arange(8)[None] < torch.tensor(out.lengths)[:, None]
    new = out.new_tokens
    got = sequence_logprob(tiny_native, ids, new, attention_mask=mask, continuation_mask=cmask,
                           reduction="none")
    torch.testing.assert_close(got, out.logprobs, atol=1e-4, rtol=1e-4)


def test_mean_and_perplexity_follow_from_the_sum(tiny_native):
    _, _, ids, mask, cont, cmask = _padded_batch()
    kw = dict(attention_mask=mask, continuation_mask=cmask)
    total = sequence_logprob(tiny_native, ids, cont, **kw)
    mean = mean_logprob(tiny_native, ids, cont, **kw)
    torch.testing.assert_close(mean, total / torch.tensor([4.0, 2.0]))
    torch.testing.assert_close(perplexity(tiny_native, ids, cont, **kw), torch.exp(-mean))


def test_uniform_model_has_perplexity_vocab_size():
    """A model whose logits are all 0 spreads p = 1/V over the vocabulary: perplexity = V exactly."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.zero_()
    ids = torch.tensor([[5, 6, 7]])
    cont = torch.tensor([[8, 9, 10, 11]])
    torch.testing.assert_close(sequence_logprob(model, ids, cont), torch.tensor([-4 * math.log(50)]))
    torch.testing.assert_close(perplexity(model, ids, cont), torch.tensor([50.0]))


def test_logprob_rejects_bad_arguments(tiny_native):
    ids, cont = torch.tensor([[5, 6]]), torch.tensor([[7, 8]])
    with pytest.raises(ValueError, match="reduction"):
        sequence_logprob(tiny_native, ids, cont, reduction="avg")
    with pytest.raises(ValueError, match="batch size"):
        sequence_logprob(tiny_native, ids, torch.tensor([[7], [8]]))
    with pytest.raises(ValueError, match="continuation_mask must be a tensor of shape"):
        sequence_logprob(tiny_native, ids, cont, continuation_mask=torch.ones(1, 3))
    with pytest.raises(ValueError, match="attention_mask must have the shape"):  # checked by decoding.prepare
        sequence_logprob(tiny_native, ids, cont, attention_mask=torch.ones(2, 2))
    with pytest.raises(ValueError, match="continuation_ids must be token ids"):
        sequence_logprob(tiny_native, ids, torch.tensor([[7, 96]]))
    with pytest.raises(TypeError, match="continuation_ids"):
        sequence_logprob(tiny_native, ids, torch.tensor([[0.5]]))
    with pytest.raises(ValueError, match="no real token"):
        sequence_logprob(tiny_native, ids, cont, attention_mask=torch.zeros(1, 2))


# --- bootstrap_interval -------------------------------------------------------------------------------------

def test_bootstrap_interval_of_the_mean_brackets_it_and_is_reproducible():
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]
    iv = stats.bootstrap_interval(values)
    assert iv.estimate == pytest.approx(sum(values) / len(values)) and iv.n == len(values)
    assert min(values) <= iv.low < iv.estimate < iv.high <= max(values)
    assert stats.bootstrap_interval(values) == iv  # the same seed, the same interval
    assert stats.bootstrap_interval([2.5] * 5) == (2.5, 2.5, 2.5, 5)  # no spread, no width


def test_bootstrap_interval_narrows_with_more_items_and_covers_the_true_mean():
    gen = torch.Generator().manual_seed(1)
    small = torch.randn(10, generator=gen).tolist()
    large = torch.randn(400, generator=gen).tolist()
    width = lambda iv: iv.high - iv.low  # noqa: E731
    assert width(stats.bootstrap_interval(large)) < width(stats.bootstrap_interval(small)) / 3
    # a 95% interval should cover the true mean (0) in roughly 95% of experiments; the percentile
    # bootstrap is a little narrow at n = 30, so accept 85-99%
    covered = sum(iv.low <= 0.0 <= iv.high for iv in
                  (stats.bootstrap_interval(torch.randn(30, generator=gen).tolist(), resamples=400, seed=s)
                   for s in range(200)))
    assert 170 <= covered <= 198, covered
    # a lower confidence gives a narrower interval inside the wider one
    iv95, iv50 = stats.bootstrap_interval(small), stats.bootstrap_interval(small, confidence=0.5)
    assert iv95.low < iv50.low <= iv50.high < iv95.high


def test_bootstrap_interval_of_a_pooled_statistic_resamples_texts():
    texts = ["a b c d e f", "a b a b a b", "x y z w v u t", "p q p q p q p q"]
    iv = stats.bootstrap_interval(texts, metrics.diversity, resamples=300)
    assert iv.estimate == pytest.approx(metrics.diversity(texts)) and iv.n == 4
    assert 0.0 <= iv.low < iv.estimate < iv.high <= 100.0
    # resamples on which the statistic is NaN (here: only the one-word text drawn) are left out
    iv = stats.bootstrap_interval(["a", "a b c d e"], metrics.diversity, resamples=200)
    assert iv.high == 100.0 and iv.low == 100.0


@pytest.mark.parametrize("kwargs, match", [
    (dict(values=[]), "values must hold at least one item"),
    (dict(values=[1.0, float("nan")]), r"values\[1\]"),
    (dict(values=[1.0, 2.0], confidence=1.0), "confidence"),
    (dict(values=[1.0, 2.0], confidence=0), "confidence"),
    (dict(values=[1.0, 2.0], resamples=0), "resamples"),
    (dict(values=["a"], statistic=metrics.diversity), "NaN on every resample"),
])
def test_bootstrap_interval_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        stats.bootstrap_interval(**kwargs)
