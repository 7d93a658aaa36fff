"""One SamplingParams, every path: the same settings give the same tokens wherever they are used.

The cases are generated from the fields of :class:`infergen.SamplingParams` (each set to a value that
changes something), so a new field cannot be forgotten: it gets a case here or this file fails.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

import infergen
from infergen import SamplingParams
from infergen.params import SETTINGS
from infergen.interop import from_generation_config, to_generation_config
from infergen.bench.serving import static_batching
from infergen.serving import ContinuousBatcher, Request

#: A value that matters for each field (fields that need no case say why).
ACTIVE = {
    "logit_bias": {7: 5.0, 11: -100.0},
    "repetition_penalty": 1.8,
    "frequency_penalty": 1.5,
    "presence_penalty": 1.5,
    "no_repeat_ngram_size": 2,
    "temperature": 0.7,
    "top_k": 5,
    "top_p": 0.6,
    "min_p": 0.2,
    "typical_p": 0.5,
    "epsilon": 0.02,
    "eta": 0.05,
    "seed": 1234,
    "stop": None,  # needs a tokenizer: covered by tests/test_generation.py through infergen.generate
}


def test_every_field_has_a_case():
    assert set(ACTIVE) == {s.name for s in SETTINGS}


def _cases():
    for s in SETTINGS:
        value = ACTIVE[s.name]
        if value is None:
            continue
        # sampling-only fields are tested while sampling (with a seed); the others greedily and sampling
        temps = [0.9] if s.sampling_only else [0.0, 0.9]
        for t in temps:
            settings = {s.name: value, "temperature": t if s.name != "temperature" else value}
            if settings["temperature"]:
                settings.setdefault("seed", 5)
            yield pytest.param(SamplingParams(**settings), id=f"{s.name}-T{settings['temperature']}")


def _requests():
    g = torch.Generator().manual_seed(3)
    return [Request(prompt=torch.randint(3, 96, (n,), generator=g).tolist(), max_new_tokens=m, id=i, seed=10 + i)
            for i, (n, m) in enumerate(zip([3, 8, 5, 11], [7, 3, 9, 5]))]


def _alone(model, req: Request, params: SamplingParams, **kw) -> list[int]:
    params = params.replace(seed=req.seed) if params.seed is not None or not params.is_greedy else params
    out = infergen.generate_autoregressive(model, torch.tensor([req.prompt]), req.max_new_tokens, eos_token_id=[],
                                           params=params, return_dict=True, **kw)
    return out.new_tokens[0, :out.lengths[0]].tolist()


@pytest.mark.parametrize("params", list(_cases()))
def test_batchers_equal_each_request_alone(tiny_native, params):
    reqs = _requests()
    served = ContinuousBatcher(tiny_native, max_batch=2, eos_token_id=[], params=params).run(reqs)
    for r in served:
        assert r.tokens == _alone(tiny_native, r, params), (params, r.id)
    static = static_batching(tiny_native, [dataclasses.replace(r) for r in _requests()], batch_size=3,
                             eos_token_id=[], params=params)
    for r in static:
        assert r.tokens == _alone(tiny_native, r, params), (params, r.id)


@pytest.mark.parametrize("params", list(_cases()))
def test_decoders_agree_on_the_same_params(tiny_native, params):
    ids = torch.tensor([[5, 17, 33, 8, 41]])
    ref = infergen.generate_autoregressive(tiny_native, ids, 8, params=params)
    # keywords and the object are the same thing
    assert torch.equal(ref, infergen.generate_autoregressive(tiny_native, ids, 8, **params.active()))
    if params.is_greedy:
        assert torch.equal(ref, infergen.greedy_search(tiny_native, ids, 8, params=params))
        assert torch.equal(ref, infergen.beam_search(tiny_native, ids, 8, num_beams=1, params=params))
        if not params.uses_history:
            assert torch.equal(ref, infergen.speculative_decode(tiny_native, ids, 8, draft_layers=1, params=params))
    else:
        assert torch.equal(ref, infergen.sample_with_temperature(tiny_native, ids, 8, params=params))
        assert torch.equal(ref, infergen.beam_search(tiny_native, ids, 8, num_beams=1, do_sample=True,
                                                     params=params))


@pytest.mark.parametrize("params", [p for p in _cases()
                                    if not set(p.values[0].active()) & {"frequency_penalty", "presence_penalty"}])
def test_generation_config_round_trip(params):
    back = from_generation_config(to_generation_config(params))
    assert back.replace(seed=None) == params.replace(seed=None)


def test_deterministic_decoders_refuse_sampling_only_settings(tiny_native):
    ids = torch.tensor([[5, 17, 33]])
    for s in SETTINGS:
        if not s.sampling_only or s.name == "temperature":
            continue
        for decoder in (infergen.greedy_search, infergen.beam_search):
            with pytest.raises(ValueError, match=s.name):
                decoder(tiny_native, ids, 4, **{s.name: ACTIVE[s.name]})
    # the "off" values are accepted by every deterministic decoder alike
    for decoder in (infergen.greedy_search, infergen.beam_search, infergen.diverse_beam_search):
        decoder(tiny_native, ids, 2, top_p=1.0, top_k=0, min_p=0.0, temperature=0)


def test_settings_are_validated_once_naming_the_field():
    for s in SETTINGS:
        if s.kind in (float, int):
            with pytest.raises(TypeError, match=s.name):
                SamplingParams(**{s.name: "0.5"})
            with pytest.raises((TypeError, ValueError), match=s.name):
                SamplingParams(**{s.name: True})
    with pytest.raises(TypeError, match="unknown sampling parameter"):
        SamplingParams.from_kwargs(temprature=0.5)
    with pytest.raises(ValueError, match="seed"):
        SamplingParams(seed=2**70)


# ---------------------------------------------------------------------------------------------------------
# Issue 21 items 8, 9, 12: values no float holds, other real types, bool tensors
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=10**400), r"temperature must be in \[0, inf\) and fit a float .*401 digits"),
    (dict(top_k=10**400), r"top_k must be in \[0, inf\) and fit a 64-bit integer .*401 digits"),
    (dict(seed=10**400), r"seed must be in \[0, 18446744073709551615\], got .*401 digits"),
    (dict(logit_bias={10**400: 1.0}), r"logit_bias token id must be in \[0, inf\) and fit a 64-bit integer"),
    (dict(logit_bias={1: 10**400}), r"logit_bias\[1\] must be in \[-100, 100\], got .*401 digits"),
])
def test_huge_integers_are_refused_naming_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


def test_other_real_numbers_are_converted_once_at_the_door():
    """A Fraction (or a numpy scalar) is accepted and stored as the Python type the processors compute with."""
    from fractions import Fraction

    import numpy as np

    params = SamplingParams(temperature=Fraction(1, 2), top_p=Fraction(9, 10), top_k=np.int64(4))
    assert type(params.temperature) is float and params.temperature == 0.5
    assert type(params.top_k) is int and params.top_k == 4
    logits = torch.randn(2, 50, generator=torch.Generator().manual_seed(0))
    pipeline = infergen.LogitsPipeline.from_params
    torch.testing.assert_close(pipeline(params)(logits), pipeline(SamplingParams(temperature=0.5, top_p=0.9, top_k=4))(logits))
    torch.testing.assert_close(infergen.apply_temperature(logits, Fraction(1, 2)), logits / 0.5)
    with pytest.raises(TypeError, match="top_k must be an integer"):
        SamplingParams(top_k=Fraction(4, 1))  # not an Integral: refused, as 4.0 is


@pytest.mark.parametrize("name", ["top_k", "temperature", "repetition_penalty"])
def test_bool_tensors_are_refused_like_bools(name):
    with pytest.raises(TypeError, match=rf"{name} must hold .*torch.bool"):
        SamplingParams(**{name: torch.tensor([True, False])})
    with pytest.raises(TypeError, match=name):
        SamplingParams(**{name: True})


def test_settings_that_take_no_per_row_tensor_say_so():
    for name in ("no_repeat_ngram_size", "seed"):
        with pytest.raises(TypeError, match=rf"{name} must be a number, got a tensor"):
            SamplingParams(**{name: torch.tensor([2, 2])})
    with pytest.raises(TypeError, match=r"temperature must be a number or a \[B\] tensor"):
        SamplingParams(temperature=torch.ones(2, 2))


# ---------------------------------------------------------------------------------------------------------
# Validation happens once, at the door: the decode loop checks no setting again
# ---------------------------------------------------------------------------------------------------------
def test_decoding_checks_settings_once_not_per_token(tiny_native):
    """The number of setting checks does not grow with the number of tokens (none runs per step)."""
    from unittest import mock

    from infergen.params import Setting

    ids = torch.tensor([[5, 17, 33, 8, 41], [7, 7, 9, 2, 3]])
    settings = dict(temperature=torch.tensor([0.7, 1.2]), top_k=torch.tensor([5, 0]), top_p=0.9,
                    repetition_penalty=torch.tensor([1.3, 1.0]), frequency_penalty=0.5, no_repeat_ngram_size=2,
                    logit_bias={3: -5.0}, seed=0)
    counts = []
    for n in (1, 6):
        with mock.patch.object(Setting, "check", autospec=True, side_effect=Setting.check) as check:
            infergen.generate_autoregressive(tiny_native, ids, n, eos_token_id=[], **settings)
        counts.append(check.call_count)
    assert counts[0] > 0 and counts[0] == counts[1], counts
