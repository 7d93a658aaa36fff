"""Issue 21 regressions in the constraints' and the command line's part that fit no other test file.

Item 14, a pattern complete before any token (``regex=""``, ``choices=[""]``): the constraint side says
so at once (``RowConstraints.complete()`` before the first token, tested in test_constraints.py); the
decoder must then finish the row ``"constraint"`` with zero tokens and spend no forward pass on it.
"""
from __future__ import annotations

import pytest
import torch

import infergen
from infergen.constraints import make_constraint


@pytest.fixture(scope="module")
def tok():
    from infergen.interop.gguf import prepare_bundled
    from infergen.models.loading import load_tokenizer

    return load_tokenizer(prepare_bundled(progress=False))


def _forward_calls(model):
    calls = []
    handle = model.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("kwargs", [dict(regex=""), dict(choices=[""])])
@pytest.mark.parametrize("strategy", ["greedy", "sample"])
def test_a_pattern_complete_before_any_token_finishes_without_a_forward_pass(tiny_native, tok, kwargs, strategy):
    from infergen.decoding import generate_autoregressive, greedy_search

    constraint = make_constraint(tok, eos_token_id=2, **kwargs)  # the tiny model's EOS id
    input_ids = torch.tensor([[1, 5, 6, 7]])
    calls, handle = _forward_calls(tiny_native)
    try:
        if strategy == "greedy":
            out = greedy_search(tiny_native, input_ids, 5, constraint=constraint, return_dict=True)
        else:
            out = generate_autoregressive(tiny_native, input_ids, 5, temperature=1.0, seed=0,
                                          constraint=constraint, return_dict=True)
    finally:
        handle.remove()
    assert out.finish_reason == ["constraint"], out.finish_reason
    assert out.lengths == [0] and out.sequences.shape[1] == input_ids.shape[1]
    assert not calls, f"{len(calls)} forward pass(es) spent on a row that was complete before any token"


# ---- Items 1, 2, 5, 6, 10, 11: the text front door and the settings' mappings --------------------------------
def test_item1_stream_stops_at_a_stop_string_given_through_params(smollm):
    """``stream`` read only the ``stop=`` keyword: stop strings inside ``params=`` were ignored."""
    import infergen
    from infergen import SamplingParams

    model, tok = smollm
    kw = dict(strategy="greedy", max_new_tokens=12, params=SamplingParams(temperature=0, stop=(" answer",)))
    text = infergen.generate(model, tok, "The capital of France is", **kw).text
    streamed = "".join(infergen.stream(model, tok, "The capital of France is", **kw))
    assert " answer" not in streamed and streamed == text


def test_item2_from_generation_config_fills_transformers_defaults_and_refuses_what_it_cannot_map():
    from transformers import GenerationConfig

    from infergen.interop.mappings import from_generation_config

    # transformers fills top_k=50 at generate() time when a sampling config leaves it unset
    assert from_generation_config(GenerationConfig(do_sample=True, temperature=0.8)).top_k == 50
    # the list form of sequence_bias is transformers' other spelling of the dict
    assert from_generation_config(GenerationConfig(sequence_bias=[[[5], 2.0]])).logit_bias == {5: 2.0}
    for field, value in [("sequence_bias", {(5, 6): 2.0}), ("bad_words_ids", [[5, 6]]), ("suppress_tokens", [5]),
                         ("begin_suppress_tokens", [5]), ("encoder_repetition_penalty", 1.3),
                         ("forced_eos_token_id", 2), ("penalty_alpha", 0.6)]:
        with pytest.raises(ValueError, match=field):
            from_generation_config(GenerationConfig(**{field: value}))
    # the call's settings and the special token ids are not sampling settings: left to the call, no error
    from_generation_config(GenerationConfig(max_new_tokens=5, eos_token_id=2, pad_token_id=0, num_beams=2))


def test_item5_closing_a_stream_stops_its_decoding_thread():
    """An abandoned stream left its decoder running (the interpreter then aborted at exit, status 134)."""
    import subprocess
    import sys

    code = ("import threading, infergen\n"
            "m, t = infergen.load_model('smollm2-135m', device='cpu')\n"
            "it = infergen.stream(m, t, 'Once upon a time', strategy='greedy', max_new_tokens=4000)\n"
            "next(it); it.close()\n"
            "assert threading.active_count() == 1, threading.enumerate()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_item6_stream_with_beam_and_several_return_sequences_streams_the_best(smollm):
    import infergen

    model, tok = smollm
    kw = dict(strategy="beam", num_beams=2, num_return_sequences=2, max_new_tokens=6)
    best = infergen.generate(model, tok, "The capital of France is", **kw)[0].text
    assert "".join(infergen.stream(model, tok, "The capital of France is", **kw)) == best


@pytest.mark.parametrize("name", ["temperature", "top_p"])
def test_item10_mappings_name_a_per_row_tensor_setting(name):
    from infergen.interop.mappings import to_generation_config, to_vllm_sampling_params

    value = torch.tensor([0.5, 0.7])
    for mapping in (to_generation_config, to_vllm_sampling_params):
        with pytest.raises(ValueError, match=name):
            mapping({name: value})


@pytest.mark.parametrize("name, value", [("max_new_tokens", -5), ("num_return_sequences", 0), ("num_beams", 0),
                                         ("min_new_tokens", -1), ("eos_token_id", -3), ("eos_token_id", [2, -3]),
                                         ("pad_token_id", 1.5), ("max_new_tokens", True)])
def test_item11_mappings_check_the_call_settings(name, value):
    from infergen.interop.mappings import to_generation_config, to_vllm_sampling_params

    for mapping in (to_generation_config, to_vllm_sampling_params):
        with pytest.raises((ValueError, TypeError), match=name):
            mapping({name: value})


# ---- Item 14, the decoders' other messages ---------------------------------------------------------------------
def test_item14_speculative_names_draft_model(tiny_native):
    """``draft_model="small"`` said "model must be ...", naming the target's parameter instead."""
    from infergen.decoding import speculative_decode

    with pytest.raises(TypeError, match="draft_model must be"):
        speculative_decode(tiny_native, torch.tensor([[5, 6]]), 4, draft_model="small")


def test_item14_batcher_names_the_request_and_the_models_context(tiny_native):
    """A request too long for the batcher named neither the request nor the model's context."""
    from infergen.serving import ContinuousBatcher, Request

    context = tiny_native.max_context
    with pytest.raises(ValueError, match=rf"request 'long'.*context: {context}"):
        ContinuousBatcher(tiny_native).run([Request([5] * 6, max_new_tokens=context, id="long")])


@pytest.mark.parametrize("front", ["generate", "stream"])
def test_item1_an_empty_stop_string_is_still_refused(smollm, front):
    """Reading stop strings from params= must not let stop='' through as 'no stop strings'."""
    model, tok = smollm
    with pytest.raises(ValueError, match="stop must be a non-empty string"):
        out = getattr(infergen, front)(model, tok, "Hello", stop="", max_new_tokens=2)
        list(out) if front == "stream" else out
