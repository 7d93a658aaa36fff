"""Speculative decoding: exactness of the greedy variant, the sampling rule's distribution, cache rollback,
batches and EOS, and parameter checks."""
from __future__ import annotations

import copy

import pytest
import torch

import infergen
from infergen.decoding.base import prepare
from infergen.decoding.speculative import LayerSkipDraft, Speculator, speculative_decode, verify_drafts
from infergen.decoding.steps import Sampler
from infergen.models.hf import HFModel
from infergen.models.llama import LlamaModel
from infergen.params import SamplingParams
from infergen.processors import LogitsPipeline
from infergen.testing import pad_prompts


def random_prompts(lengths, vocab=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g) for n in lengths]


def perturbed(hf_model, scale, seed, keep_layers=None):
    """A draft that agrees with the target only partly: a noisy (optionally shallower) copy of it."""
    draft = copy.deepcopy(hf_model)
    if keep_layers is not None:
        inner = draft.model if hasattr(draft, "model") else draft.transformer
        name = "layers" if hasattr(inner, "layers") else "h"
        setattr(inner, name, getattr(inner, name)[:keep_layers])
        draft.config.num_hidden_layers = keep_layers
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return draft.eval()


@pytest.fixture(scope="module")
def drafts(tiny_hf, tiny_gpt2):
    small_hf = perturbed(tiny_hf, 0.05, seed=1, keep_layers=1)  # 1 layer instead of 2, noisy
    return {"small_hf": small_hf, "small_native": LlamaModel.from_hf(small_hf),
            "gpt2": HFModel(perturbed(tiny_gpt2.hf, 0.01, seed=2))}


# -- greedy: exactly greedy search ---------------------------------------------------------------------
def test_greedy_equals_greedy_search_on_bundled_model(smollm):
    model, tok = smollm
    texts = ["The future of AI is", "Once upon a time, in a small village by the sea,", "def fibonacci(n):"]
    ids, mask = pad_prompts([tok(t, return_tensors="pt").input_ids[0] for t in texts])
    greedy = infergen.greedy_search(model, ids, 32, attention_mask=mask, eos_token_id=[])
    # 8 of 30 layers: a poor draft (it is rejected most of the time), so the rollback path runs a lot.
    out = speculative_decode(model, ids, 32, draft_layers=8, num_draft_tokens=2, attention_mask=mask,
                             eos_token_id=[], return_dict=True)
    assert torch.equal(out.sequences, greedy)
    assert out.info["draft_layers"] == 8 and sum(out.info["drafted"]) > 0


@pytest.mark.parametrize("target_name, draft_name, gamma", [
    ("native", "small_native", 3), ("native", "small_native", 1), ("native", "small_hf", 5),
    ("hf", "small_hf", 4), ("native", "self", 2), ("native", "target", 4), ("gpt2", "gpt2", 3)])
