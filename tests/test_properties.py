"""Property-based tests (hypothesis): whole classes of inputs, not examples.

* every decoder: a ragged left-padded batch equals each row run alone; ids stay in the vocabulary;
  inputs are never modified; a finished row is padding (the pad id) after its end;
* every processor: equals transformers' processor (ties, ``-inf`` entries, batches, per-row
  parameters); never NaN; never modifies its input;
* every public numeric parameter: a bad value gets a ValueError/TypeError naming the parameter;
* ``stream()`` joined equals ``generate().text`` for every strategy, with and without stop strings;
* serving: every request's tokens equal the request run alone with the same settings and seed.

Tiny random models keep every example cheap; ``max_examples`` is small and there is no deadline.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import infergen
from infergen import processors as P
from infergen.params import SETTINGS, setting
from infergen.bench.serving import static_batching
from infergen.serving import ContinuousBatcher, Request
from infergen.testing import left_pad, tiny_model

VOCAB = 96
FAST = settings(max_examples=8, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.filter_too_much])


@pytest.fixture(scope="module")
def model():
    """A tiny random Llama with large weights: its next token depends on the whole context (with the
    default small initialisation the argmax mostly follows the last token, which hides attention bugs)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from infergen.models.llama import LlamaModel
    from infergen.models.protocol import GenerationDefaults

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False, initializer_range=0.3)
    return LlamaModel.from_hf(LlamaForCausalLM(cfg).eval(), defaults=GenerationDefaults(eos_token_ids=(2,),
                                                                                        pad_token_id=0))


# ========================================================================================================
# Decoders
# ========================================================================================================
def _gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


#: name -> (callable(model, ids, n, seeds, **common), whether a batch row equals the row alone)
DECODERS = {
    "greedy": (lambda m, ids, n, seeds, **kw: infergen.greedy_search(m, ids, n, **kw), True),
    "sample": (lambda m, ids, n, seeds, **kw: infergen.sample_with_temperature(
        m, ids, n, temperature=1.3, top_k=20, generator=_gens(seeds), **kw), True),
    "beam": (lambda m, ids, n, seeds, **kw: infergen.beam_search(m, ids, n, num_beams=3, **kw), True),
    "diverse_beam": (lambda m, ids, n, seeds, **kw: infergen.diverse_beam_search(
        m, ids, n, num_beams=4, num_beam_groups=2, diversity_penalty=0.7, **kw), True),
    "contrastive": (lambda m, ids, n, seeds, **kw: infergen.contrastive_search(m, ids, n, top_k=4, alpha=0.6,
                                                                                **kw), True),
    "mcts": (lambda m, ids, n, seeds, **kw: infergen.mcts_decode(m, ids, n, num_simulations=3, top_k=3, **kw),
             True),
    "speculative": (lambda m, ids, n, seeds, **kw: infergen.speculative_decode(m, ids, n, draft_layers=1, **kw),
                    True),
    # sampled speculative decoding draws per round for the whole batch: only the row-free properties
    "speculative_sample": (lambda m, ids, n, seeds, **kw: infergen.speculative_decode(
        m, ids, n, draft_layers=1, temperature=1.0, seed=seeds[0], **kw), False),
}


@st.composite
def batches(draw):
    lengths = draw(st.lists(st.integers(1, 6), min_size=2, max_size=3, unique=True))  # ragged: every row padded differently
    ids, mask = left_pad(lengths, pad_token_id=0, seed=draw(st.integers(0, 10**6)))
    n = draw(st.integers(2, 4))
    # many EOS ids, so that rows do finish early; a pad id that may be anything in the vocabulary
    eos = draw(st.lists(st.integers(3, VOCAB - 1), min_size=0, max_size=60, unique=True))
    pad = draw(st.integers(0, VOCAB - 1))
    seeds = draw(st.lists(st.integers(0, 2**32), min_size=len(lengths), max_size=len(lengths)))
    return ids, mask, n, eos, pad, seeds


def _row_facts(out, i):
    """(new tokens up to the row's end, finish reason) of row ``i`` of a GenerationOutput."""
    n = out.lengths[i]
    return out.new_tokens[i, :n].tolist(), out.finish_reason[i]


