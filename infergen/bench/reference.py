"""Reference loops the benchmark compares with (no KV cache, no cache reuse), the two phases of a
generation timed apart, and transformers' own model on the same weights."""
from __future__ import annotations

import time

import torch

from .records import PhaseTimes
from .timing import synchronize


def naive_greedy(model, input_ids, max_new_tokens, attention_mask=None):
    """Greedy decoding **without a KV cache**: every step re-runs the whole sequence (the document's loop).

    Step ``i`` runs a forward pass over ``T + i`` tokens to obtain one new token, so ``n`` new tokens
    cost ``sum_i (T + i) = O(n^2)`` token-passes instead of ``T + n`` with a cache. No EOS handling:
    it is the benchmark's reference and runs exactly ``max_new_tokens`` steps. Returns [B, T + n].
    """
    from ..models.hf import as_model

    model = as_model(model)
    ids = input_ids.to(model.device)
    mask = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.to(ids.device).bool()
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            cache = model.new_cache(ids.shape[0], ids.shape[1])  # a fresh, throw-away cache each step
            logits = model(ids, cache, attention_mask=mask).logits[:, -1]
            nxt = logits.argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
            mask = torch.cat([mask, torch.ones_like(nxt, dtype=torch.bool)], 1)
    return ids


def naive_contrastive(model, input_ids, max_new_tokens, top_k=5, alpha=0.6):
    """Contrastive search **without cache reuse**, one prompt ([1, T]): the reference for its speed.

    Each step re-runs the whole sequence for the context's hidden states and next-token distribution,
    then re-runs ``sequence + v`` for each of the ``top_k`` candidates ``v`` to get ``h_v``:
    ``top_k + 1`` full forward passes per token, against one ``top_k``-row single-token pass with the
    cache (``infergen.decoding.contrastive``). Same scoring: ``(1 - alpha) p(v) - alpha max_j cos(h_v, h_j)``,
    ties to the more probable candidate. No EOS handling (runs ``max_new_tokens`` steps).
    """
    import torch.nn.functional as F

    from ..models.hf import as_model

    model = as_model(model)
    ids = input_ids.to(model.device)
    if ids.shape[0] != 1:
        raise ValueError(f"naive_contrastive takes one prompt ([1, T]), got batch {ids.shape[0]}")

    def run(seq):
        out = model(seq, model.new_cache(1, seq.shape[1]), hidden=True)
        return out.logits[0, -1].float(), F.normalize(out.hidden[0].float(), dim=-1)

    with torch.inference_mode():
        for _ in range(max_new_tokens):
            logits, context = run(ids)
            probs, cands = logits.softmax(-1).topk(top_k)
            h = torch.stack([run(torch.cat([ids, c.view(1, 1)], 1))[1][-1] for c in cands])  # [k, D]
            penalty = (h @ context.T).amax(-1)
            choice = ((1 - alpha) * probs - alpha * penalty).argmax()
            ids = torch.cat([ids, cands[choice].view(1, 1)], 1)
    return ids


def prefill_decode_times(model, input_ids, new_tokens: int, attention_mask=None) -> PhaseTimes:
    """Time the two phases of generation separately: the prefill, and ``new_tokens`` decode steps.

    Uses the model protocol directly (greedy argmax, no processors) so the numbers are the model's.
    """
    from ..models.hf import as_model

    model = as_model(model)
    device = model.device
    ids = input_ids.to(device)
    B, T = ids.shape
    cache = model.new_cache(B, T + new_tokens + 1)
    with torch.inference_mode():
        synchronize(device)
        t0 = time.perf_counter()
        logits = model(ids, cache, attention_mask=attention_mask).logits[:, -1]
        tok = logits.argmax(-1, keepdim=True)
        synchronize(device)
        t1 = time.perf_counter()
        for _ in range(new_tokens):
            tok = model(tok, cache).logits[:, -1].argmax(-1, keepdim=True)
        synchronize(device)
        t2 = time.perf_counter()
    return PhaseTimes(prefill_s=t1 - t0, decode_s=t2 - t1, batch=B, prompt=T, new_tokens=new_tokens)


def load_reference(name_or_path: str = "smollm2-135m", device="cpu", dtype=torch.float32):
    """transformers' own model on the same weights as ``infergen.load_model(name_or_path)``."""
    from transformers import AutoModelForCausalLM

    from ..models.loading import locate

    hf = AutoModelForCausalLM.from_pretrained(locate(name_or_path), dtype=dtype).to(device).eval()
    return hf
