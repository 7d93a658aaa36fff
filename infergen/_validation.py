"""Argument checks shared by every public function.

A bad parameter must fail loudly, at the call, with a message that names the parameter, shows the
value it got and states the valid range -- never a silent clamp, a NaN, or a stack trace from deep
inside torch. These helpers make that one line per parameter.
"""
from __future__ import annotations

import math
import numbers

import torch


#: The largest integer a torch.long holds: the upper end of every integer parameter without its own.
_INT64_MAX = 2**63 - 1


def _is_nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def check_number(name: str, value, *, low=None, high=None, low_open=False, high_open=False,
                 allow_none=False, integer=False):
    """Check that ``value`` is a real number in the interval [low, high] (ends open if asked).

    Returns the value unchanged. Raises ``TypeError`` for a non-number and ``ValueError`` for NaN
    or a value outside the range; the message names ``name``, ``value`` and the valid range.
    Tensors are checked element-wise (for per-row parameters of shape ``[B]``).
    """
    if value is None:
        if allow_none:
            return None
        raise TypeError(f"{name} must be a number, got None")
    if isinstance(value, torch.Tensor):
        if integer and (value.is_floating_point() or value.is_complex()):
            raise TypeError(f"{name} must hold integers, got a tensor of dtype {value.dtype}")
        values = value.detach().flatten().tolist()
    else:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            kind = "an integer" if integer else "a number"
            raise TypeError(f"{name} must be {kind}, got {value!r} ({type(value).__name__})")
        if integer and not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
        values = [value]
    lo = "-inf" if low is None else f"{low}"
    hi = "inf" if high is None else f"{high}"
    interval = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
    for v in values:
        bad = _is_nan(float(v))
        if low is not None:
            bad = bad or (v <= low if low_open else v < low)
        if high is not None:
            bad = bad or (v >= high if high_open else v > high)
        if bad:
            shown = value if not isinstance(value, torch.Tensor) else value.tolist()
            raise ValueError(f"{name} must be in {interval}, got {shown!r}")
        if integer and high is None and v > _INT64_MAX:  # no tensor holds it (a count, a size)
            raise ValueError(f"{name} must be in {interval} and fit a 64-bit integer (at most 2**63 - 1), "
                             f"got {value!r}")
    return value


def check_logits(logits: torch.Tensor, name: str = "logits") -> torch.Tensor:
    """Check that logits are a floating tensor of shape [V] or [B, V]."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {logits.dtype}")
    if logits.dim() not in (1, 2):
        raise ValueError(f"{name} must have shape [V] or [B, V], got shape {tuple(logits.shape)}")
    return logits


def check_input_ids(input_ids, name: str = "input_ids") -> torch.Tensor:
    """Check token ids: an integer tensor of shape [T] or [B, T] with T >= 1; returns [B, T]."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"{name} must be a torch.LongTensor, got {type(input_ids).__name__}")
    if input_ids.dtype not in (torch.long, torch.int, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"{name} must hold integer token ids (torch.long), got dtype {input_ids.dtype}")
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    if input_ids.dim() != 2:
        raise ValueError(f"{name} must have shape [T] or [B, T], got shape {tuple(input_ids.shape)}")
    if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(input_ids.shape)}): give at least one prompt token")
    return input_ids.long()
