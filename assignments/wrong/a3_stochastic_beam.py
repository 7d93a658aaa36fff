"""A known-WRONG solution of assignment 3, used to prove that the grading can fail.

The bug: a beam that emitted EOS is not set aside -- it keeps being extended like any other beam, so
the text continues after the end-of-sequence token. (The Gumbel-top-k part is right.)
"""
import math

import torch

from infergen._validation import check_number
from infergen.decoding.base import GenerationOutput, make_generator, prepare


def truncated_gumbel(parent, perturbed):
    z = perturbed.amax(-1, keepdim=True)
    x = (perturbed - z).clamp(max=0)
    log1mexp = torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))
    v = parent - perturbed + log1mexp
    return parent - v.clamp(min=0) - torch.log1p(torch.exp(-v.abs()))


def stochastic_beam_search(model, input_ids, max_new_tokens=100, num_beams=4, num_return_sequences=1,
                           temperature=1.0, *, attention_mask=None, eos_token_id=None, pad_token_id=None,
                           seed=None, generator=None, streamer=None, stopping=None, return_dict=False):
    check_number("num_beams", num_beams, low=1, integer=True)
    check_number("num_return_sequences", num_return_sequences, low=1, high=num_beams, integer=True)
    check_number("temperature", temperature, low=0, high=math.inf, low_open=True, high_open=True)
    setup, cache = prepare(model, input_ids, max_new_tokens, attention_mask=attention_mask,
                           eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    model, k, r = setup.model, num_beams, num_return_sequences
    B, T = setup.input_ids.shape
    V, n, dev = model.config.vocab_size, setup.max_new_tokens, setup.input_ids.device
    gen = make_generator(seed, generator, device=model.device)
    tokens = torch.zeros(B * k, 0, dtype=torch.long, device=dev)
    logprobs = torch.zeros(B * k, 0, device=dev)
    phi = torch.zeros(B * k, device=dev)
    G = torch.full((B, k), -1e30, device=dev)
    G[:, 0] = 0.0
    G = G.flatten()
    with torch.inference_mode():
        if n > 0:
            logits = model(setup.input_ids, cache, attention_mask=setup.attention_mask).logits[:, -1].float()
            logits = logits.repeat_interleave(k, 0)
            cache.repeat(k)
        for step in range(n):
            model_logp = torch.log_softmax(logits, -1)
            child_phi = phi[:, None] + torch.log_softmax(logits / temperature, -1)
            perturbed = child_phi - torch.log(torch.empty_like(child_phi).exponential_(generator=gen))
            child_G = truncated_gumbel(G[:, None], perturbed)
            top_G, idx = child_G.view(B, k * V).topk(k, -1)
            parent = (idx // V + torch.arange(B, device=dev)[:, None] * k).flatten()
            tok = (idx % V).flatten()
            tokens = torch.cat([tokens[parent], tok[:, None]], 1)       # BUG: no EOS bookkeeping at all
            logprobs = torch.cat([logprobs[parent], model_logp[parent, tok][:, None]], 1)
            phi, G = child_phi[parent, tok], top_G.flatten()
            cache.reorder(parent)
            if step < n - 1:
                logits = model(tok[:, None], cache).logits[:, -1].float()
    order = (G.view(B, k).topk(r, -1).indices + torch.arange(B, device=dev)[:, None] * k).flatten()
    sequences = torch.cat([setup.input_ids.repeat_interleave(r, 0), tokens[order]], 1)
    if not return_dict:
        return sequences
    return GenerationOutput(sequences=sequences, logprobs=logprobs[order], prompt_length=T,
                            finish_reason=["length"] * (B * r), lengths=[n] * (B * r), scores=phi[order])
