"""Continuous batching and the peer-settings mappings (infergen.serving), on the tiny models.

The central property: a request served by the continuous batcher -- admitted into a running batch,
sharing steps with other requests, its slot reused, the cache compacted under it -- decodes exactly
the tokens it decodes alone. Total time of this file: about 5 s.
"""
from __future__ import annotations

import pytest
import torch

from infergen.decoding.sampling import generate_autoregressive, greedy_search
from infergen.interop import to_generation_config, to_vllm_sampling_params
from infergen.bench.serving import compare_batching, mixed_workload, static_batching
from infergen.serving import ContinuousBatcher, Request


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (tests/conftest.py)


def _requests(seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = [3, 9, 5, 12, 4, 7, 6]
    budgets = [6, 2, 11, 4, 9, 3, 7]
    return [Request(prompt=torch.randint(3, 96, (n,), generator=g).tolist(), max_new_tokens=m, id=i)
            for i, (n, m) in enumerate(zip(lengths, budgets))]


def _alone(model, req, eos):
    ids = torch.tensor([req.prompt])
    out = greedy_search(model, ids, req.max_new_tokens, eos_token_id=eos, return_dict=True)
    return out.new_tokens[0, :out.lengths[0]].tolist()


@pytest.mark.parametrize("max_len", [None, 20])  # 20: the shared columns fill up and get compacted
def test_continuous_batching_equals_each_request_alone(tiny_native, max_len):
    reqs = _requests()
    batcher = ContinuousBatcher(tiny_native, max_batch=3, max_len=max_len, eos_token_id=[])
    out = batcher.run(reqs)
    assert out is not reqs and [r.id for r in out] == list(range(7))
    for r in out:
        assert r.tokens == _alone(tiny_native, r, []), r.id
        assert r.finish_reason == "length" and len(r.tokens) == r.max_new_tokens
        assert len(r.logprobs) == len(r.tokens) and all(lp <= 0 for lp in r.logprobs)
    s = batcher.stats
    assert s["prefills"] == 7 and s["tokens"] == sum(r.max_new_tokens for r in reqs)
    assert 0 < s["occupancy"] <= 1
    if max_len == 20:
        assert s["dropped_columns"] > 0  # compaction really happened
    # logprobs are the model's: compare with the alone run's
    alone = greedy_search(tiny_native, torch.tensor([out[2].prompt]), out[2].max_new_tokens, eos_token_id=[],
                          return_dict=True)
    assert torch.allclose(torch.tensor(out[2].logprobs), alone.logprobs[0], atol=1e-5)


def test_rows_stop_at_their_own_eos_and_slots_are_reused(tiny_native):
    reqs = _requests(1)
    eos = _alone(tiny_native, reqs[0], [])[2]  # the third token request 0 produces becomes EOS
    batcher = ContinuousBatcher(tiny_native, max_batch=2, eos_token_id=eos)
    out = batcher.run(reqs)
    for r in out:
        expected = _alone(tiny_native, r, [eos])
        assert r.tokens == expected, r.id
        assert r.finish_reason == ("eos" if expected[-1] == eos else "length")
    assert out[0].finish_reason == "eos" and len(out[0].tokens) <= 3
    assert batcher.stats["prefills"] == 7  # 7 requests through 2 slots: slots were freed and reused


def test_arrivals_are_respected(tiny_native):
    reqs = _requests()[:4]
    for r, t in zip(reqs, [0, 0, 5, 40]):
        r.arrival = t
    out = ContinuousBatcher(tiny_native, max_batch=4, eos_token_id=[]).run(reqs)
    for r in out:
        assert r.admitted_step >= r.arrival
        assert r.tokens == _alone(tiny_native, r, [])
    assert out[3].admitted_step == 40  # the batcher idled until the last request arrived


def test_seeded_sampling_does_not_depend_on_the_batch(tiny_native):
    reqs = _requests()
    for r in reqs:
        r.seed = 100 + r.id
    params = dict(temperature=0.9, top_k=20, eos_token_id=[])
    together = [r.tokens for r in ContinuousBatcher(tiny_native, max_batch=4, **params).run(reqs)]
    reqs2 = _requests()
    for r in reqs2:
        r.seed = 100 + r.id
    apart = [r.tokens for r in ContinuousBatcher(tiny_native, max_batch=1, **params).run(reqs2)]
    assert together == apart
    greedy = [r.tokens for r in ContinuousBatcher(tiny_native, max_batch=4, eos_token_id=[]).run(_requests())]
    assert together != greedy  # it really sampled


def test_penalties_use_each_requests_own_history(tiny_native):
    reqs = _requests()
    out = ContinuousBatcher(tiny_native, max_batch=3, eos_token_id=[], repetition_penalty=1.5).run(reqs)
    for r in out:
        ids = torch.tensor([r.prompt])
        alone = generate_autoregressive(tiny_native, ids, r.max_new_tokens, temperature=0, eos_token_id=[],
                                        repetition_penalty=1.5)
        assert r.tokens == alone[0, len(r.prompt):].tolist(), r.id


def test_static_batching_and_comparison(tiny_native):
    reqs = mixed_workload(6, prompt_lengths=(2, 8), new_tokens=(2, 12), vocab=96, seed=3)
    assert len({r.max_new_tokens for r in reqs}) > 1 and all(2 <= r.max_new_tokens <= 12 for r in reqs)
    static = static_batching(tiny_native, [Request(r.prompt, r.max_new_tokens) for r in reqs], 3, eos_token_id=[])
    for r in static:
        assert r.tokens == _alone(tiny_native, r, [])
    res = compare_batching(tiny_native, reqs, batch_size=3)
    assert res["same_tokens"] is True and res["tokens"] == sum(r.max_new_tokens for r in reqs)
    assert res["speedup"] > 0 and res["continuous"]["occupancy"] <= 1


def test_bad_arguments(tiny_native, tiny_gpt2):
    with pytest.raises(ValueError, match="max_batch"):
        ContinuousBatcher(tiny_native, max_batch=0)
    # a cache without per-row slots is refused before any work (the RowCache protocol names write_row)
    no_rows = type("NoRows", (), {"new_cache": lambda self, b, n: object(), "config": tiny_native.config,
                                  "max_context": tiny_native.max_context, "device": tiny_native.device,
                                  "forward": None, "__call__": lambda self, *a, **k: None})()
    with pytest.raises(ValueError, match="write_row"):
        ContinuousBatcher(no_rows).run([Request([5, 6], max_new_tokens=2)])
    with pytest.raises(ValueError, match="temperature"):
        ContinuousBatcher(tiny_native, temperature=-1)
    with pytest.raises(ValueError, match="max_len"):
        ContinuousBatcher(tiny_native, max_len=8).run([Request([5] * 6, max_new_tokens=5)])
    with pytest.raises(ValueError, match="at least one"):
        Request([])
    with pytest.raises(ValueError, match="max_new_tokens"):
        Request([5], max_new_tokens=0)
    with pytest.raises(ValueError, match="arrival"):
        Request([5], arrival=-1)
    with pytest.raises(ValueError, match="token ids"):
        ContinuousBatcher(tiny_native).run([Request([500])])
    with pytest.raises(TypeError, match="Request"):
        ContinuousBatcher(tiny_native).run([[5, 6]])
    assert ContinuousBatcher(tiny_native).run([]) == []


def test_cache_row_operations(tiny_native):
    """write_row right-aligns a request; compact squeezes padding out without changing any row."""
    cache = tiny_native.new_cache(2, 12)
    cache.append_mask(torch.tensor([[1, 1, 0, 0, 1, 1]], dtype=torch.bool).repeat(2, 1), 6)  # gaps
    cache.k[:, :, :, :6] = torch.arange(6.0).view(1, 1, 1, 6, 1)
    alone = tiny_native.new_cache(1, 4)
    alone.append_mask(None, 3)
    alone.k[:, :, :, :3] = 10 + torch.arange(3.0).view(1, 1, 3, 1)
    cache.write_row(1, alone)
    assert cache.mask[1, :6].tolist() == [False, False, False, True, True, True]
    assert cache.k[0, 1, 0, 3:6, 0].tolist() == [10.0, 11.0, 12.0]
    dropped = cache.compact()
    assert dropped == 2 and cache.length == 4  # row 0 has 4 real tokens, row 1 has 3
    assert cache.mask[0, :4].all() and cache.mask[1, :4].tolist() == [False, True, True, True]
    assert cache.k[0, 0, 0, :4, 0].tolist() == [0.0, 1.0, 4.0, 5.0]  # real columns kept, in order
    assert cache.k[0, 1, 0, 1:4, 0].tolist() == [10.0, 11.0, 12.0]
    cache.clear_row(0)
    assert not cache.mask[0].any() and cache.has_padding
    with pytest.raises(ValueError, match="append padding"):
        tiny_native.new_cache(1, 8).write_row(0, alone)


# -- the peers' settings ---------------------------------------------------------------------------
def test_generation_config_decodes_like_infergen(tiny_hf, tiny_native):
    ids = torch.tensor([[5, 17, 33, 8]])
    for params in ({"temperature": 0, "max_new_tokens": 8},
                   {"temperature": 0, "max_new_tokens": 8, "repetition_penalty": 1.3, "no_repeat_ngram_size": 2}):
        cfg = to_generation_config({**params, "pad_token_id": 0})
        ref = tiny_hf.generate(ids, generation_config=cfg, attention_mask=torch.ones_like(ids))
        n = params.pop("max_new_tokens")
        ours = generate_autoregressive(tiny_native, ids, n, **params)
        assert torch.equal(ours, ref), params
    # Sampling with a seed: both draw from the same global RNG stream, one draw per step.
    params = {"temperature": 0.7, "top_k": 20, "top_p": 0.9, "max_new_tokens": 10}
    cfg = to_generation_config({**params, "pad_token_id": 0})
    assert cfg.do_sample and cfg.top_k == 20 and cfg.top_p == 0.9 and cfg.temperature == 0.7
    torch.manual_seed(123)
    ref = tiny_hf.generate(ids, generation_config=cfg, attention_mask=torch.ones_like(ids))
    torch.manual_seed(123)
    ours = generate_autoregressive(tiny_native, ids, 10, temperature=0.7, top_k=20, top_p=0.9)
    assert torch.equal(ours, ref)


def test_generation_config_mapping_and_refusals():
    cfg = to_generation_config({"temperature": 0.5, "min_p": 0.1, "typical_p": 0.9, "epsilon": 3e-4,
                                "eta": 1e-3, "logit_bias": {7: -2.0}, "eos_token_id": [2, 3], "stop": "\n\n"})
    assert (cfg.min_p, cfg.typical_p, cfg.epsilon_cutoff, cfg.eta_cutoff) == (0.1, 0.9, 3e-4, 1e-3)
    assert cfg.sequence_bias == {(7,): -2.0} and cfg.eos_token_id == [2, 3] and cfg.stop_strings == ["\n\n"]
    assert to_generation_config({"temperature": 0}).do_sample is False
    assert to_generation_config({"num_beams": 4, "temperature": 0, "length_penalty": 0.8}).num_beams == 4
    with pytest.raises(ValueError, match="frequency_penalty"):
        to_generation_config({"frequency_penalty": 0.5})
    with pytest.raises(ValueError, match="unknown"):
        to_generation_config({"temprature": 0.5})
    with pytest.raises(ValueError, match="top_p"):
        to_generation_config({"top_p": 1.5})
    with pytest.raises(TypeError):
        to_generation_config("greedy")


def test_vllm_sampling_params_mapping():
    out = to_vllm_sampling_params({"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05,
                                   "repetition_penalty": 1.1, "frequency_penalty": 0.5, "presence_penalty": -0.5,
                                   "max_new_tokens": 64, "seed": 7, "eos_token_id": 2, "stop": ["###"],
                                   "logit_bias": {5: 1.5}, "num_return_sequences": 2})
    assert out == {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "repetition_penalty": 1.1,
                   "frequency_penalty": 0.5, "presence_penalty": -0.5, "n": 2, "max_tokens": 64, "seed": 7,
                   "stop_token_ids": [2], "stop": ["###"], "logit_bias": {5: 1.5}}
    default = to_vllm_sampling_params({})
    assert default["top_k"] == 0 and default["temperature"] == 1.0 and "max_tokens" not in default
    assert to_vllm_sampling_params({"temperature": 0})["temperature"] == 0.0  # greedy in vLLM too
    for bad in ({"typical_p": 0.9}, {"epsilon": 1e-3}, {"eta": 1e-3}, {"no_repeat_ngram_size": 3}, {"num_beams": 4}):
        with pytest.raises(ValueError):
            to_vllm_sampling_params(bad)
    with pytest.raises(ValueError, match="frequency_penalty"):
        to_vllm_sampling_params({"frequency_penalty": 3.0})
