"""Tests for infergen.processors: parity with transformers, purity, per-row parameters, validation, sampling."""
import math

import pytest
import torch
from transformers.generation import logits_process as hf

from infergen.processors import (
    PIPELINE_ORDER, LogitsPipeline, apply_epsilon, apply_eta, apply_frequency_penalty, apply_logit_bias,
    apply_min_p, apply_no_repeat_ngram, apply_repetition_penalty, apply_temperature, apply_top_k, apply_top_p,
    apply_typical, check_finite_row, safe_probs, sample_from_logits,
)

NEG_INF = float("-inf")
B, V = 4, 1000
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def make_logits(seed=0, shape=(B, V), scale=3.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def make_ids(seed=1, shape=(B, 40), high=V):
    return torch.randint(0, high, shape, generator=torch.Generator().manual_seed(seed))


def assert_same_scores(ours, theirs):
    """Exact equality of the removed (-inf) masks, allclose on the surviving values."""
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    removed = ours == NEG_INF
    assert torch.equal(removed, theirs == NEG_INF), f"masks differ at {(removed != (theirs == NEG_INF)).sum()} places"
    torch.testing.assert_close(ours[~removed], theirs[~removed])


# ---------------------------------------------------------------------------------------------------------
# Parity with transformers' own processors
# ---------------------------------------------------------------------------------------------------------
WARPERS = {
    "top_k": (apply_top_k, hf.TopKLogitsWarper, [1, 5, 50, 999]),
    "top_p": (apply_top_p, hf.TopPLogitsWarper, [0.05, 0.3, 0.9, 0.99]),
    "min_p": (apply_min_p, hf.MinPLogitsWarper, [0.01, 0.05, 0.2, 1.0]),
    "typical": (apply_typical, hf.TypicalLogitsWarper, [0.2, 0.5, 0.9, 0.99]),
    "epsilon": (apply_epsilon, hf.EpsilonLogitsWarper, [1e-4, 3e-4, 1e-3, 0.05]),
    "eta": (apply_eta, hf.EtaLogitsWarper, [1e-4, 1e-3, 0.01, 0.2]),
}
WARPER_CASES = [(name, value) for name, (_, _, values) in WARPERS.items() for value in values]


@pytest.mark.parametrize("name,value", WARPER_CASES)
def test_truncation_matches_transformers(name, value):
    ours_fn, hf_cls, _ = WARPERS[name]
    logits = make_logits()
    ids = make_ids()
    ours, theirs = ours_fn(logits, value), hf_cls(value)(ids, logits.clone())
    assert_same_scores(ours, theirs)
    removed = ours == NEG_INF
    assert removed.any(), "this case must actually remove tokens, or the comparison proves nothing"
    assert (~removed).sum(-1).min() >= 1


@pytest.mark.parametrize("name", ["top_k", "top_p", "min_p", "typical", "epsilon", "eta"])
def test_truncation_matches_transformers_after_top_k_and_with_ties(name):
    """Rows that already contain -inf (a previous filter) and tied logits behave as in transformers."""
    ours_fn, hf_cls, values = WARPERS[name]
    logits = torch.round(make_logits(seed=3))          # many exact ties
    logits = apply_top_k(logits, 100)
    for value in values:
        assert_same_scores(ours_fn(logits, value), hf_cls(value)(None, logits.clone()))


def test_top_k_keeps_ties_like_transformers():
    logits = torch.round(make_logits(seed=4))
    ours = apply_top_k(logits, 5)
    assert_same_scores(ours, hf.TopKLogitsWarper(5)(None, logits.clone()))
    assert ((ours > NEG_INF).sum(-1) > 5).any(), "rounded logits should tie at the 5th place somewhere"


@pytest.mark.parametrize("temperature", [0.3, 0.7, 1.5])
def test_temperature_matches_transformers(temperature):
    logits = make_logits()
    ours = apply_temperature(logits, temperature)
    assert_same_scores(ours, hf.TemperatureLogitsWarper(temperature)(None, logits.clone()))
    assert not torch.allclose(ours, logits)


@pytest.mark.parametrize("penalty", [0.5, 1.2, 2.0])
def test_repetition_penalty_matches_transformers(penalty):
    logits, ids = make_logits(), make_ids(high=60)      # small id range: many repeats, counted once
    ours = apply_repetition_penalty(logits, ids, penalty)
    assert_same_scores(ours, hf.RepetitionPenaltyLogitsProcessor(penalty)(ids, logits.clone()))
    assert (ours != logits).sum() > B * 10


def test_repetition_penalty_ignores_padding():
    logits, ids = make_logits(), make_ids(high=60)
    padded = ids.clone()
    padded[0, :7] = -1                                   # left padding
    padded[2, -5:] = -1                                  # right padding
    ours = apply_repetition_penalty(logits, padded, 1.3)
    for b in range(B):
        row_ids = padded[b][padded[b] >= 0].unsqueeze(0)
        theirs = hf.RepetitionPenaltyLogitsProcessor(1.3)(row_ids, logits[b:b + 1].clone())
        assert_same_scores(ours[b:b + 1], theirs)


@pytest.mark.parametrize("ngram_size", [1, 2, 3, 4])
def test_no_repeat_ngram_matches_transformers(ngram_size):
    logits, ids = make_logits(), make_ids(shape=(B, 60), high=6)   # tiny alphabet: n-grams repeat
    ours = apply_no_repeat_ngram(logits, ids, ngram_size)
    assert_same_scores(ours, hf.NoRepeatNGramLogitsProcessor(ngram_size)(ids, logits.clone()))
    assert (ours == NEG_INF).any()


@pytest.mark.parametrize("ngram_size", [2, 3])
def test_no_repeat_ngram_ignores_padding(ngram_size):
    logits, ids = make_logits(), make_ids(shape=(B, 50), high=5)
    padded = ids.clone()
    padded[0, :10] = -1                                  # left padding (ragged prompts)
    padded[1, -4:] = -1                                  # right padding (ragged generations)
    padded[3, 20:23] = -1                                # padding in the middle (prompt pad + generated)
    ours = apply_no_repeat_ngram(logits, padded, ngram_size)
    for b in range(B):
        row_ids = padded[b][padded[b] >= 0].unsqueeze(0)
        theirs = hf.NoRepeatNGramLogitsProcessor(ngram_size)(row_ids, logits[b:b + 1].clone())
        assert_same_scores(ours[b:b + 1], theirs)


def test_logit_bias_matches_sequence_bias():
    logits = make_logits()
    bias = {0: 5.0, 17: -100.0, 999: 2.5, 400: -0.75}
    ours = apply_logit_bias(logits, bias)
    theirs = hf.SequenceBiasLogitsProcessor([[[t], b] for t, b in bias.items()])(make_ids(), logits.clone())
    assert_same_scores(ours, theirs)
    torch.testing.assert_close(ours[:, 17], logits[:, 17] - 100.0)


def test_pipeline_matches_transformers_processor_list():
    logits, ids = make_logits(seed=5), make_ids(high=50)
    pipe = LogitsPipeline.from_params(logit_bias={3: 2.0, 7: -1.0}, repetition_penalty=1.3, no_repeat_ngram_size=2,
                                      temperature=0.8, top_k=200, top_p=0.95, min_p=0.02, typical_p=0.98)
    theirs = hf.LogitsProcessorList([
        hf.SequenceBiasLogitsProcessor([[[3], 2.0], [[7], -1.0]]), hf.RepetitionPenaltyLogitsProcessor(1.3),
        hf.NoRepeatNGramLogitsProcessor(2), hf.TemperatureLogitsWarper(0.8), hf.TopKLogitsWarper(200),
        hf.TopPLogitsWarper(0.95), hf.MinPLogitsWarper(0.02), hf.TypicalLogitsWarper(0.98),
    ])(ids, logits.clone())
    assert_same_scores(pipe(logits, prompt_ids=ids[:, :25], generated_ids=ids[:, 25:]), theirs)


# ---------------------------------------------------------------------------------------------------------
# Frequency / presence penalty against a plain Python loop
# ---------------------------------------------------------------------------------------------------------
def reference_frequency(logits, ids, f, p):
    out = logits.clone()
    for b in range(out.shape[0]):
        counts = {}
        for t in ids[b].tolist():
            if t >= 0:
                counts[t] = counts.get(t, 0) + 1
        fb = f[b] if isinstance(f, list) else f
        pb = p[b] if isinstance(p, list) else p
        for t, c in counts.items():
            out[b, t] = out[b, t] - (fb * c + pb * (1 if c > 0 else 0))
    return out


@pytest.mark.parametrize("f,p", [(0.5, 0.0), (0.0, 1.5), (2.0, -2.0), (-0.7, 0.3), ([0.1, 0.0, 2.0, -1.0], [0.5, 1.0, 0.0, -2.0])])
def test_frequency_presence_match_python_loop(f, p):
    logits, ids = make_logits(), make_ids(high=30)
    ids[1, :8] = -1                                      # padding is not counted
    as_arg = lambda v: torch.tensor(v) if isinstance(v, list) else v
    ours = apply_frequency_penalty(logits, ids, as_arg(f), as_arg(p))
    torch.testing.assert_close(ours, reference_frequency(logits, ids, f, p))
    assert not torch.equal(ours, logits)


def test_frequency_penalty_counts_generated_only_in_pipeline():
    logits = torch.zeros(1, 10)
    prompt, generated = torch.tensor([[1, 1, 2]]), torch.tensor([[2, 3, 3, 3]])
    freq = LogitsPipeline.from_params(frequency_penalty=1.0, presence_penalty=0.5)(logits, prompt, generated)
    torch.testing.assert_close(freq[0, :5], torch.tensor([0.0, 0.0, -1.5, -3.5, 0.0]))
    rep = LogitsPipeline.from_params(repetition_penalty=2.0)(logits - 1, prompt, generated)
    torch.testing.assert_close(rep[0, :5], torch.tensor([-1.0, -2.0, -2.0, -2.0, -1.0]))  # prompt counts, once


# ---------------------------------------------------------------------------------------------------------
# Purity, shapes, per-row parameters, dtype/device
# ---------------------------------------------------------------------------------------------------------
IDS = make_ids(high=80)
# each call takes logits [B, V] with a history [B, T], or logits [V] with a history [T]
CALLS = {
    "temperature": lambda z, ids: apply_temperature(z, 0.7),
    "temperature_greedy": lambda z, ids: apply_temperature(z, 0),
    "top_k": lambda z, ids: apply_top_k(z, 10),
    "top_k_off": lambda z, ids: apply_top_k(z, 0),
    "top_p": lambda z, ids: apply_top_p(z, 0.8),
    "top_p_off": lambda z, ids: apply_top_p(z, 1.0),
    "min_p": lambda z, ids: apply_min_p(z, 0.1),
    "typical": lambda z, ids: apply_typical(z, 0.7),
    "epsilon": lambda z, ids: apply_epsilon(z, 1e-3),
    "eta": lambda z, ids: apply_eta(z, 1e-3),
    "repetition": lambda z, ids: apply_repetition_penalty(z, ids, 1.5),
    "frequency": lambda z, ids: apply_frequency_penalty(z, ids, 0.5, 0.5),
    "ngram": lambda z, ids: apply_no_repeat_ngram(z, ids % 5, 2),
    "logit_bias": lambda z, ids: apply_logit_bias(z, {1: 3.0, 5: -2.0}),
    "pipeline": lambda z, ids: LogitsPipeline.from_params(
        temperature=0.9, top_k=40, top_p=0.9, repetition_penalty=1.2, frequency_penalty=0.3,
        no_repeat_ngram_size=2)(z, prompt_ids=ids[..., :20], generated_ids=ids[..., 20:] % 5),
    "pipeline_empty": lambda z, ids: LogitsPipeline.from_params()(z),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_input_is_never_modified(name):
    logits, ids = make_logits(), IDS.clone()
    logits[:, ::7] = NEG_INF                             # earlier filters leave -inf behind
    ids[1, :5] = -1
    before, ids_before = logits.clone(), ids.clone()
    out = CALLS[name](logits, ids)
    assert torch.equal(logits, before) and torch.equal(ids, ids_before)
    assert out.untyped_storage().data_ptr() != logits.untyped_storage().data_ptr(), "must return a new tensor"


@pytest.mark.parametrize("name", list(CALLS))
def test_vector_and_batch_shapes_agree(name):
    logits = make_logits()
    batched = CALLS[name](logits, IDS)
    assert batched.shape == (B, V)
    for b in range(B):
        single = CALLS[name](logits[b], IDS[b])      # [V] logits with a [T] history
        assert single.shape == (V,)
        assert_same_scores(single, batched[b])


PER_ROW = {   # fn(logits, ids, value); the values include each parameter's "off" value
    "temperature": (lambda z, ids, v: apply_temperature(z, v), [0.0, 0.5, 1.0, 2.0]),
    "top_k": (lambda z, ids, v: apply_top_k(z, v), [0, 1, 10, 5000]),
    "top_p": (lambda z, ids, v: apply_top_p(z, v), [1.0, 0.3, 0.9, 0.05]),
    "min_p": (lambda z, ids, v: apply_min_p(z, v), [0.0, 0.05, 0.5, 1.0]),
    "typical": (lambda z, ids, v: apply_typical(z, v), [1.0, 0.2, 0.9, 0.5]),
    "epsilon": (lambda z, ids, v: apply_epsilon(z, v), [0.0, 1e-4, 1e-3, 0.05]),
    "eta": (lambda z, ids, v: apply_eta(z, v), [0.0, 1e-4, 1e-3, 0.2]),
    "repetition": (lambda z, ids, v: apply_repetition_penalty(z, ids, v), [1.0, 0.5, 1.2, 3.0]),
    "frequency": (lambda z, ids, v: apply_frequency_penalty(z, ids, v, -v), [0.0, -2.0, 0.5, 2.0]),
}


@pytest.mark.parametrize("name", list(PER_ROW))
def test_per_row_tensor_equals_row_by_row_scalars(name):
    fn, values = PER_ROW[name]
    logits = make_logits()
    logits[:, 0] = -200.0        # finite, but its probability underflows to 0: "off" rows must still keep it
    dtype = torch.long if name == "top_k" else torch.float32
    batched = fn(logits, IDS, torch.tensor(values, dtype=dtype))
    for b, value in enumerate(values):
        assert_same_scores(batched[b:b + 1], fn(logits[b:b + 1], IDS[b:b + 1], value))
    assert not torch.equal(batched, logits)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("name", list(CALLS))
def test_dtype_and_device_are_kept(name, dtype, device):
    logits = make_logits().to(device=device, dtype=dtype)
    out = CALLS[name](logits, IDS.to(device))
    assert out.dtype == dtype and out.device == logits.device
    assert torch.isfinite(out).any(-1).all()


# ---------------------------------------------------------------------------------------------------------
# Semantics of specific parameters
# ---------------------------------------------------------------------------------------------------------
def test_temperature_zero_is_greedy_on_first_argmax():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0], [5.0, -1.0, 2.0, 4.0]])
    out = apply_temperature(logits, 0)
    assert torch.equal(out, torch.tensor([[NEG_INF, 3.0, NEG_INF, NEG_INF], [5.0, NEG_INF, NEG_INF, NEG_INF]]))
    mixed = apply_temperature(logits, torch.tensor([0.0, 2.0]))
    assert torch.equal(mixed[0], out[0])
    torch.testing.assert_close(mixed[1], logits[1] / 2)


