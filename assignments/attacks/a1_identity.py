"""ATTACK (issue 18): a processor that returns (a copy of) its input unchanged, with tidy input validation.
The old grader gave it 16/22 (73%); at most 25% now."""
import math

import torch


def apply_top_n_sigma(logits, n_sigma):
    if isinstance(n_sigma, bool) or not isinstance(n_sigma, (int, float, torch.Tensor)):
        raise TypeError(f"n_sigma must be a number, got {n_sigma!r}")
    if not isinstance(n_sigma, torch.Tensor) and not (0 <= n_sigma < math.inf):
        raise ValueError(f"n_sigma must be in [0, inf), got {n_sigma}")
    return logits.clone()


def top_n_sigma_step(logits, context, n_sigma=1.0):
    return apply_top_n_sigma(logits, n_sigma)
