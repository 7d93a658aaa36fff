"""Assignment 1 -- top-n-sigma sampling as a logits processor.

Specification: book/assignments/a1_top_n_sigma.md. Replace each ``raise NotImplementedError`` by your code.

Check:  python -m infergen.course check a1 path/to/this_file.py   (the public tests)
Grade:  python -m infergen.course grade a1 path/to/this_file.py   (your teacher adds the hidden checks)
"""
from __future__ import annotations

import torch


def apply_top_n_sigma(logits: torch.Tensor, n_sigma) -> torch.Tensor:
    """Keep the tokens whose logit is ``>= max - n_sigma * std`` of their row; set the others to ``-inf``.

    ``logits``: ``[V]`` or ``[B, V]``, any float dtype, any device; the result has the same shape, dtype
    and device, and the input is never modified. ``std`` is the population standard deviation
    (``correction=0``) of the row's *finite* logits. ``n_sigma``: a number in ``[0, inf)`` or a ``[B]``
    tensor (one value per row); anything else raises ``ValueError``/``TypeError`` naming ``n_sigma``.
    """
    raise NotImplementedError("apply_top_n_sigma: your code here")


def top_n_sigma_step(logits: torch.Tensor, context, n_sigma=1.0) -> torch.Tensor:
    """The same processor in the *registered* form ``fn(logits, context, **params)``, so that
    ``register_processor("top_n_sigma", top_n_sigma_step)`` lets any pipeline add it by name."""
    raise NotImplementedError("top_n_sigma_step: your code here")