def test_top_k_off_and_larger_than_vocab():
    logits = make_logits()
    for k in (None, 0, V, V + 123):
        assert torch.equal(apply_top_k(logits, k), logits)
    assert torch.equal((apply_top_k(logits, 3) > NEG_INF).sum(-1), torch.full((B,), 3))


def test_top_p_keeps_the_token_crossing_p():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    assert torch.isfinite(apply_top_p(logits, 0.7)).tolist() == [True, True, False, False]   # 0.5 < 0.7 <= 0.8
    assert torch.isfinite(apply_top_p(logits, 0.4)).tolist() == [True, False, False, False]
    assert torch.isfinite(apply_top_p(logits, 1.0)).all()


def test_top_p_boundary_is_inclusive():
    """Cumulative mass exactly 1 - p is removed (<=), as transformers: 4 equal tokens, p = 0.5 keeps 2."""
    logits = torch.zeros(1, 4)
    ours = apply_top_p(logits, 0.5)
    assert int(torch.isfinite(ours).sum()) == 2
    assert_same_scores(ours, hf.TopPLogitsWarper(0.5)(None, logits.clone()))


def test_per_row_off_values_leave_rows_untouched():
    """A row whose parameter is the "off" value is returned as is, even when its float32 cumulative mass
    reaches 1.0 early (one dominant token: the tail would otherwise be cut)."""
    logits = torch.full((2, 50), -20.0)
    logits[:, 3] = 20.0
    for fn, off, on in [(apply_typical, 1.0, 0.9), (apply_top_p, 1.0, 0.9)]:
        out = fn(logits, torch.tensor([off, on]))
        assert torch.equal(out[0], logits[0]) and torch.equal(fn(logits[0], off), logits[0])
        assert int(torch.isfinite(out[1]).sum()) == 1


