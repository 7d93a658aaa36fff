"""Any transformers causal LM behind infergen's model protocol.

Every decoder in infergen talks to a model through three things: ``model.new_cache(B, max_len)``,
``model(input_ids, cache, attention_mask, logits=..., hidden=...)`` and the ``device`` / ``dtype`` /
``max_context`` attributes. :class:`HFModel` provides them for GPT-2, OPT, Phi, ... -- any
``AutoModelForCausalLM`` -- so each decoder runs unchanged on the native model and on this adapter.

The cache is transformers' own ``DynamicCache`` (it grows by concatenation instead of being
preallocated) wrapped in :class:`HFCache`, which adds the same padding bookkeeping and the same
reorder / repeat / crop / copy operations as :class:`~infergen.cache.KVCache`.
"""
from __future__ import annotations

import copy
import inspect

import torch
from torch import nn

from ..cache import PaddingState
from .protocol import GenerationDefaults, ModelOutput


class HFCache(PaddingState):
    """A transformers ``DynamicCache`` plus infergen's padding state and row operations."""

    def __init__(self, batch_size: int, max_len: int, device, config):
        super().__init__(batch_size, max_len, device)
        from transformers import DynamicCache
        try:
            self.inner = DynamicCache(config=config)
        except TypeError:  # older transformers take no config
            self.inner = DynamicCache()

    def supports(self, op: str) -> bool:
        """A sliding-window layer keeps only the last ``window`` positions: it cannot be cropped back or
        read by column. Continuous batching's ``write_row`` needs the native :class:`KVCache`."""
        if op == "write_row":
            return False
        if op in ("crop", "read_column", "append_columns"):
            return not any(getattr(self.inner, "is_sliding", None) or ())
        return op == "reorder"

    def describe(self) -> str:
        kinds = sorted({type(layer).__name__ for layer in getattr(self.inner, "layers", ())})
        return f"transformers {type(self.inner).__name__} with {', '.join(kinds) or 'no'} layers"

    def _layers(self):
        return [(layer.keys, layer.values) for layer in self.inner.layers]

    def read_column(self, column: int) -> tuple[torch.Tensor, torch.Tensor]:
        layers = self._layers()
        return (torch.stack([k[0, :, column] for k, _ in layers]), torch.stack([v[0, :, column] for _, v in layers]))

    def append_columns(self, k: torch.Tensor, v: torch.Tensor) -> "HFCache":
        self.append_mask(None, k.shape[2])
        for layer in range(k.shape[0]):
            self.inner.update(k[layer].unsqueeze(0), v[layer].unsqueeze(0), layer)
        return self

    def reorder(self, index: torch.Tensor) -> "HFCache":
        if self.length:
            self.inner.batch_select_indices(index.to(self.mask.device))
        self.reorder_mask(index.to(self.mask.device))
        return self

    def repeat(self, n: int) -> "HFCache":
        index = torch.arange(self.batch_size, device=self.mask.device).repeat_interleave(n)
        return self.reorder(index)

    def crop(self, length: int) -> "HFCache":
        removed = self.length - length
        self.crop_mask(length)
        if removed > 0:  # a negative argument removes that many tokens (transformers 4.x and 5.x alike)
            self.inner.crop(-removed)
        return self

    def copy(self) -> "HFCache":
        return copy.deepcopy(self)


class HFModel(nn.Module):
    """Wrap ``hf_model`` (a transformers causal LM) so infergen's decoders can drive it.

    ``defaults``: its :class:`~infergen.models.protocol.GenerationDefaults` (by default from the model's
    generation config and config)."""

    def __init__(self, hf_model, defaults: GenerationDefaults | None = None):
        super().__init__()
        self.hf = hf_model.eval()
        self.config = hf_model.config
        if defaults is None:
            defaults = GenerationDefaults.from_config(getattr(hf_model, "generation_config", None) or self.config)
            if not defaults.eos_token_ids:
                defaults = GenerationDefaults.from_config(self.config)
        self.defaults = defaults
        # transformers 5.x renamed ``past_key_values`` to ``cache``; speak whichever this version knows.
        params = inspect.signature(hf_model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    @property
    def device(self):
        return self.hf.device

    @property
    def dtype(self):
        return self.hf.dtype

    @property
    def max_context(self) -> int:
        c = self.config
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            if getattr(c, name, None):
                return int(getattr(c, name))
        return 2048

    def new_cache(self, batch_size: int, max_len: int) -> HFCache:
        return HFCache(batch_size, max_len, self.device, self.config)

    def forward(self, input_ids, cache: HFCache, attention_mask=None, logits: str = "last",
                hidden: bool = False) -> ModelOutput:
        t = input_ids.shape[1]
        positions = cache.append_mask(attention_mask, t)
        out = self.hf(input_ids=input_ids, attention_mask=cache.mask[:, :cache.length].long(),
                      position_ids=positions, use_cache=True, output_hidden_states=hidden,
                      logits_to_keep=1 if logits == "last" else 0, **{self._cache_kw: cache.inner})
        h = out.hidden_states[-1] if hidden else None
        return ModelOutput(logits=out.logits, hidden=h)


def as_model(model):
    """Return an object that speaks infergen's model protocol: native models pass through, any
    transformers ``PreTrainedModel`` is wrapped in :class:`HFModel`."""
    if hasattr(model, "new_cache"):
        return model
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover
        PreTrainedModel = ()
    if isinstance(model, PreTrainedModel):
        return HFModel(model)
    raise TypeError(f"model must be an infergen model or a transformers causal LM, got {type(model).__name__}")
