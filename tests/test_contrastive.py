"""Contrastive search: parity with a plain, cache-free reference of Su et al. (2022), greedy limits,
batching, EOS, and parameter checks.

The reference below is deliberately naive: at every step it re-runs the *whole* sequence through
transformers' own model (no KV cache, no batching tricks) and recomputes every hidden state, exactly as
the paper defines the method. infergen's implementation (cache repeated per candidate, winner's cache
kept, normalised-hidden buffer) must choose the same tokens. (transformers 5 removed contrastive search
from its core, so this reference stands in for ``generate(penalty_alpha=..., top_k=...)`` of 4.x.)
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import infergen
from infergen.decoding.contrastive import contrastive_search
from infergen.testing import pad_prompts


def reference_contrastive(hf_model, prompt: torch.Tensor, max_new_tokens: int, top_k: int, alpha: float):
    """Su et al. written plainly, with no cache: every step re-runs the whole sequence of each of the ``k``
    candidates through transformers' model. ``prompt`` [T] -> new ids [n]."""
    seq = prompt.view(1, -1)
    with torch.no_grad():
        out = hf_model(input_ids=seq, output_hidden_states=True, logits_to_keep=1)
        context = out.hidden_states[-1][0]  # [L, D]: every position so far, prompt included
        probs = out.logits[0, -1].float().softmax(-1)
        for _ in range(max_new_tokens):
            top_probs, top_ids = probs.topk(top_k)
            candidates = torch.cat([seq.expand(top_k, -1), top_ids[:, None]], 1)  # each candidate appended
            out = hf_model(input_ids=candidates, output_hidden_states=True, logits_to_keep=1)
            h = out.hidden_states[-1][:, -1]  # [k, D]: each candidate's own hidden state
            penalty = F.cosine_similarity(h[:, None, :].float(), context[None].float(), dim=-1).max(-1).values
            best = int(((1 - alpha) * top_probs - alpha * penalty).argmax())
            seq = candidates[best:best + 1]
            # The winner's full forward is also the next step's context and distribution.
            context, probs = out.hidden_states[-1][best], out.logits[best, -1].float().softmax(-1)
    return seq[0, prompt.numel():]


def random_prompts(lengths, vocab=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g) for n in lengths]


# -- parity with the reference ------------------------------------------------------------------------
def test_matches_reference_on_bundled_model(smollm, smollm_hf):
    model, tok = smollm
    texts = ["The future of AI is", "Once upon a time, in a small village by the sea,", "def fibonacci(n):"]
    prompts = [tok(t, return_tensors="pt").input_ids[0] for t in texts]
    ids, mask = pad_prompts(prompts, tok.pad_token_id or 0)
    out = contrastive_search(model, ids, 16, top_k=4, alpha=0.6, attention_mask=mask, eos_token_id=[])
    greedy = infergen.greedy_search(model, ids, 16, attention_mask=mask, eos_token_id=[])
    for i, p in enumerate(prompts):  # the batched, cached run equals the plain reference row by row
        ref = reference_contrastive(smollm_hf, p, 16, top_k=4, alpha=0.6)
        assert out[i, ids.shape[1]:].tolist() == ref.tolist(), f"prompt {i}: {tok.decode(ref)!r}"
    # The penalty changes the text: not greedy search in disguise (the document's bug).
    assert not torch.equal(out, greedy)


@pytest.mark.parametrize("which", ["native", "hf_adapter", "gpt2"])
def test_matches_reference_on_tiny_models(which, tiny_hf, tiny_native, tiny_gpt2):
    model, peer = {"native": (tiny_native, tiny_hf), "hf_adapter": (tiny_hf, tiny_hf),
                   "gpt2": (tiny_gpt2, tiny_gpt2.hf)}[which]
    for i, (p, k, alpha) in enumerate(zip(random_prompts([3, 7, 12], seed=1), [3, 5, 8], [0.5, 0.6, 0.8])):
        got = contrastive_search(model, p[None], 12, top_k=k, alpha=alpha, eos_token_id=[])
        ref = reference_contrastive(peer, p, 12, top_k=k, alpha=alpha)
        assert got[0, len(p):].tolist() == ref.tolist(), f"prompt {i}"


# -- limits that are greedy search ----------------------------------------------------------------------
@pytest.mark.parametrize("which", ["native", "gpt2"])
def test_alpha_zero_and_k_one_are_greedy(which, tiny_native, tiny_gpt2):
    model = {"native": tiny_native, "gpt2": tiny_gpt2}[which]
    ids, mask = pad_prompts(random_prompts([4, 9, 2], seed=2))
    greedy = infergen.greedy_search(model, ids, 20, attention_mask=mask, eos_token_id=[])
    assert torch.equal(contrastive_search(model, ids, 20, top_k=6, alpha=0.0, attention_mask=mask,
                                          eos_token_id=[]), greedy)
    assert torch.equal(contrastive_search(model, ids, 20, top_k=1, alpha=0.7, attention_mask=mask,
                                          eos_token_id=[]), greedy)
    # ... and a real penalty does change the choice on the same inputs (the test can fail).
    assert not torch.equal(contrastive_search(model, ids, 20, top_k=6, alpha=0.6, attention_mask=mask,
                                              eos_token_id=[]), greedy)