def test_min_p_threshold_scales_with_top_probability():
    logits = torch.tensor([0.6, 0.25, 0.1, 0.05]).log()
    assert torch.isfinite(apply_min_p(logits, 0.3)).tolist() == [True, True, False, False]    # 0.18 cut
    assert torch.isfinite(apply_min_p(logits, 0.1)).tolist() == [True, True, True, False]     # 0.06 cut


def test_pipeline_steps_follow_documented_order():
    pipe = LogitsPipeline.from_params(
        temperature=0.7, top_k=50, top_p=0.9, min_p=0.05, typical_p=0.9, epsilon=1e-4, eta=1e-4,
        repetition_penalty=1.1, frequency_penalty=0.2, presence_penalty=0.1, no_repeat_ngram_size=3,
        logit_bias={1: 1.0})
    assert [name for name, _ in pipe.steps] == list(PIPELINE_ORDER)
    assert [name for name, _ in LogitsPipeline.from_params(top_p=0.9, temperature=0.5).steps] == ["temperature", "top_p"]
    assert LogitsPipeline.from_params().steps == []


def test_temperature_runs_before_top_p():
    logits = torch.tensor([0.5, 0.3, 0.2]).log()
    out = LogitsPipeline.from_params(temperature=0.5, top_p=0.6)(logits)
    # tempered probs are [0.66, 0.24, 0.10]: top-p 0.6 keeps only token 0; untempered it would keep 0 and 1
    assert torch.isfinite(out).tolist() == [True, False, False]
    assert torch.isfinite(apply_temperature(apply_top_p(logits, 0.6), 0.5)).tolist() == [True, True, False]
    assert_same_scores(out, apply_top_p(apply_temperature(logits, 0.5), 0.6))