def check_decoder_properties(model, name, case):
    ids, mask, n, eos, pad, seeds = case
    run, rows_independent = DECODERS[name]
    ids_before, mask_before = ids.clone(), mask.clone()
    out = run(model, ids, n, seeds, attention_mask=mask, eos_token_id=eos, pad_token_id=pad, return_dict=True)
    # inputs are never modified
    assert torch.equal(ids, ids_before) and torch.equal(mask, mask_before), "input modified"
    assert torch.equal(out.sequences[:, :ids.shape[1]], ids), "prompt changed in the output"
    new = out.new_tokens
    # every id is a token id of the vocabulary
    assert int(new.min(initial=0) if new.numel() == 0 else new.min()) >= 0
    assert new.numel() == 0 or int(new.max()) < VOCAB, "id outside the vocabulary"
    assert new.shape[1] <= n
    for i in range(new.shape[0]):
        k = out.lengths[i]
        row = new[i].tolist()
        # a finished row is padding only, after its end; it ends at its first EOS
        assert all(t == pad for t in row[k:]), (name, i, row, k, pad)
        real = row[:k]
        assert not any(t in eos for t in real[:-1]), (name, "EOS before the end", real, eos)
        if out.finish_reason[i] == "eos":
            assert real and real[-1] in eos
        elif out.finish_reason[i] == "length":
            assert k == n
    if not rows_independent:
        return
    # a ragged left-padded batch equals each row run alone
    for i in range(ids.shape[0]):
        real = mask[i].bool()
        alone = run(model, ids[i:i + 1, real], n, seeds[i:i + 1], eos_token_id=eos, pad_token_id=pad,
                    return_dict=True)
        assert _row_facts(out, i) == _row_facts(alone, 0), (name, i)


@pytest.mark.parametrize("name", list(DECODERS))
@settings(FAST, max_examples=6)
@given(case=batches())
def test_decoder_properties(model, name, case):
    check_decoder_properties(model, name, case)


# ========================================================================================================
# Processors
# ========================================================================================================
NEG_INF = float("-inf")


@st.composite
def logits(draw, max_rows=4, max_vocab=12):
    B = draw(st.integers(1, max_rows))
    V = draw(st.integers(2, max_vocab))
    # few distinct values: ties are common; -inf entries too
    value = st.one_of(st.sampled_from([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0, NEG_INF]),
                      st.floats(-8, 8, width=32, allow_nan=False))
    rows = draw(st.lists(st.lists(value, min_size=V, max_size=V), min_size=B, max_size=B))
    out = torch.tensor(rows, dtype=torch.float32)
    dead = ~torch.isfinite(out).any(-1)
    out[dead, 0] = 0.0  # every row keeps at least one finite logit
    return out


@st.composite
def histories(draw, batch, vocab):
    """A ragged token history [B, T], -1 on the left of shorter rows (and the real ids of each row)."""
    rows = draw(st.lists(st.lists(st.integers(0, vocab - 1), min_size=0, max_size=8), min_size=batch,
                         max_size=batch))
    T = max(1, max(len(r) for r in rows))
    ids = torch.tensor([[-1] * (T - len(r)) + r for r in rows], dtype=torch.long)
    return ids, rows


def _per_row(draw, values, batch):
    """One value for every row, or one per row (given as a [B] tensor); returns (param, [value per row])."""
    if draw(st.booleans()):
        v = draw(values)
        return v, [v] * batch
    vs = draw(st.lists(values, min_size=batch, max_size=batch))
    return torch.tensor(vs), vs


