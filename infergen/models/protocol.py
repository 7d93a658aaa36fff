"""What a decoder may assume about a model: the :class:`LanguageModel` protocol.

Every decoder in infergen talks to a model only through this protocol, so the same decoding code runs
on the native :class:`~infergen.models.llama.LlamaModel`, on any transformers causal LM behind
:class:`~infergen.models.hf.HFModel`, and on a student's own model::

    cache = model.new_cache(batch_size, max_len)          # a Cache (see infergen.cache)
    out = model(input_ids, cache, attention_mask=mask)    # appends to the cache -> ModelOutput
    out.logits                                            # [B, 1, V] (logits="last") or [B, t, V]

A model also carries its :class:`GenerationDefaults` -- which ids end a generation, which id pads a
finished row, its name -- as an ordinary constructor argument, not as attributes patched on later.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@dataclass
class ModelOutput:
    """What a forward pass returns: logits [B, t, V] (or [B, 1, V]) and, if asked, hidden [B, t, D]."""
    logits: torch.Tensor
    hidden: torch.Tensor | None = None


@dataclass(frozen=True)
class GenerationDefaults:
    """A model's generation defaults: the ids that end a row, the id that pads a finished row, its name.

    Decoders use them when the caller passes no ``eos_token_id`` / ``pad_token_id``
    (:func:`~infergen.decoding.base.special_ids` is the one place that decides).
    """

    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    name: str = ""

    @classmethod
    def from_config(cls, config, tokenizer=None, name: str = "") -> "GenerationDefaults":
        """The EOS ids of ``config`` (one id or a list) and of ``tokenizer``, and the config's pad id."""
        sources = (getattr(config, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None))
        ids = {int(i) for s in sources if s is not None for i in (s if isinstance(s, (list, tuple)) else [s])}
        pad = getattr(config, "pad_token_id", None)
        return cls(tuple(sorted(ids)), None if pad is None else int(pad), name)  # eos ids, pad id, name


@runtime_checkable
class LanguageModel(Protocol):
    """The model protocol every decoder relies on (see the module docstring)."""

    config: object            # a transformers-style config: vocab_size, num_hidden_layers, ...
    defaults: GenerationDefaults

    @property
    def device(self) -> torch.device:
        """The device the model's weights (and its caches) live on."""

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights (and of the caches' keys/values)."""

    @property
    def max_context(self) -> int:
        """The longest sequence (prompt + new tokens) the model accepts."""

    def new_cache(self, batch_size: int, max_len: int):
        """A :class:`~infergen.cache.Cache` for ``batch_size`` rows of up to ``max_len`` tokens."""

    def __call__(self, input_ids: torch.Tensor, cache, attention_mask: torch.Tensor | None = None,
                 logits: str = "last", hidden: bool = False) -> ModelOutput:
        """Run ``input_ids`` [B, t], appending their keys/values to ``cache``."""


class ModelBase(nn.Module):
    """The attributes of :class:`LanguageModel` that every infergen model derives the same way, written once
    (the native :class:`~infergen.models.llama.LlamaModel`, the transformers adapter
    :class:`~infergen.models.hf.HFModel` and :class:`~infergen.models.fast.CompiledDecode` inherit them):
    ``device`` and ``dtype`` are those of the first weight (the token embedding), ``max_context`` comes
    from ``self.config``."""

    config: Any  # a transformers-style config

    @property
    def device(self) -> torch.device:
        """The device of the weights (and of the caches)."""
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights (and of the caches' keys/values)."""
        return next(self.parameters()).dtype

    @property
    def max_context(self) -> int:
        """The longest sequence the config allows (its first known length field; else 2048)."""
        names = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
        return next((int(getattr(self.config, n)) for n in names if getattr(self.config, n, None)), 2048)