def test_pipeline_equals_manual_composition_in_order():
    logits, ids = make_logits(seed=8), make_ids(high=40)
    prompt, generated = ids[:, :20], ids[:, 20:]
    params = dict(logit_bias={2: 1.5}, repetition_penalty=1.2, frequency_penalty=0.4, presence_penalty=0.3,
                  no_repeat_ngram_size=2, temperature=0.6, top_k=100, top_p=0.9, min_p=0.01)
    out = LogitsPipeline.from_params(**params)(logits, prompt_ids=prompt, generated_ids=generated)
    z = apply_logit_bias(logits, {2: 1.5})
    z = apply_repetition_penalty(z, ids, 1.2)
    z = apply_frequency_penalty(z, generated, 0.4, 0.3)
    z = apply_no_repeat_ngram(z, ids, 2)
    z = apply_min_p(apply_top_p(apply_top_k(apply_temperature(z, 0.6), 100), 0.9), 0.01)
    assert_same_scores(out, z)
    # the bias is added before temperature: applying it after gives different values
    late = apply_logit_bias(apply_temperature(logits, 0.6), {2: 1.5})
    assert not torch.allclose(late[:, 2], apply_temperature(apply_logit_bias(logits, {2: 1.5}), 0.6)[:, 2])


def test_greedy_pipeline_and_custom_steps():
    logits = make_logits()
    pipe = LogitsPipeline.from_params(temperature=0, top_k=5, top_p=0.5)
    assert pipe.is_greedy and [n for n, _ in pipe.steps] == ["temperature"]
    assert not LogitsPipeline.from_params(temperature=0.5).is_greedy
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    assert torch.equal(sample_from_logits(pipe(logits), gen), logits.argmax(-1))
    assert torch.equal(gen.get_state(), state), "greedy rows must not consume random numbers"

    seen = {}

    def ban_last_generated(z, ctx):
        seen["ctx"] = ctx
        return z.scatter(-1, ctx.generated_ids[:, -1:], NEG_INF)

    pipe = LogitsPipeline.from_params(temperature=0.5, top_k=10).add("ban_last", ban_last_generated, before="top_k")
    assert [n for n, _ in pipe.steps] == ["temperature", "ban_last", "top_k"]
    generated = logits.argmax(-1, keepdim=True)
    out = pipe(logits, prompt_ids=IDS, generated_ids=generated)
    assert seen["ctx"].prompt_ids is IDS and seen["ctx"].all_ids.shape == (B, IDS.shape[1] + 1)
    assert (out.gather(-1, generated) == NEG_INF).all()
    assert ((out > NEG_INF).sum(-1) == 10).all()
    with pytest.raises(ValueError, match="already a step"):
        pipe.add("top_k", ban_last_generated)
    with pytest.raises(ValueError, match="before"):
        pipe.add("other", ban_last_generated, before="nope")