def _hf(name, value, row_logits, history=None):
    """transformers' processor ``name`` with ``value`` applied to one row [1, V]."""
    import transformers.generation.logits_process as lp

    make = {
        "temperature": lambda v: lp.TemperatureLogitsWarper(float(v)),
        "top_k": lambda v: lp.TopKLogitsWarper(int(v)),
        "top_p": lambda v: lp.TopPLogitsWarper(float(v)),
        "min_p": lambda v: lp.MinPLogitsWarper(float(v)),
        "typical_p": lambda v: lp.TypicalLogitsWarper(float(v)),
        "epsilon": lambda v: lp.EpsilonLogitsWarper(float(v)),
        "eta": lambda v: lp.EtaLogitsWarper(float(v)),
        "repetition_penalty": lambda v: lp.RepetitionPenaltyLogitsProcessor(float(v)),
        "no_repeat_ngram_size": lambda v: lp.NoRepeatNGramLogitsProcessor(int(v)),
    }[name]
    ids = torch.tensor([history if history is not None else []], dtype=torch.long)
    return make(value)(ids, row_logits.clone())


#: processor -> (infergen function(logits, param, history), value strategy, reads history)
PROCESSORS = {
    "temperature": (lambda z, v, h: P.apply_temperature(z, v), st.floats(0.05, 5.0), False),
    "top_k": (lambda z, v, h: P.apply_top_k(z, v), st.integers(1, 14), False),
    "top_p": (lambda z, v, h: P.apply_top_p(z, v), st.floats(0.01, 1.0), False),
    "min_p": (lambda z, v, h: P.apply_min_p(z, v), st.floats(0.0, 1.0), False),
    "typical_p": (lambda z, v, h: P.apply_typical(z, v), st.floats(0.01, 0.999), False),
    "epsilon": (lambda z, v, h: P.apply_epsilon(z, v), st.floats(1e-4, 0.5), False),
    "eta": (lambda z, v, h: P.apply_eta(z, v), st.floats(1e-4, 0.5), False),
    "repetition_penalty": (lambda z, v, h: P.apply_repetition_penalty(z, h, v), st.floats(0.5, 3.0), True),
    "no_repeat_ngram_size": (lambda z, v, h: P.apply_no_repeat_ngram(z, h, v), st.integers(1, 3), True),
}
#: processors without a transformers peer: only the general properties
OWN_PROCESSORS = {
    "frequency_penalty": (lambda z, v, h: P.apply_frequency_penalty(z, h, v, 0.5), st.floats(-2.0, 2.0), True),
    "logit_bias": (lambda z, v, h: P.apply_logit_bias(z, {0: v, z.shape[-1] - 1: -v}), st.floats(-100, 100), False),
}
#: transformers' processors take one value for the batch; these infergen ones also take one per row
SCALAR_ONLY = {"no_repeat_ngram_size", "repetition_penalty"}


def _same_scores(ours: torch.Tensor, ref: torch.Tensor) -> bool:
    if not torch.equal(torch.isneginf(ours), torch.isneginf(ref)):
        return False
    finite = torch.isfinite(ref)
    return torch.allclose(ours[finite], ref[finite], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(PROCESSORS))
@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_processor_equals_transformers(name, data):
    fn, values, reads_history = PROCESSORS[name]
    z = data.draw(logits())
    B, V = z.shape
    hist, rows = data.draw(histories(B, V)) if reads_history else (None, [None] * B)
    if name in SCALAR_ONLY:
        value = data.draw(values)
        per_row = [value] * B
    else:
        value, per_row = _per_row(data.draw, values, B)
    before = z.clone()
    ours = fn(z, value, hist)
    assert torch.equal(z, before), "input modified"
    assert not torch.isnan(ours).any()
    for i in range(B):
        ref = _hf(name, per_row[i], z[i:i + 1], rows[i])
        assert _same_scores(ours[i:i + 1], ref), (name, per_row[i], z[i].tolist(), ours[i].tolist(), ref.tolist())


@pytest.mark.parametrize("name", list(PROCESSORS) + list(OWN_PROCESSORS))
@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_processor_never_nan_never_mutates(name, data):
    fn, values, reads_history = {**PROCESSORS, **OWN_PROCESSORS}[name]
    z = data.draw(logits())
    B, V = z.shape
    hist = data.draw(histories(B, V))[0] if reads_history else None
    value = data.draw(values)
    before = z.clone(), None if hist is None else hist.clone()
    out = fn(z, value, hist)
    assert torch.equal(z, before[0]) and (hist is None or torch.equal(hist, before[1])), "input modified"
    assert out is not z and out.shape == z.shape and out.dtype == z.dtype
    assert not torch.isnan(out).any(), (name, value, z.tolist(), out.tolist())
    if name != "no_repeat_ngram_size":  # a hard ban: with n = 1 every token of the history goes, all of a
        assert torch.isfinite(out).any(-1).all(), "a row lost every token"  # tiny vocabulary included


