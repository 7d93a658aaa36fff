"""Argument checks shared by every public function.

A bad parameter must fail loudly, at the call, with a message that names the parameter, shows the
value it got and states the valid range -- never a silent clamp, a NaN, or a stack trace from deep
inside torch. These helpers make that one line per parameter.
"""
from __future__ import annotations

import math
import numbers
import sys

import torch


#: The largest integer a torch.long holds: the upper end of every integer parameter without its own.
_INT64_MAX = 2**63 - 1


def _shown(value) -> str:
    """``repr`` of a value for an error message; a huge integer is abbreviated (10**400 has 401 digits)."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:12]}... (an integer of {len(text.lstrip('-'))} digits)"


def check_number(name: str, value, *, low=None, high=None, low_open=False, high_open=False,
                 allow_none=False, integer=False):
    """Check that ``value`` is a real number in the interval [low, high] (ends open if asked).

    Returns the value: a Python ``int``/``float`` as given, any other real number (``Fraction(1, 2)``,
    ``numpy.float32``) converted to ``int`` (integer parameters) or ``float``, a tensor unchanged.
    Raises ``TypeError`` for a non-number (``bool`` included) and ``ValueError`` for NaN, a value outside
    the range or one no float / 64-bit integer holds; the message names ``name``, ``value`` and the range.
    A tensor (a per-row parameter of shape ``[B]``) is checked element-wise with tensor ops and one
    synchronisation: a door check, never one for the decode loop.
    """
    if value is None and allow_none:
        return None
    interval = (f"{'(' if low_open or low is None else '['}{'-inf' if low is None else low}, "
                f"{'inf' if high is None else high}{')' if high_open or high is None else ']'}")
    tensor, fits = isinstance(value, torch.Tensor), ""
    if tensor and (value.dtype == torch.bool or value.is_complex() or (integer and value.is_floating_point())):
        raise TypeError(f"{name} must hold {'integers' if integer else 'real numbers'}, got a tensor of "
                        f"dtype {value.dtype}")
    if not tensor and (isinstance(value, bool) or not isinstance(value, numbers.Integral if integer else
                                                                 numbers.Real)):
        raise TypeError(f"{name} must be {'an integer' if integer else 'a number'}, got {_shown(value)} "
                        f"({type(value).__name__})")
    x = value if tensor or isinstance(value, (int, float)) else (int if integer else float)(value)  # Fraction
    below = low is not None and (x <= low if low_open else x < low)
    above = high is not None and (x >= high if high_open else x > high)
    bad = (x != x) | below | above  # NaN, or outside the interval
    bad = bool(bad.any()) if isinstance(bad, torch.Tensor) else bad
    if not (bad or tensor) and integer and high in (None, math.inf) and x > _INT64_MAX:  # no tensor holds it
        fits = " and fit a 64-bit integer (at most 2**63 - 1)"
    if not (bad or tensor or integer) and isinstance(x, int) and abs(x) > sys.float_info.max:
        fits = f" and fit a float (at most {sys.float_info.max:.4g})"
    if bad or fits:
        raise ValueError(f"{name} must be in {interval}{fits}, got "
                         f"{repr(value.tolist()) if tensor else _shown(value)}")
    return x


def check_callable(name: str, value):
    """Refuse a ``value`` that cannot be called (a pipeline step, a registered decoder or processor, a
    scorer): the one "must be callable" check, naming ``name`` and what was given."""
    if not callable(value):
        raise TypeError(f"{name} must be callable, got {_shown(value)} ({type(value).__name__})")


def check_logits(logits: torch.Tensor, name: str = "logits") -> torch.Tensor:
    """Check that logits are a floating tensor of shape [V] or [B, V]."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {logits.dtype}")
    if logits.dim() not in (1, 2):
        raise ValueError(f"{name} must have shape [V] or [B, V], got shape {tuple(logits.shape)}")
    return logits


def as_rows(logits: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Check logits (:func:`check_logits`) and view them as ``[B, V]``; the flag says
    whether the caller gave ``[V]`` (and wants the result squeezed back)."""
    check_logits(logits)
    return (logits.unsqueeze(0), True) if logits.dim() == 1 else (logits, False)


def check_token_ids(token_ids, batch: int, device, name: str = "token_ids") -> torch.Tensor:
    """Token history as a ``[B, T]`` long tensor on ``device``; ``None`` gives an empty history ``[B, 0]``.

    Shapes and dtypes only (no values are read, so nothing waits for the device)."""
    if token_ids is None:
        return torch.empty(batch, 0, dtype=torch.long, device=device)
    if not isinstance(token_ids, torch.Tensor):
        raise TypeError(f"{name} must be a tensor of token ids, got {type(token_ids).__name__}")
    if token_ids.is_floating_point() or token_ids.is_complex() or token_ids.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids, got dtype {token_ids.dtype}")
    if token_ids.dim() == 1 and batch == 1:
        token_ids = token_ids.unsqueeze(0)
    if token_ids.dim() != 2 or token_ids.shape[0] != batch:
        raise ValueError(f"{name} must have shape [T] (with [V] logits) or [B, T] with B = {batch}, "
                         f"got shape {tuple(token_ids.shape)}")
    return token_ids.to(device=device, dtype=torch.long)


def check_per_row(name: str, value, batch: int):
    """Refuse a per-row tensor whose length is not the batch's (shapes only: no synchronisation)."""
    if isinstance(value, torch.Tensor) and value.dim() == 1 and value.numel() != batch:
        raise ValueError(f"{name} must be a number or a tensor of shape [B] = [{batch}], "
                         f"got shape {tuple(value.shape)}")


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