# ---------------------------------------------------------------------------------------------------------
# Bad input: every message names the parameter
# ---------------------------------------------------------------------------------------------------------
X = make_logits()
BAD = [
    (lambda: apply_temperature(X, -1), ValueError, r"temperature must be in \[0, inf\), got -1"),
    (lambda: apply_temperature(X, math.nan), ValueError, "temperature.*nan"),
    (lambda: apply_temperature(X, torch.tensor([1.0, -1.0, 1.0, 1.0])), ValueError, "temperature"),
    (lambda: apply_temperature(X, torch.tensor([1.0, 1.0])), ValueError, r"temperature.*shape \[B\]"),
    (lambda: apply_top_k(X, -1), ValueError, "top_k must be in"),
    (lambda: apply_top_k(X, 2.5), TypeError, "top_k must be an integer, got 2.5"),
    (lambda: apply_top_k(X, torch.tensor([1.0, 2.0, 3.0, 4.0])), TypeError, "top_k"),
    (lambda: apply_top_p(X, 0), ValueError, r"top_p must be in \(0, 1\], got 0"),
    (lambda: apply_top_p(X, 1.5), ValueError, r"top_p must be in \(0, 1\], got 1.5"),
    (lambda: apply_min_p(X, -0.1), ValueError, r"min_p must be in \[0, 1\], got -0.1"),
    (lambda: apply_min_p(X, 1.1), ValueError, r"min_p must be in \[0, 1\], got 1.1"),
    (lambda: apply_typical(X, 0), ValueError, "typical_p"),
    (lambda: apply_epsilon(X, 1.0), ValueError, r"epsilon must be in \[0, 1\)"),
    (lambda: apply_eta(X, -0.5), ValueError, "epsilon"),
    (lambda: apply_frequency_penalty(X, IDS, frequency_penalty=-2.1), ValueError, r"frequency_penalty must be in \[-2, 2\], got -2.1"),
    (lambda: apply_frequency_penalty(X, IDS, frequency_penalty=2.1), ValueError, "frequency_penalty.*2.1"),
    (lambda: apply_frequency_penalty(X, IDS, presence_penalty=-2.1), ValueError, "presence_penalty.*-2.1"),
    (lambda: apply_frequency_penalty(X, IDS, presence_penalty=2.1), ValueError, "presence_penalty.*2.1"),
    (lambda: apply_repetition_penalty(X, IDS, 0), ValueError, r"penalty must be in \(0, inf\), got 0"),
    (lambda: apply_repetition_penalty(X, IDS, -1), ValueError, "penalty.*-1"),
    (lambda: apply_repetition_penalty(X, IDS.float(), 1.2), TypeError, "token_ids"),
    (lambda: apply_repetition_penalty(X, IDS[:2], 1.2), ValueError, "token_ids must have shape"),
    (lambda: apply_no_repeat_ngram(X, IDS, -1), ValueError, "ngram_size"),
    (lambda: apply_no_repeat_ngram(X, IDS, 2.0), TypeError, "ngram_size"),
    (lambda: apply_logit_bias(X, {V: 1.0}), ValueError, rf"logit_bias token id must be in \[0, {V - 1}\], got {V}"),
    (lambda: apply_logit_bias(X, {-1: 1.0}), ValueError, "logit_bias token id"),
    (lambda: apply_logit_bias(X, {3: 100.5}), ValueError, r"logit_bias\[3\] must be in \[-100, 100\]"),
    (lambda: apply_logit_bias(X, {1.5: 1.0}), TypeError, "logit_bias token id"),
    (lambda: apply_logit_bias(X, [(1, 2.0)]), TypeError, "logit_bias must be a dict"),
    (lambda: apply_top_k(X.long(), 5), TypeError, "logits must be a floating-point tensor"),
    (lambda: apply_top_p(X.reshape(2, 2, V), 0.5), ValueError, r"logits must have shape \[V\] or \[B, V\]"),
    (lambda: LogitsPipeline.from_params(temperature=-1), ValueError, "temperature"),
    (lambda: LogitsPipeline.from_params(top_p=1.5), ValueError, "top_p"),
    (lambda: LogitsPipeline.from_params(eta=1.0), ValueError, "eta must be"),
    (lambda: LogitsPipeline.from_params(repetition_penalty=0.0), ValueError, "repetition_penalty must be"),
    (lambda: LogitsPipeline.from_params(no_repeat_ngram_size=-2), ValueError, "no_repeat_ngram_size"),
    (lambda: LogitsPipeline.from_params(logit_bias={5: -101.0}), ValueError, r"logit_bias\[5\]"),
]