# -- batches, EOS, output ---------------------------------------------------------------------------------
def test_batched_equals_one_by_one(tiny_native):
    prompts = random_prompts([5, 1, 11, 3], seed=3)
    ids, mask = pad_prompts(prompts)
    singles = [contrastive_search(tiny_native, p[None], 15, top_k=4, alpha=0.6, eos_token_id=[])[0, len(p):]
               for p in prompts]
    batched = contrastive_search(tiny_native, ids, 15, top_k=4, alpha=0.6, attention_mask=mask, eos_token_id=[])
    for i, s in enumerate(singles):
        assert torch.equal(batched[i, ids.shape[1]:], s), f"row {i}"


def test_rows_stop_independently_at_eos(tiny_native):
    prompts = random_prompts([5, 1, 11, 3], seed=3)
    ids, mask = pad_prompts(prompts)
    free = contrastive_search(tiny_native, ids, 15, top_k=4, alpha=0.6, attention_mask=mask, eos_token_id=[])
    eos = int(free[1, ids.shape[1] + 4])  # row 1 produces this token at step 4
    out = contrastive_search(tiny_native, ids, 15, top_k=4, alpha=0.6, attention_mask=mask, eos_token_id=eos,
                             pad_token_id=0, return_dict=True)
    for i, p in enumerate(prompts):
        single = contrastive_search(tiny_native, p[None], 15, top_k=4, alpha=0.6, eos_token_id=eos,
                                    pad_token_id=0, return_dict=True)
        n = single.lengths[0]
        assert out.lengths[i] == n and out.finish_reason[i] == single.finish_reason[0]
        assert torch.equal(out.new_tokens[i, :n], single.new_tokens[0, :n])
        assert (out.new_tokens[i, n:] == 0).all()  # padding after EOS
    assert out.finish_reason[1] == "eos" and out.lengths[1] <= 5
    assert out.new_tokens[1, out.lengths[1] - 1] == eos


def test_return_dict_streamer_and_logprobs(tiny_native):
    ids, mask = pad_prompts(random_prompts([4, 8], seed=4))
    seen = []
    out = contrastive_search(tiny_native, ids, 10, top_k=3, alpha=0.5, attention_mask=mask, eos_token_id=[],
                             streamer=seen.append, return_dict=True)
    assert torch.equal(torch.stack(seen, 1), out.new_tokens)
    assert out.logprobs.shape == (2, 10) and (out.logprobs <= 0).all()
    pen = out.info["penalty"]
    assert pen.shape == (2, 10) and (pen.abs() <= 1 + 1e-5).all()
    # The logprob is the model's own log p(token | prefix): check the first step against a fresh forward.
    cache = tiny_native.new_cache(2, ids.shape[1])
    with torch.inference_mode():
        first = tiny_native(ids, cache, attention_mask=mask).logits[:, -1].log_softmax(-1)
    assert torch.allclose(out.logprobs[:, 0], first.gather(-1, out.new_tokens[:, :1]).squeeze(-1), atol=1e-5)


def test_front_door(smollm):
    model, tok = smollm
    res = infergen.generate(model, tok, "The capital of France is", strategy="contrastive", max_new_tokens=6,
                            top_k=4, alpha=0.6)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    direct = contrastive_search(model, ids, 6, top_k=4, alpha=0.6)
    assert res.token_ids == direct[0, ids.shape[1]:].tolist()[:len(res.token_ids)]


# -- bad parameters ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("top_k, err", [(0, ValueError), (-2, ValueError), (97, ValueError), (2.5, TypeError),
                                        ("4", TypeError), (None, TypeError)])
def test_bad_top_k(tiny_native, top_k, err):
    with pytest.raises(err, match="top_k"):
        contrastive_search(tiny_native, torch.tensor([[5, 6, 7]]), 3, top_k=top_k)


@pytest.mark.parametrize("alpha, err", [(-0.1, ValueError), (1.5, ValueError), (float("nan"), ValueError),
                                        ("0.5", TypeError), (None, TypeError)])
def test_bad_alpha(tiny_native, alpha, err):
    with pytest.raises(err, match="alpha"):
        contrastive_search(tiny_native, torch.tensor([[5, 6, 7]]), 3, alpha=alpha)


def test_bad_common_arguments(tiny_native):
    with pytest.raises(ValueError, match="max_new_tokens"):
        contrastive_search(tiny_native, torch.tensor([[5, 6, 7]]), -1)
    with pytest.raises(ValueError, match="attention_mask"):
        contrastive_search(tiny_native, torch.tensor([[5, 6, 7]]), 3, attention_mask=torch.ones(1, 2))
