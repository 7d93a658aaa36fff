"""ATTACK (issue 18): DRY that penalises nothing -- the logits come back unchanged (a copy), with tidy input
validation. Must score at most 25%."""
import math

import torch


def _check(multiplier, base, allowed_length):
    for name, value, low in [("multiplier", multiplier, 0), ("base", base, 1)]:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number, got {value!r}")
        if not low <= value < math.inf:
            raise ValueError(f"{name} must be in [{low}, inf), got {value}")
    if isinstance(allowed_length, bool) or not isinstance(allowed_length, int):
        raise TypeError(f"allowed_length must be an integer, got {allowed_length!r}")
    if allowed_length < 1:
        raise ValueError(f"allowed_length must be >= 1, got {allowed_length}")


def apply_dry(logits, token_ids, multiplier=0.8, base=1.75, allowed_length=2, sequence_breakers=()):
    _check(multiplier, base, allowed_length)
    return logits.clone()


def dry_step(logits, context, **params):
    return apply_dry(logits, context.all_ids, **params)