@pytest.mark.parametrize("call,exc,match", BAD, ids=[b[2][:40] for b in BAD])
def test_bad_parameters_raise_with_the_parameter_name(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("bad_value,match", [(NEG_INF, "row 2 are all -inf"), (math.nan, "row 2 contain NaN"),
                                             (math.inf, "row 2 contain \\+inf")])
def test_unsamplable_rows_raise(bad_value, match):
    logits = make_logits()
    if bad_value == NEG_INF:
        logits[2] = NEG_INF
    else:
        logits[2, 17] = bad_value
    for fn in (sample_from_logits, safe_probs, check_finite_row):
        with pytest.raises(ValueError, match=match):
            fn(logits)
    # a filter chain that bans everything is caught, not turned into a token
    with pytest.raises(ValueError, match="row 0 are all -inf"):
        sample_from_logits(apply_logit_bias(torch.full((V,), NEG_INF), {1: 1.0}))


# ---------------------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------------------
def test_sampling_after_pipeline_matches_the_processed_distribution():
    n, vocab = 20_000, 200
    logits = make_logits(seed=11, shape=(vocab,), scale=2.0)
    processed = LogitsPipeline.from_params(temperature=0.7, top_k=50, top_p=0.9)(logits)
    expected = torch.softmax(processed, -1)
    support = expected > 0
    assert 5 < int(support.sum()) < 50, "the filters should leave a mid-sized support for a meaningful test"
    draws = sample_from_logits(processed.expand(n, vocab), torch.Generator().manual_seed(1234))
    assert draws.shape == (n,) and draws.dtype == torch.long
    freq = torch.bincount(draws, minlength=vocab).double() / n
    assert freq[~support].sum() == 0, "a removed token was sampled"
    tv = 0.5 * (freq - expected.double()).abs().sum()
    assert tv < 0.025, f"total variation {tv:.4f}"
    e = expected.double()[support] * n
    chi2 = float(((freq[support] * n - e) ** 2 / e).sum())
    df = int(support.sum()) - 1
    assert chi2 < df + 6 * math.sqrt(2 * df), f"chi-square {chi2:.1f} with {df} degrees of freedom"
    # the test has power: the same draws are far from the unprocessed tempered distribution
    wrong = torch.softmax(logits / 0.7, -1).double()
    assert 0.5 * (freq - wrong).abs().sum() > 4 * tv


def test_sample_from_logits_shapes_seed_and_greedy_rows():
    logits = make_logits()
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(sample_from_logits(logits, g1), sample_from_logits(logits, g2))
    token = sample_from_logits(logits[0], torch.Generator().manual_seed(7))
    assert token.shape == () and token.dtype == torch.long
    mixed = apply_temperature(logits, torch.tensor([0.0, 1.0, 0.0, 1.0]))
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_from_logits(mixed, gen) for _ in range(50)])
    assert (draws[:, 0] == logits[0].argmax()).all() and (draws[:, 2] == logits[2].argmax()).all()
    assert draws[:, 1].unique().numel() > 5, "a temperature-1 row over 1000 tokens should vary"