# ========================================================================================================
# Bad values of every public numeric parameter
# ========================================================================================================
class Spec:
    """The valid domain of one numeric parameter (kept here independently of the library)."""

    def __init__(self, kind=float, low=None, high=None, low_open=False, high_open=False, none=False,
                 many=False):
        self.kind, self.low, self.high, self.low_open, self.high_open, self.none, self.many = \
            kind, low, high, low_open, high_open, none, many

    def valid(self, v) -> bool:
        if v is None:
            return self.none
        if self.many and isinstance(v, (list, tuple)):  # a list of values (EOS ids)
            return all(self.valid(x) for x in v)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        if isinstance(v, float) and (math.isnan(v) or (self.kind is int)):
            return False
        if self.kind is int and self.high is None and v >= 2**63:
            return False  # unbounded counts and sizes: no tensor holds it
        if self.low is not None and (v < self.low or (self.low_open and v == self.low)):
            return False
        if self.high is not None and (v > self.high or (self.high_open and v == self.high)):
            return False
        return True


def _setting_spec(s):
    b = s.bounds  # "[0, inf)" -> low=0, high=inf, ...: an int setting with no upper end must fit 64 bits
    high = None if s.kind is int and b["high"] == math.inf else b["high"]
    return Spec(s.kind, b["low"], high, b["low_open"], b["high_open"], none=s.default is None)


SETTING_SPECS = {s.name: _setting_spec(s) for s in SETTINGS if s.kind in (int, float)}
TOKEN = Spec(int, 0, VOCAB - 1)
CONTEXT = 256 - 3  # the tiny model's context minus the prompt below
COMMON = {"max_new_tokens": Spec(int, 0, CONTEXT), "pad_token_id": TOKEN, "eos_token_id": Spec(int, 0, VOCAB - 1, many=True)}
#: decoder -> (base keyword arguments, {parameter: its valid domain})
DECODER_PARAMS = {
    "greedy_search": ({}, {**COMMON}),
    "sample_with_temperature": ({"seed": 0}, {**COMMON, **SETTING_SPECS}),
    "beam_search": ({"num_beams": 2}, {**COMMON, "num_beams": Spec(int, 1),
                                         "num_return_sequences": Spec(int, 1, 2),
                                         "length_penalty": Spec(float, -math.inf, math.inf, True, True)}),
    "diverse_beam_search": ({"num_beams": 2, "num_beam_groups": 2},
                            {**COMMON, "num_beam_groups": Spec(int, 1, 2),
                             "diversity_penalty": Spec(float, 0, math.inf, high_open=True),
                             "length_penalty": Spec(float, -math.inf, math.inf, True, True)}),
    "contrastive_search": ({}, {**COMMON, "top_k": Spec(int, 1, VOCAB), "alpha": Spec(float, 0, 1)}),
    "mcts_decode": ({"num_simulations": 2}, {**COMMON, "num_simulations": Spec(int, 1),
                                              "c_puct": Spec(float, 0, math.inf, high_open=True),
                                              "temperature": SETTING_SPECS["temperature"],
                                              "top_k": Spec(int, 1), "rollout_tokens": Spec(int, 0),
                                              "commit_temperature": Spec(float, 0, math.inf, high_open=True)}),
    "speculative_decode": ({"draft_layers": 1}, {**COMMON, "num_draft_tokens": Spec(int, 1),
                                                  "draft_layers": Spec(int, 1, 1, none=True),
                                                  "temperature": SETTING_SPECS["temperature"]}),
}
BAD_CANDIDATES = st.one_of(
    st.text(max_size=3), st.booleans(), st.just(None),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-2**70, 2**70),
    st.sampled_from([-1, -1.0, 2.5, 0.5, float("nan"), float("inf"), float("-inf"), 2**63, 2**64, 10**30,
                     -10**30, 1e300, "1", "0.5", [1], (2,), [-1], [2.5], [VOCAB]]))

