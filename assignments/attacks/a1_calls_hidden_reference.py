"""ATTACK (issue 18): no work of its own; it finds the teacher's hidden grading module among the imported
modules and calls its reference (``_expected_kept``). Must score little: the hidden code is not there."""
import sys

import torch


def _reference():
    for mod in list(sys.modules.values()):
        if "_expected_kept" in getattr(mod, "__dict__", {}):
            return mod.__dict__["_expected_kept"]
    return None


def apply_top_n_sigma(logits, n_sigma):
    ref = _reference()
    if ref is None:
        raise NotImplementedError("no hidden module to copy from")
    if isinstance(n_sigma, torch.Tensor):
        kept = torch.stack([ref(logits[i].unsqueeze(0), float(n_sigma[i]))[0] for i in range(logits.shape[0])])
    else:
        kept = ref(logits, float(n_sigma))
    return logits.masked_fill(~kept, float("-inf"))


def top_n_sigma_step(logits, context, n_sigma=1.0):
    return apply_top_n_sigma(logits, n_sigma)
