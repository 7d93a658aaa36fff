"""ATTACK (own, issue 18): correct code that first allocates (and touches) 3 GiB -- a class of these would
take the grading machine's memory. Under the worker's memory cap (the test grades it with 2 GiB) the
allocation fails inside the worker: a failed check, the grader unharmed."""
import torch


def apply_top_n_sigma(logits, n_sigma):
    hog = bytearray(3 * 2**30)                        # zero-filled: every page touched
    del hog
    if isinstance(n_sigma, bool) or not isinstance(n_sigma, (int, float, torch.Tensor)):
        raise TypeError(f"n_sigma must be a number, got {n_sigma!r}")
    if not isinstance(n_sigma, torch.Tensor) and not 0 <= n_sigma < float("inf"):
        raise ValueError(f"n_sigma must be in [0, inf), got {n_sigma}")
    rows = logits.unsqueeze(0) if logits.dim() == 1 else logits
    work = rows.float() if rows.dtype in (torch.float16, torch.bfloat16) else rows
    finite = torch.isfinite(work)
    count = finite.sum(-1, keepdim=True).clamp(min=1)
    mean = torch.where(finite, work, 0).sum(-1, keepdim=True) / count
    std = ((torch.where(finite, work - mean, 0) ** 2).sum(-1, keepdim=True) / count).sqrt()
    n = n_sigma.to(work).reshape(-1, 1) if isinstance(n_sigma, torch.Tensor) else float(n_sigma)
    out = rows.masked_fill(work < work.amax(-1, keepdim=True) - n * std, float("-inf"))
    return out.squeeze(0) if logits.dim() == 1 else out


def top_n_sigma_step(logits, context, n_sigma=1.0):
    return apply_top_n_sigma(logits, n_sigma)
