"""A known-WRONG solution of assignment 2: the penalty's exponent is ``M`` instead of ``M - allowed_length``.

Everything else (matching, breakers, padding, the registered step) follows the specification, so the
checks must say that the *size* of the penalty is wrong, not where the history comes from.
"""
import math

import torch

from infergen._validation import check_logits, check_number


def apply_dry(logits, token_ids, multiplier=0.8, base=1.75, allowed_length=2, sequence_breakers=()):
    check_logits(logits)
    check_number("multiplier", multiplier, low=0, high=math.inf, high_open=True)
    check_number("base", base, low=1, high=math.inf, high_open=True)
    check_number("allowed_length", allowed_length, low=1, integer=True)
    breakers = [int(check_number("sequence_breakers item", b, low=0, integer=True)) for b in sequence_breakers]
    rows = logits.unsqueeze(0) if logits.dim() == 1 else logits
    B, V = rows.shape
    ids = torch.as_tensor(token_ids).reshape(B, -1) if token_ids is not None else torch.empty(B, 0, dtype=torch.long)
    penalty = torch.zeros(B, V, dtype=torch.float64)
    for b in range(B):
        h = [t for t in ids[b].tolist() if t >= 0]
        T = len(h)
        best = [0] * V
        if T < 2 or h[-1] in breakers:
            continue
        for i in range(T - 1):
            m = 0
            while i - m >= 0 and h[i - m] == h[T - 1 - m] and h[i - m] not in breakers:
                m += 1
            if m and h[i + 1] < V:
                best[h[i + 1]] = max(best[h[i + 1]], m)
        for y, m in enumerate(best):
            if m >= allowed_length:
                penalty[b, y] = multiplier * base ** min(m, 1000)          # BUG: exponent M, not M - allowed_length
    out = (rows.double() - penalty.to(rows.device)).to(rows.dtype)
    return out.squeeze(0) if logits.dim() == 1 else out


def dry_step(logits, context, **params):
    return apply_dry(logits, context.all_ids, **params)
