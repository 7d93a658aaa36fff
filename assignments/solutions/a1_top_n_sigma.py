"""Reference solution of assignment 1: the top-n-sigma sampler as a logits processor.

Teachers: this folder (``assignments/solutions``) is the answer key. Delete it before handing out.
"""
from __future__ import annotations

import math

import torch

from infergen._validation import check_logits, check_number


def apply_top_n_sigma(logits: torch.Tensor, n_sigma) -> torch.Tensor:
    """Top-n-sigma (Tang et al., 2024): keep the tokens whose logit is within ``n_sigma`` standard
    deviations of the row's maximum, ``logit >= max - n_sigma * std``, remove the rest (``-inf``).

    ``std`` is the population standard deviation of the row's *finite* logits (tokens removed earlier
    are ``-inf`` and do not count). ``n_sigma`` is a number in ``[0, inf)`` or a ``[B]`` tensor.
    """
    check_logits(logits)
    check_number("n_sigma", n_sigma, low=0, high=math.inf, high_open=True)
    rows = logits.unsqueeze(0) if logits.dim() == 1 else logits
    work = rows.float() if rows.dtype in (torch.float16, torch.bfloat16) else rows
    finite = torch.isfinite(work)
    count = finite.sum(-1, keepdim=True).clamp(min=1)
    zeroed = torch.where(finite, work, torch.zeros_like(work))
    mean = zeroed.sum(-1, keepdim=True) / count
    var = (torch.where(finite, work - mean, torch.zeros_like(work)) ** 2).sum(-1, keepdim=True) / count
    std = var.sqrt()
    top = work.amax(-1, keepdim=True)
    if isinstance(n_sigma, torch.Tensor):
        if n_sigma.dim() > 1 or (n_sigma.dim() == 1 and n_sigma.numel() != rows.shape[0]):
            raise ValueError(f"n_sigma must be a number or a tensor of shape [B] = [{rows.shape[0]}], "
                             f"got shape {tuple(n_sigma.shape)}")
        n = n_sigma.to(device=work.device, dtype=work.dtype).reshape(-1, 1)
    else:
        n = float(n_sigma)
    remove = work < top - n * std
    out = rows.masked_fill(remove, float("-inf"))
    return out.squeeze(0) if logits.dim() == 1 else out


def top_n_sigma_step(logits: torch.Tensor, context, n_sigma=1.0) -> torch.Tensor:
    """The registered-processor form: ``fn(logits, context, **params)`` (the context is not needed)."""
    return apply_top_n_sigma(logits, n_sigma)