_CASES = [(d, p) for d, (_, params) in DECODER_PARAMS.items() for p in params]


#: one bad value of every kind, tried for every parameter (hypothesis adds random ones)
CANONICAL_BAD = [-1, -1.0, 2.5, float("nan"), float("inf"), float("-inf"), True, False, "1", 2**63, 10**30,
                 -10**30, 1e300, [-1], [2.5], [VOCAB]]


def _assert_refused(decoder, param, value):
    base, params = DECODER_PARAMS[decoder]
    kwargs = {**base, param: value}
    if decoder == "sample_with_temperature" and param in SETTING_SPECS and setting(param).sampling_only:
        kwargs.setdefault("temperature", 1.0)
    n = kwargs.pop("max_new_tokens", 2)
    with pytest.raises((TypeError, ValueError)) as info:
        getattr(infergen, decoder)(tiny_model(), torch.tensor([[5, 17, 33]]), n, **kwargs)
    assert param in str(info.value), (decoder, param, value, str(info.value))


@pytest.mark.parametrize("decoder,param", _CASES, ids=[f"{d}-{p}" for d, p in _CASES])
def test_every_kind_of_bad_value_is_refused_naming_it(decoder, param):
    spec = DECODER_PARAMS[decoder][1][param]
    for value in CANONICAL_BAD:
        if not spec.valid(value):
            _assert_refused(decoder, param, value)


@pytest.mark.parametrize("decoder,param", _CASES, ids=[f"{d}-{p}" for d, p in _CASES])
@settings(max_examples=5, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])
@given(value=BAD_CANDIDATES)
def test_bad_numeric_value_is_refused_naming_it(decoder, param, value):
    spec = DECODER_PARAMS[decoder][1][param]
    assume(not spec.valid(value))
    if value is None and param in ("max_new_tokens", "pad_token_id", "eos_token_id", "temperature",
                                    "num_beams", "top_k") + tuple(SETTING_SPECS):
        assume(False)  # None means "the default" for these
    _assert_refused(decoder, param, value)


@settings(max_examples=6, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])
@given(value=BAD_CANDIDATES, param=st.sampled_from(["max_batch", "max_len", "pad_token_id", "eos_token_id",
                                                    *SETTING_SPECS]))
def test_bad_serving_value_is_refused_naming_it(value, param):
    model = tiny_model()
    spec = {"max_batch": Spec(int, 1), "max_len": Spec(int, 2, model.max_context), **COMMON,
            **SETTING_SPECS}[param]
    assume(value is not None and not spec.valid(value))
    with pytest.raises((TypeError, ValueError)) as info:
        ContinuousBatcher(model, **{param: value}).run([Request(prompt=[5, 6], max_new_tokens=2)])
    assert param in str(info.value), (param, value, str(info.value))


@settings(max_examples=10, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.filter_too_much])
@given(value=BAD_CANDIDATES, param=st.sampled_from(["max_new_tokens", "arrival", "seed"]))
def test_bad_request_value_is_refused_naming_it(value, param):
    spec = {"max_new_tokens": Spec(int, 1), "arrival": Spec(int, 0), "seed": Spec(int, 0, 2**64 - 1, none=True)}
    assume(not spec[param].valid(value))
    with pytest.raises((TypeError, ValueError)) as info:
        Request(prompt=[5, 6], **{param: value})
    assert param in str(info.value)


