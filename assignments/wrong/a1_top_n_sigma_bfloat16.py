"""A known-WRONG solution of assignment 1: the statistics in the logits' own precision.

The bug: the mean and standard deviation are computed in the input dtype, so bfloat16 logits get a
bfloat16 threshold (the specification asks for float32 statistics). On a few hundred logits this rarely
shows; at a real vocabulary size, hundreds of tokens are kept or removed wrongly. Everything else follows
the specification.
"""
import math

import torch

from infergen._validation import check_logits, check_number


def apply_top_n_sigma(logits, n_sigma):
    check_logits(logits)
    check_number("n_sigma", n_sigma, low=0, high=math.inf, high_open=True)
    rows = logits.unsqueeze(0) if logits.dim() == 1 else logits
    work = rows                                                   # BUG: no float32 upcast for half precision
    finite = torch.isfinite(work)
    count = finite.sum(-1, keepdim=True).clamp(min=1)
    mean = torch.where(finite, work, torch.zeros_like(work)).sum(-1, keepdim=True) / count
    var = (torch.where(finite, work - mean, torch.zeros_like(work)) ** 2).sum(-1, keepdim=True) / count
    n = n_sigma.to(work).reshape(-1, 1) if isinstance(n_sigma, torch.Tensor) else float(n_sigma)
    out = rows.masked_fill(work < work.amax(-1, keepdim=True) - n * var.sqrt(), float("-inf"))
    return out.squeeze(0) if logits.dim() == 1 else out


def top_n_sigma_step(logits, context, n_sigma=1.0):
    return apply_top_n_sigma(logits, n_sigma)