# ---------------------------------------------------------------------------------------------------------
# One table: the pipeline is built from infergen.params.SETTINGS, and its steps never wait for the device
# ---------------------------------------------------------------------------------------------------------
def test_pipeline_order_and_history_come_from_the_settings_table():
    from infergen import processors
    from infergen.params import SETTINGS

    steps = [s.step for s in SETTINGS if s.processor]
    assert PIPELINE_ORDER == tuple(dict.fromkeys(steps))
    for s in SETTINGS:
        if s.processor:
            assert callable(getattr(processors, s.processor).kernel), s.name
            # the "off" value, given to the public function, changes nothing
            args = (make_ids(),) if s.history else ()
            if s.name != "presence_penalty":
                assert torch.equal(getattr(processors, s.processor)(X, *args, s.default), X), s.name
    for s in SETTINGS:
        if s.processor:
            on = {"logit_bias": {1: 1.0}, "no_repeat_ngram_size": 2, "top_k": 5}.get(s.name, 0.5)
            pipe = LogitsPipeline.from_params(**{s.name: on})
            assert [name for name, _ in pipe.steps] == [s.step], s.name  # the setting's one step


def test_pipeline_steps_never_synchronise_with_the_device(monkeypatch):
    """No .item(), .tolist(), bool(), int() or float() of a tensor in any step the pipeline runs per token,
    even with per-row [B] tensor settings: the values were checked when the pipeline was built."""
    pipe = LogitsPipeline.from_params(
        logit_bias={3: 1.0}, repetition_penalty=torch.tensor([1.2, 1.0, 1.5, 2.0]), frequency_penalty=0.3,
        presence_penalty=torch.tensor([0.0, 0.5, 0.1, 0.2]), no_repeat_ngram_size=2,
        temperature=torch.tensor([0.0, 0.7, 1.0, 1.3]), top_k=torch.tensor([0, 5, 50, 999]), top_p=0.9,
        min_p=torch.tensor([0.0, 0.05, 0.1, 0.0]), typical_p=0.95, epsilon=1e-4, eta=torch.tensor([0.0, 1e-3, 0.0, 1e-3]))
    assert len(pipe) == len(PIPELINE_ORDER)
    expected = [pipe(make_logits(seed=s), IDS[:, :20], IDS[:, 20:20 + s]) for s in range(5)]

    def refuse(*args, **kwargs):
        raise AssertionError("a pipeline step read a tensor's value on the host")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    for s in range(5):
        assert torch.equal(pipe(make_logits(seed=s), IDS[:, :20], IDS[:, 20:20 + s]), expected[s])


def test_pipeline_checks_per_row_settings_against_the_batch():
    pipe = LogitsPipeline.from_params(temperature=torch.tensor([0.5, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"temperature must be a number or a tensor of shape \[B\] = \[4\]"):
        pipe(make_logits())