# ========================================================================================================
# stream() joined is generate().text
# ========================================================================================================
@pytest.fixture(scope="module")
def text_model():
    """A tiny random Llama with the bundled tokenizer's vocabulary (random ids: odd bytes, split characters)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from infergen.models.llama import LlamaModel
    from infergen.models.loading import cache_dir, load_tokenizer
    from infergen.models.protocol import GenerationDefaults

    tok = load_tokenizer(cache_dir() / "smollm2-135m")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True)
    hf = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        hf.model.embed_tokens.weight.normal_(0, 2.0)  # sharper, more varied next-token distributions
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    return LlamaModel.from_hf(hf, defaults=GenerationDefaults(eos_token_ids=(eos,), pad_token_id=eos)), tok


STREAM_STRATEGIES = {
    "greedy": {}, "sample": {"seed": 3, "temperature": 1.0}, "beam": {"num_beams": 2},
    "diverse_beam": {"num_beams": 2, "num_beam_groups": 2}, "contrastive": {"top_k": 3},
    "mcts": {"num_simulations": 2, "top_k": 3}, "speculative": {"draft_layers": 1},
}
PROMPTS = ["The capital of France is", "请用中文介绍", "def f(x):", "Ünïcödé ✓ ", "a"]


@pytest.mark.parametrize("strategy", list(STREAM_STRATEGIES))
@settings(max_examples=4, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_stream_joined_is_the_final_text(text_model, strategy, data):
    model, tok = text_model
    prompt = data.draw(st.sampled_from(PROMPTS))
    n = data.draw(st.integers(1, 6))
    kw = dict(strategy=strategy, max_new_tokens=n, **STREAM_STRATEGIES[strategy])
    full = infergen.generate(model, tok, prompt, **kw).text
    stops = [None]
    if full:  # a stop string from inside the text (it may start or end inside a token), and one never seen
        i = data.draw(st.integers(0, len(full) - 1))
        j = data.draw(st.integers(i + 1, min(len(full), i + 3)))
        stops += [full[i:j], "\x00never"]
    for stop in stops:
        extra = {} if stop is None else {"stop": stop}
        want = infergen.generate(model, tok, prompt, **kw, **extra).text
        pieces = list(infergen.stream(model, tok, prompt, **kw, **extra))
        shown = ""
        for piece in pieces:  # the reader never sees text that the final result lacks
            shown += piece
            assert want.startswith(shown), (strategy, stop, shown, want)
        assert shown == want, (strategy, stop, pieces, want)
        if stop is not None:
            assert stop not in shown


# ========================================================================================================
# Serving
# ========================================================================================================
SERVING_SETTINGS = [
    {"temperature": 0.0},
    {"temperature": 0.0, "logit_bias": {7: 3.0, 11: -100.0}, "repetition_penalty": 1.5},
    {"temperature": 1.0},
    {"temperature": 0.8, "top_k": 5, "frequency_penalty": 1.0},
    {"temperature": 1.2, "top_p": 0.7, "no_repeat_ngram_size": 2},
]


@st.composite
def workloads(draw):
    n = draw(st.integers(1, 5))
    reqs = []
    for i in range(n):
        prompt = draw(st.lists(st.integers(3, VOCAB - 1), min_size=1, max_size=8))
        reqs.append(dict(prompt=prompt, max_new_tokens=draw(st.integers(1, 6)), arrival=draw(st.integers(0, 3)),
                         seed=draw(st.integers(0, 2**32)), id=i))
    return reqs


def _alone(model, r: dict, settings_: dict, eos) -> list[int]:
    kw = dict(settings_)
    if kw["temperature"]:
        kw["seed"] = r["seed"]
    out = infergen.generate_autoregressive(model, torch.tensor([r["prompt"]]), r["max_new_tokens"],
                                           eos_token_id=eos, return_dict=True, **kw)
    return out.new_tokens[0, :out.lengths[0]].tolist()


@settings(max_examples=12, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(work=workloads(), which=st.integers(0, len(SERVING_SETTINGS) - 1), max_batch=st.integers(1, 3),
       eos=st.lists(st.integers(3, VOCAB - 1), max_size=8, unique=True))
def test_served_request_equals_the_request_alone(model, work, which, max_batch, eos):
    cfg = SERVING_SETTINGS[which]
    want = {r["id"]: _alone(model, r, cfg, eos) for r in work}
    served = ContinuousBatcher(model, max_batch=max_batch, eos_token_id=eos, **cfg).run(
        [Request(**r) for r in work])
    for r in served:
        assert r.tokens == want[r.id], ("continuous", cfg, r.id)
    static = static_batching(model, [Request(**r) for r in work], batch_size=max_batch, eos_token_id=eos, **cfg)
    for r in static:
        assert r.tokens == want[r.id], ("static", cfg, r.id)
