"""Any transformers causal LM behind infergen's model protocol.

Every decoder in infergen talks to a model through three things: ``model.new_cache(B, max_len)``,
``model(input_ids, cache, attention_mask, logits=..., hidden=...)`` and the ``device`` / ``dtype`` /
``max_context`` attributes. :class:`HFModel` provides them for GPT-2, OPT, Phi, ... -- any
``AutoModelForCausalLM`` -- so each decoder runs unchanged on the native model and on this adapter.

The cache is transformers' own ``DynamicCache`` (it grows by concatenation instead of being
preallocated) wrapped in :class:`HFCache`, which adds the same padding bookkeeping and implements the
same protocols as :class:`~infergen.cache.KVCache` (:mod:`infergen.cache`).
"""
from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import torch

from ..cache import Cache, ColumnCache, CropCache, KVCache, PaddingState, RowCache
from .protocol import GenerationDefaults, ModelBase, ModelOutput

if TYPE_CHECKING:
    from typing_extensions import Self


class HFCache(PaddingState):
    """A transformers ``DynamicCache`` plus infergen's padding state: every protocol of :mod:`infergen.cache`.

    The row and column operations are :class:`~infergen.cache.PaddingState`'s, on the per-layer
    tensors of the ``DynamicCache``. Columns that only ``append_mask`` recorded (padding added without a
    forward pass, as the batcher does) are given zero keys/values when the storage is next needed.
    """

    def __init__(self, batch_size: int, max_len: int, device, config):
        super().__init__(batch_size, max_len, device)
        from transformers import DynamicCache

        # transformers' DynamicCache (config= since 4.56, our floor); layers of [B, kv_heads, length, head_dim]
        self.inner: Any = DynamicCache(config=config)

    def unsupported(self, capability: type) -> str | None:
        """A sliding-window layer keeps only its last ``window`` positions: once a sequence may outgrow
        that (``max_len >= window``), it cannot be cropped back, read by column or moved between rows."""
        windows = [getattr(layer, "sliding_window", 0) for layer in getattr(self.inner, "layers", ())
                   if getattr(layer, "is_sliding", False)]
        return None if capability is Cache or not windows or self.max_len < min(windows) else (
            f"its sliding-window layers keep only the last {min(windows)} positions and this cache may "
            f"hold {self.max_len}, so it cannot do the {capability.__name__} operations exactly")

    def _pad(self, like: "HFCache | None" = None) -> None:
        """Give the columns recorded by ``append_mask`` alone zero keys/values (shapes from ``like`` if empty)."""
        have = self.inner.get_seq_length()
        source = self if have else like
        if self.length <= have or source is None or not source.inner.get_seq_length():
            return
        for i, layer in enumerate(source.inner.layers):
            self.inner.update(*(t.new_zeros(self.batch_size, t.shape[1], self.length - have, t.shape[3])
                                for t in (layer.keys, layer.values)), i)

    def kv_layers(self, like=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One ``(keys, values)`` pair per layer, each [B, kv_heads, length, head_dim]."""
        self._pad(like)
        return [(layer.keys, layer.values) for layer in self.inner.layers]

    def update(self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append layer ``layer``'s newest keys/values; return all of them so far."""
        return self.inner.update(k_new, v_new, layer)

    def reorder(self, index: torch.Tensor) -> Self:
        """Keep rows ``index`` (repeats allowed; the batch size may change)."""
        index = index.to(self.mask.device)
        if self.inner.get_seq_length():
            self.inner.batch_select_indices(index)
        return self.reorder_mask(index)

    def crop(self, length: int) -> Self:
        """Forget every column from ``length`` on (its layers are cut to ``length`` columns)."""
        super().crop(length)
        extra = self.inner.get_seq_length() - length
        if extra > 0:  # a negative argument removes that many tokens (transformers 4.x and 5.x alike)
            self.inner.crop(-extra)
        return self


class HFModel(ModelBase):
    """Wrap ``hf_model`` (a transformers causal LM) so infergen's decoders can drive it.

    ``defaults``: its :class:`~infergen.models.protocol.GenerationDefaults` (by default from the model's
    generation config and config)."""

    def __init__(self, hf_model, defaults: GenerationDefaults | None = None):
        super().__init__()
        self.hf = hf_model.eval()
        self.config = hf_model.config
        # by default the generation config's, where it names an EOS id; else the config's
        gen = GenerationDefaults.from_config(getattr(hf_model, "generation_config", None) or self.config)
        gen = gen if gen.eos_token_ids else GenerationDefaults.from_config(self.config)
        self.defaults = gen if defaults is None else defaults
        # transformers 5.x renamed ``past_key_values`` to ``cache``; speak whichever this version knows.
        params = inspect.signature(hf_model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    def new_cache(self, batch_size: int, max_len: int) -> HFCache:
        """An :class:`HFCache` for ``batch_size`` rows of up to ``max_len`` tokens."""
        return HFCache(batch_size, max_len, self.device, self.config)

    def forward(self, input_ids, cache: HFCache, attention_mask=None, logits: str = "last",
                hidden: bool = False) -> ModelOutput:
        """Run ``input_ids`` [B, t] through the wrapped model (same contract as ``LlamaModel.forward``)."""
        cache._pad()  # padding columns recorded without a forward pass get keys/values first
        positions = cache.append_mask(attention_mask, input_ids.shape[1])
        out = self.hf(input_ids=input_ids, attention_mask=cache.mask[:, :cache.length].long(),
                      position_ids=positions, use_cache=True, output_hidden_states=hidden,
                      logits_to_keep=1 if logits == "last" else 0, **{self._cache_kw: cache.inner})
        return ModelOutput(logits=out.logits, hidden=out.hidden_states[-1] if hidden else None)


def as_model(model):
    """Return an object that speaks infergen's model protocol: native models pass through, any
    transformers ``PreTrainedModel`` is wrapped in :class:`HFModel`."""
    if hasattr(model, "new_cache"):
        return model
    from transformers import PreTrainedModel

    if isinstance(model, PreTrainedModel):
        return HFModel(model)
    raise TypeError(f"model must be an infergen model or a transformers causal LM, got {type(model).__name__}")


if TYPE_CHECKING:  # mypy checks here that both caches satisfy every protocol structurally
    def _satisfies(cache: KVCache | HFCache) -> tuple[Cache, CropCache, RowCache, ColumnCache]:
        return cache, cache, cache, cache