def test_greedy_equals_greedy_search_on_tiny_models(target_name, draft_name, gamma, tiny_native, tiny_hf,
                                                    tiny_gpt2, drafts):
    target = {"native": tiny_native, "hf": tiny_hf, "gpt2": tiny_gpt2}[target_name]
    kw = {"draft_layers": 1} if draft_name == "self" else {
        "draft_model": tiny_native if draft_name == "target" else drafts[draft_name]}
    prompts = random_prompts([4, 9, 1, 6], seed=5)
    ids, mask = pad_prompts(prompts)
    greedy = infergen.greedy_search(target, ids, 24, attention_mask=mask, eos_token_id=[])
    out = speculative_decode(target, ids, 24, num_draft_tokens=gamma, attention_mask=mask, eos_token_id=[],
                             return_dict=True, **kw)
    assert torch.equal(out.sequences, greedy)
    for i, p in enumerate(prompts[:2]):  # one row at a time (B = 1) as well
        single = speculative_decode(target, p[None], 24, num_draft_tokens=gamma, eos_token_id=[], **kw)
        assert torch.equal(single[0, len(p):], greedy[i, ids.shape[1]:])
    rate = out.info["acceptance_rate"]
    if draft_name == "target":  # a draft identical to the target is always right
        assert rate == 1.0 and out.info["rounds"] == -(-23 // (gamma + 1))
    else:  # partial agreement: both the accept and the reject paths ran
        assert 0.0 < rate < 1.0, rate


def test_eos_and_stopping_match_greedy_search(tiny_native, drafts):
    prompts = random_prompts([4, 9, 1, 6], seed=5)
    ids, mask = pad_prompts(prompts)
    free = infergen.greedy_search(tiny_native, ids, 24, attention_mask=mask, eos_token_id=[])
    eos = int(free[0, ids.shape[1] + 6])
    greedy = infergen.greedy_search(tiny_native, ids, 24, attention_mask=mask, eos_token_id=eos, pad_token_id=0,
                                    return_dict=True)
    seen = []
    out = speculative_decode(tiny_native, ids, 24, draft_model=drafts["small_native"], attention_mask=mask,
                             eos_token_id=eos, pad_token_id=0, streamer=seen.append, return_dict=True)
    assert torch.equal(out.sequences, greedy.sequences)
    assert out.finish_reason == greedy.finish_reason and out.lengths == greedy.lengths
    assert out.finish_reason[0] == "eos" and out.lengths[0] <= 7
    assert torch.allclose(out.logprobs, greedy.logprobs, atol=1e-5)
    assert torch.equal(torch.stack(seen, 1), out.new_tokens)

    def stop_after_5(new_tokens):  # a stopping criterion sees each row's generated ids (-1 after its end)
        return (new_tokens >= 0).sum(-1) >= 5
    out = speculative_decode(tiny_native, ids, 24, draft_model=drafts["small_native"], attention_mask=mask,
                             eos_token_id=[], stopping=stop_after_5, return_dict=True)
    assert out.lengths == [5] * 4 and out.finish_reason == ["stop"] * 4
    assert torch.equal(out.new_tokens[:, :5], free[:, ids.shape[1]:ids.shape[1] + 5])


def test_layer_skip_draft_is_the_first_layers(tiny_native, tiny_hf):
    draft = LayerSkipDraft(tiny_native, 1)
    assert draft.embed.weight.data_ptr() == tiny_native.embed.weight.data_ptr()  # shared, not copied
    assert len(tiny_native.layers) == 2 and tiny_native.config.num_hidden_layers == 2  # target untouched
    truncated = copy.deepcopy(tiny_hf)
    truncated.model.layers = truncated.model.layers[:1]
    truncated.config.num_hidden_layers = 1
    ids = torch.tensor([[5, 9, 31, 7, 60]])
    with torch.inference_mode():
        got = draft(ids, draft.new_cache(1, 8), logits="all").logits
        want = truncated(ids).logits
    assert torch.allclose(got, want, atol=1e-5)
    assert draft.new_cache(1, 8).k.shape[0] == 1  # its own, shallower cache


# -- sampling: the target's distribution ---------------------------------------------------------------
def total_variation(a, b):
    return 0.5 * (a - b).abs().sum().item()


def test_verify_drafts_keeps_the_target_distribution():
    """Fixed p (3 positions) and q (2 positions): sample drafts from q, run the accept/reject rule many times
    at once and compare each emitted position's empirical distribution with p."""
    N = 200_000
    p = torch.tensor([[0.50, 0.20, 0.15, 0.10, 0.05, 0.00],
                      [0.05, 0.05, 0.10, 0.20, 0.30, 0.30],
                      [0.30, 0.10, 0.10, 0.10, 0.10, 0.30]])
    q = torch.tensor([[0.10, 0.10, 0.20, 0.20, 0.20, 0.20],
                      [0.40, 0.30, 0.10, 0.10, 0.05, 0.05]])
    assert total_variation(p[0], q[0]) > 0.3 and total_variation(p[1], q[1]) > 0.3  # q alone would fail
    g = torch.Generator().manual_seed(0)
    drafts = torch.stack([torch.multinomial(q[i], N, replacement=True, generator=g) for i in range(2)], 1)
    n, nxt = verify_drafts(p.expand(N, 3, 6), q.expand(N, 2, 6), drafts, generator=g)
    first = torch.where(n >= 1, drafts[:, 0], nxt)
    emp0 = torch.bincount(first, minlength=6).float() / N
    assert total_variation(emp0, p[0]) < 0.01
    assert (emp0[5] == 0).all()  # a token the target excludes is never emitted, though the draft proposes it
    # P(accept the first draft) = sum_x min(p, q) = 1 - TV(p, q)
    assert abs((n >= 1).float().mean().item() - torch.minimum(p[0], q[0]).sum().item()) < 0.01
    later = n >= 1  # rows whose second emitted token came from position 1
    second = torch.where(n[later] >= 2, drafts[later, 1], nxt[later])
    assert total_variation(torch.bincount(second, minlength=6).float() / later.sum(), p[1]) < 0.015
    bonus = nxt[n == 2]  # all accepted: the bonus token comes from p at position 2
    assert total_variation(torch.bincount(bonus, minlength=6).float() / bonus.numel(), p[2]) < 0.03


def test_sampling_matches_target_distribution_end_to_end(tiny_native, drafts):
    """The first two generated tokens of many rows (one batch, one seed) follow the target's processed
    joint distribution, computed exactly from the target alone. (The first token comes from the target's
    prefill, the second from a draft-and-verify round.)"""
    draft = drafts["small_native"]
    params = dict(temperature=0.3, top_k=4)
    pipe = LogitsPipeline.from_params(**params)
    prompt = torch.tensor([[7, 21, 40, 13, 55]])

    def joint(model):
        out = torch.zeros(96, 96)
        with torch.inference_mode():
            p1 = pipe(model(prompt, model.new_cache(1, 8)).logits[:, -1]).softmax(-1)[0]
            for a in p1.nonzero().flatten().tolist():
                seq = torch.cat([prompt, torch.tensor([[a]])], 1)
                out[a] = p1[a] * pipe(model(seq, model.new_cache(1, 8)).logits[:, -1]).softmax(-1)[0]
        return out

    target_joint, draft_joint = joint(tiny_native), joint(draft)
    assert total_variation(target_joint, draft_joint) > 0.2  # the draft alone is clearly different
    N = 6000
    out = speculative_decode(tiny_native, prompt.expand(N, -1), 3, draft_model=draft, num_draft_tokens=3,
                             eos_token_id=[], seed=0, return_dict=True, **params)
    assert 0.05 < out.info["acceptance_rate"] < 0.95
    new = out.new_tokens
    emp = torch.zeros(96 * 96).index_add_(0, new[:, 0] * 96 + new[:, 1], torch.ones(N)).view(96, 96) / N
    assert total_variation(emp, target_joint) < 0.05


def test_seed_reproducible_and_batched_sampling(tiny_native, drafts):
    ids, mask = pad_prompts(random_prompts([3, 8, 5], seed=6))
    kw = dict(draft_model=drafts["small_native"], temperature=0.8, top_p=0.9, attention_mask=mask,
              eos_token_id=[])
    a = speculative_decode(tiny_native, ids, 16, seed=3, **kw)
    b = speculative_decode(tiny_native, ids, 16, generator=torch.Generator().manual_seed(3), **kw)
    c = speculative_decode(tiny_native, ids, 16, seed=4, **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (3, ids.shape[1] + 16)


# -- caches ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("greedy", [True, False])
def test_cache_rollback_matches_fresh_forward(tiny_native, drafts, greedy):
    """After rounds with rejections, both caches equal what a fresh forward of the committed text gives."""
    target, draft = tiny_native, drafts["small_native"]
    ids, mask = pad_prompts(random_prompts([6, 2], seed=7))
    setup, _ = prepare(target, ids, 30, attention_mask=mask, eos_token_id=[], allocate=False)
    sampler = Sampler(SamplingParams(temperature=0.0 if greedy else 1.0), generator=torch.Generator().manual_seed(0))
    spec = Speculator(target, draft, setup, sampler, gamma=4)
    committed = []
    active = torch.ones(2, dtype=torch.bool)
    with torch.inference_mode():
        committed.append(spec.start()[0])
        for _ in range(5):
            committed.append(spec.step(30, active)[0])
        seq = torch.cat([ids] + committed, 1)
        full_mask = torch.cat([mask, torch.ones(2, seq.shape[1] - ids.shape[1], dtype=torch.long)], 1)
        assert spec.target_cache.length == seq.shape[1] - 1  # all but the newest token
        assert spec.draft_cache.length + spec.pending.shape[1] == seq.shape[1]
        assert spec.accepted.sum() < spec.drafted.sum()  # there were rejections to roll back
        for model, cache, feed in [(target, spec.target_cache, spec.pending[:, -1:]),
                                   (draft, spec.draft_cache, spec.pending)]:
            fresh = model(seq, model.new_cache(2, seq.shape[1]), attention_mask=full_mask).logits[:, -1]
            resumed = model(feed, cache.copy()).logits[:, -1]
            assert torch.allclose(resumed, fresh, atol=1e-5)


# -- front door and parameters ------------------------------------------------------------------------
def test_front_door(smollm):
    model, tok = smollm
    res = infergen.generate(model, tok, "The capital of France is", strategy="speculative", max_new_tokens=8,
                            draft_layers=20)
    greedy = infergen.generate(model, tok, "The capital of France is", strategy="greedy", max_new_tokens=8)
    assert res.token_ids == greedy.token_ids and res.info["draft_layers"] == 20


@pytest.mark.parametrize("value, err", [(0, ValueError), (-1, ValueError), (2.5, TypeError), (None, TypeError)])
def test_bad_num_draft_tokens(tiny_native, value, err):
    with pytest.raises(err, match="num_draft_tokens"):
        speculative_decode(tiny_native, torch.tensor([[5, 6]]), 4, draft_layers=1, num_draft_tokens=value)


@pytest.mark.parametrize("value, err", [(0, ValueError), (2, ValueError), (5, ValueError), (1.0, TypeError)])
def test_bad_draft_layers(tiny_native, value, err):  # tiny_native has 2 layers: valid range [1, 1]
    with pytest.raises(err, match="draft_layers"):
        speculative_decode(tiny_native, torch.tensor([[5, 6]]), 4, draft_layers=value)
    with pytest.raises(err, match="draft_layers"):
        LayerSkipDraft(tiny_native, value)


def test_bad_draft_model(tiny_native, tiny_hf, drafts):
    from transformers import LlamaConfig, LlamaForCausalLM
    other = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1)).eval()
    with pytest.raises(ValueError, match="vocab"):
        speculative_decode(tiny_native, torch.tensor([[5, 6]]), 4, draft_model=other)
    with pytest.raises(ValueError, match="draft_model"):  # a transformers target has no self-draft
        speculative_decode(tiny_hf, torch.tensor([[5, 6]]), 4)
    with pytest.raises(ValueError, match="not both"):
        speculative_decode(tiny_native, torch.tensor([[5, 6]]), 4, draft_model=drafts["small_native"],
                           draft_layers=1)
    with pytest.raises(TypeError, match="model"):
        speculative_decode(tiny_native, torch.tensor([[5, 6]]), 4, draft_model="gpt2")


@pytest.mark.parametrize("name, value", [("temperature", -1.0), ("top_p", 0.0), ("top_k", -3)])
def test_bad_sampling_parameters(tiny_native, name, value):
    with pytest.raises(ValueError, match=name):
        speculative_decode(tiny_native, torch.tensor([[5, 6]]), 4, draft_layers=1, **{name: value})


def test_zero_new_tokens(tiny_native):
    ids = torch.tensor([[5, 6, 7]])
    assert torch.equal(speculative_decode(tiny_native, ids, 0, draft_layers=1), ids)


def test_default_self_draft(tiny_native):
    ids = torch.tensor([[5, 6, 7]])
    out = speculative_decode(tiny_native, ids, 6, return_dict=True)  # no draft given: the target's own layers
    assert out.info["draft_layers"] == 1
    assert torch.equal(out.sequences, infergen.greedy_search(tiny_native, ids, 6))
