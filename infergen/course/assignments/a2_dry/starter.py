"""Assignment 2 -- DRY ("don't repeat yourself"): a repetition penalty that targets repeated *sequences*.

Specification: book/assignments/a2_dry.md. Replace each ``raise NotImplementedError`` by your code.

Check:  python -m infergen.course check a2 path/to/this_file.py   (the public tests)
Grade:  python -m infergen.course grade a2 path/to/this_file.py   (your teacher adds the hidden checks)
"""
from __future__ import annotations

import torch


def apply_dry(logits: torch.Tensor, token_ids, multiplier=0.8, base=1.75, allowed_length=2,
              sequence_breakers=()) -> torch.Tensor:
    """Penalise every token that would extend a repeat of ``allowed_length`` tokens or more.

    ``logits``: ``[V]`` or ``[B, V]``; ``token_ids``: the history, ``[T]`` or ``[B, T]`` (negative ids are
    padding: drop them). For each candidate token ``y`` let ``M[y]`` be the length of the longest repeat it
    would extend (see the book page); if ``M[y] >= allowed_length``::

        logits[y] -= multiplier * base ** (M[y] - allowed_length)

    ``multiplier`` in ``[0, inf)`` (0 = off), ``base`` in ``[1, inf)``, ``allowed_length`` an integer
    ``>= 1``, ``sequence_breakers``: token ids that no repeat may contain. The input is never modified; the
    result keeps shape, dtype and device.
    """
    raise NotImplementedError("apply_dry: your code here")


def dry_step(logits: torch.Tensor, context, **params) -> torch.Tensor:
    """The registered form ``fn(logits, context, **params)``: DRY over ``context.all_ids`` (prompt +
    generated), so that ``LogitsPipeline(...).add_registered("dry", multiplier=...)`` works."""
    raise NotImplementedError("dry_step: your code here")
