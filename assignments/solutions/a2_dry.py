"""Reference solution of assignment 2: the DRY ("don't repeat yourself") repetition penalty.

Teachers: this folder (``assignments/solutions``) is the answer key. Delete it before handing out.
"""
from __future__ import annotations

import math

import torch

from infergen._validation import check_logits, check_number


def _history_rows(token_ids, batch: int, device) -> list[torch.Tensor]:
    """The history as one 1-D tensor of real ids per row (negative ids = padding, dropped)."""
    if token_ids is None:
        return [torch.empty(0, dtype=torch.long, device=device) for _ in range(batch)]
    ids = torch.as_tensor(token_ids)
    if ids.is_floating_point() or ids.dtype == torch.bool:
        raise TypeError(f"token_ids must hold integer token ids, got dtype {ids.dtype}")
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    if ids.dim() != 2 or ids.shape[0] != batch:
        raise ValueError(f"token_ids must have shape [T] (with [V] logits) or [B, T] with B = {batch}, "
                         f"got shape {tuple(ids.shape)}")
    ids = ids.to(device=device, dtype=torch.long)
    return [row[row >= 0] for row in ids]


def match_lengths(history: torch.Tensor, vocab: int, breakers: torch.Tensor) -> torch.Tensor:
    """``M[y]``: the longest repeat that token ``y`` would extend, for one row's history ``[T]``.

    For every earlier position ``i`` (``i < T - 1``), the match length is the number of tokens ending at
    ``i`` that equal the tokens ending at ``T - 1`` (the current suffix), stopping at a sequence breaker;
    the token that followed, ``history[i + 1]``, would extend that repeat. Vectorized over ``i``: one
    comparison per match length (at most ``T`` of them, usually a handful), not per position.
    """
    T = history.shape[0]
    best = torch.zeros(vocab, dtype=torch.long, device=history.device)
    if T < 2 or bool(torch.isin(history[-1], breakers)):
        return best
    is_breaker = torch.isin(history, breakers)
    ends = torch.arange(T - 1, device=history.device)           # candidate end positions i
    alive = torch.ones(T - 1, dtype=torch.bool, device=history.device)
    length = torch.zeros(T - 1, dtype=torch.long, device=history.device)
    for k in range(T - 1):                                      # compare history[i - k] with history[T-1-k]
        pos = ends - k
        ok = alive & (pos >= 0)
        if not bool(ok.any()):
            break
        left = history[pos.clamp(min=0)]
        ok &= (left == history[T - 1 - k]) & ~is_breaker[pos.clamp(min=0)] & ~is_breaker[T - 1 - k]
        length += ok.long()
        alive = ok
    following = history[1:]                                     # the token after each end position
    valid = (length > 0) & (following < vocab)
    return best.scatter_reduce(0, following[valid], length[valid], reduce="amax")


def apply_dry(logits: torch.Tensor, token_ids, multiplier=0.8, base=1.75, allowed_length=2,
              sequence_breakers=()) -> torch.Tensor:
    """DRY: ``logit[y] -= multiplier * base ** (M[y] - allowed_length)`` for every token ``y`` whose
    match length ``M[y] >= allowed_length`` (see :func:`match_lengths`); other logits are unchanged.

    ``token_ids``: ``[T]`` or ``[B, T]`` history (prompt + generated), negative ids are padding.
    ``multiplier`` in ``[0, inf)`` (0 = off), ``base`` in ``[1, inf)``, ``allowed_length`` an integer
    ``>= 1``, ``sequence_breakers`` an iterable of token ids that no repeat may span.
    """
    check_logits(logits)
    check_number("multiplier", multiplier, low=0, high=math.inf, high_open=True)
    check_number("base", base, low=1, high=math.inf, high_open=True)
    check_number("allowed_length", allowed_length, low=1, integer=True)
    breakers = [int(check_number("sequence_breakers item", b, low=0, integer=True)) for b in sequence_breakers]
    rows = logits.unsqueeze(0) if logits.dim() == 1 else logits
    batch, vocab = rows.shape
    history = _history_rows(token_ids, batch, rows.device)
    if multiplier == 0:
        return logits.clone()
    breakers_t = torch.tensor(breakers, dtype=torch.long, device=rows.device)
    lengths = torch.stack([match_lengths(h, vocab, breakers_t) for h in history])      # [B, V]
    exponent = (lengths - allowed_length).double()
    penalty = float(multiplier) * torch.pow(torch.tensor(float(base), dtype=torch.float64), exponent)
    penalty = torch.where(lengths >= allowed_length, penalty, torch.zeros_like(penalty))
    work_dtype = torch.float32 if rows.dtype in (torch.float16, torch.bfloat16) else rows.dtype
    out = (rows.to(work_dtype) - penalty.to(device=rows.device, dtype=work_dtype)).to(rows.dtype)
    return out.squeeze(0) if logits.dim() == 1 else out


def dry_step(logits: torch.Tensor, context, **params) -> torch.Tensor:
    """The registered-processor form ``fn(logits, context, **params)``: DRY over prompt + generated ids."""
    return apply_dry(logits, context.all_ids, **params)
