"""A known-WRONG solution of assignment 1, used to prove that the grading can fail.

The bug: it writes ``-inf`` into the caller's tensor (``logits[mask] = -inf``) and returns it -- the
in-place surprise of the source document's ``apply_top_p``. Everything else is right, so exactly the
mutation-related checks fail.
"""
import math

import torch

from infergen._validation import check_logits, check_number


def apply_top_n_sigma(logits, n_sigma):
    check_logits(logits)
    check_number("n_sigma", n_sigma, low=0, high=math.inf, high_open=True)
    rows = logits.unsqueeze(0) if logits.dim() == 1 else logits
    work = rows.float()
    finite = torch.isfinite(work)
    count = finite.sum(-1, keepdim=True).clamp(min=1)
    mean = torch.where(finite, work, 0.0).sum(-1, keepdim=True) / count
    std = ((torch.where(finite, work - mean, 0.0) ** 2).sum(-1, keepdim=True) / count).sqrt()
    n = n_sigma.to(work).reshape(-1, 1) if isinstance(n_sigma, torch.Tensor) else float(n_sigma)
    rows[work < work.amax(-1, keepdim=True) - n * std] = float("-inf")   # BUG: in place
    return logits


def top_n_sigma_step(logits, context, n_sigma=1.0):
    return apply_top_n_sigma(logits, n_sigma)
