"""Reference solution of assignment 3: stochastic beam search (Kool, van Hoof & Welling, 2019).

Teachers: this folder (``assignments/solutions``) is the answer key. Delete it before handing out.
"""
from __future__ import annotations

import math

import torch

from infergen._validation import check_number
from infergen.decoding.base import GenerationOutput, make_generator, prepare
from infergen.decoding.steps import emit, end_stream

_REASONS = ("length", "eos", "stop")


def gumbel_like(x: torch.Tensor, generator=None) -> torch.Tensor:
    """Standard Gumbel noise ``-log(E)``, ``E ~ Exponential(1)``, with the shape/device/dtype of ``x``."""
    e = torch.empty_like(x).exponential_(generator=generator)
    return -torch.log(e)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, accurate near 0 and for very negative ``x``."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def truncated_gumbel(parent: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
    """Condition children's Gumbels on their maximum being the parent's value.

    ``parent`` [R, 1]: the parent's perturbed log-probability ``G``; ``perturbed`` [R, V]: the children's
    independent ``phi + Gumbel``. Returns ``-log(exp(-G) - exp(-Z) + exp(-G'))`` with ``Z`` the row max,
    in the stable form of Kool et al. (appendix B): the best child gets exactly ``G``, all others less.
    """
    z = perturbed.amax(-1, keepdim=True)
    v = parent - perturbed + log1mexp((perturbed - z).clamp(max=0))
    return parent - v.clamp(min=0) - torch.log1p(torch.exp(-v.abs()))


def stochastic_beam_search(model, input_ids, max_new_tokens=100, num_beams=4, num_return_sequences=1,
                           temperature=1.0, *, attention_mask=None, eos_token_id=None, pad_token_id=None,
                           seed=None, generator=None, streamer=None, stopping=None, return_dict=False):
    """Sample ``num_beams`` distinct sequences *without replacement* per prompt (Gumbel-top-k over the tree)
    and return the ``num_return_sequences`` with the largest perturbed log-probability ``G``."""
    check_number("num_beams", num_beams, low=1, integer=True)
    check_number("num_return_sequences", num_return_sequences, low=1, high=num_beams, integer=True)
    check_number("temperature", temperature, low=0, high=math.inf, low_open=True, high_open=True)
    if stopping is not None and not callable(stopping):
        raise TypeError(f"stopping must be a callable new_tokens -> BoolTensor, got {type(stopping).__name__}")
    setup, cache = prepare(model, input_ids, max_new_tokens, attention_mask=attention_mask,
                           eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    model, k, r = setup.model, int(num_beams), int(num_return_sequences)
    B, T = setup.input_ids.shape
    R, V, n = B * k, model.config.vocab_size, setup.max_new_tokens
    dev, pad = setup.input_ids.device, setup.pad_token_id
    gen = make_generator(seed, generator, device=model.device)
    neg_inf = float("-inf")

    tokens = torch.full((R, n), pad, dtype=torch.long, device=dev)
    logprobs = torch.zeros(R, n, device=dev)
    phi = torch.zeros(R, device=dev)                                   # sum of tempered log-probs
    G = torch.full((B, k), neg_inf, device=dev)
    G[:, 0] = 0.0                                                      # one live beam at the start
    G = G.flatten()
    finished = torch.zeros(R, dtype=torch.bool, device=dev)
    reason = torch.zeros(R, dtype=torch.long, device=dev)
    length = torch.zeros(R, dtype=torch.long, device=dev)
    row_done = torch.zeros(B, dtype=torch.bool, device=dev)
    steps = 0
    with torch.inference_mode():
        if n > 0:
            logits = model(setup.input_ids, cache, attention_mask=setup.attention_mask).logits[:, -1].float()
            logits = logits.repeat_interleave(k, 0)
            cache.repeat(k)
        for step in range(n):
            steps += 1
            model_logp = torch.log_softmax(logits, -1)                 # for the reported logprobs
            logp = torch.log_softmax(logits / temperature, -1)
            live = torch.isfinite(G) & ~finished & ~row_done.repeat_interleave(k)
            child_phi = phi[:, None] + logp                            # [R, V]
            perturbed = child_phi + gumbel_like(child_phi, gen)
            child_G = truncated_gumbel(G[:, None].clamp(min=-1e30), perturbed)
            child_G = child_G.masked_fill(~live[:, None], neg_inf)
            stay = torch.where(finished | row_done.repeat_interleave(k), G, torch.full_like(G, neg_inf))
            cand = torch.cat([child_G, stay[:, None]], 1).view(B, k * (V + 1))
            top_G, top_idx = cand.topk(k, dim=-1)                      # [B, k]
            parent = (top_idx // (V + 1)) + torch.arange(B, device=dev)[:, None] * k
            parent, token, top_G = parent.flatten(), (top_idx % (V + 1)).flatten(), top_G.flatten()
            is_child = token < V
            tokens, logprobs = tokens[parent], logprobs[parent]
            phi, finished, reason, length = phi[parent], finished[parent], reason[parent], length[parent]
            safe_tok = token.clamp(max=V - 1)
            tokens[:, step] = torch.where(is_child, safe_tok, torch.full_like(safe_tok, pad))
            logprobs[:, step] = torch.where(is_child, model_logp[parent, safe_tok], torch.zeros_like(phi))
            phi = torch.where(is_child, child_phi[parent, safe_tok], phi)
            G = top_G
            ended = is_child & torch.isin(safe_tok, setup.eos)
            reason = torch.where(ended, 1, reason)
            if stopping is not None:
                history = tokens[:, :step + 1].masked_fill(~is_child[:, None] & (tokens[:, :step + 1] == pad), -1)
                stop = stopping(history).to(dev) & is_child & ~ended
                reason = torch.where(stop, 2, reason)
                ended = ended | stop
            length = torch.where(is_child, step + 1, length)
            finished = finished | ended | ~torch.isfinite(G)
            cache.reorder(parent)
            # A row is decided once its r best beams (by G) are finished: G only decreases down the tree.
            best = G.view(B, k).topk(r, dim=-1).indices
            row_done = finished.view(B, k).gather(1, best).all(-1)
            if bool(row_done.all()) or step == n - 1:
                break
            feed = torch.where(finished, torch.full_like(safe_tok, pad), safe_tok)
            logits = model(feed[:, None], cache).logits[:, -1].float()

    order = G.view(B, k).topk(r, dim=-1).indices + torch.arange(B, device=dev)[:, None] * k
    order = order.flatten()
    lengths = length[order]
    width = int(lengths.max()) if lengths.numel() else 0
    new = tokens[order, :width]
    sequences = torch.cat([setup.input_ids.repeat_interleave(r, 0), new], 1)
    for col in range(width):
        emit(streamer, new[:, col])
    end_stream(streamer)
    if not return_dict:
        return sequences
    return GenerationOutput(sequences=sequences, logprobs=logprobs[order, :width], prompt_length=T,
                            finish_reason=[_REASONS[int(x)] for x in reason[order].tolist()],
                            lengths=[int(x) for x in lengths.tolist()], scores=phi[order],
                            info={"gumbel_scores": G[order], "num_beams": k, "steps": steps})
