"""The native model's fast paths: engineering beside the model, not part of it.

:mod:`infergen.models.llama` is the model as a reader meets it. Two ways to run it faster change
*how* its operations execute, not *what* they compute, so they live here and reach the model only
from the outside:

* :func:`prepack` swaps every ``nn.Linear`` of a model for a :class:`PackedLinear` (same weights,
  same ``forward(x)``) that multiplies decode steps' inputs (one token per row) with a copy of its
  weight prepacked for oneDNN, PyTorch's CPU kernel library. ``load_model`` does this for CPU models.
* :func:`compile_decode` wraps a model in :class:`CompiledDecode`, whose one-token steps run with
  *static shapes* (:func:`decode_static`), the form ``torch.compile`` and CUDA graphs can capture.
"""
from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._validation import check_number
from ..cache import KVCache
from .protocol import ModelBase, ModelOutput


#: The weight dtypes oneDNN can prepack on this machine (empty without oneDNN).
PACKABLE: tuple[torch.dtype, ...] = ()
if torch.backends.mkldnn.is_available():
    PACKABLE = (torch.float32, torch.bfloat16) if torch.ops.mkldnn._is_mkldnn_bf16_supported() else (torch.float32,)


class PackedLinear(nn.Linear):
    """``nn.Linear`` that multiplies decode steps' inputs with a copy of its weight prepacked by oneDNN.

    At batch 1 a linear layer is a matrix-vector product whose speed is set by how fast the weight
    streams from memory. oneDNN can reorder a weight once into the blocked layout its kernels read
    best; with that copy the decode matmuls of SmolLM2-135M stream the same bytes 2-3x faster than
    ``F.linear`` on the plain row-major matrix (2 cores, float32; the same holds for bfloat16), at
    batch 1 as at batch 16. The price is memory: the packed copy sits next to the original weight
    (which the state dict, the tied embedding and the GPU use). It is packed without a batch-size
    hint: a hint of 1 picks a layout that is ~1.4x slower.

    A decode step's input is ``[B, 1, D]``: one token per row (a single row ``[1, D]`` counts too).
    Every other input (a prefill's ``[B, t, D]``) keeps ``F.linear``: on a long prefill oneDNN's blocking rounds differently enough
    to double the (tiny) difference from transformers' logits. The packed
    copy is rebuilt when the weight changes (new data, new dtype, or an in-place update); autograd,
    other devices and ``torch.compile`` always take ``F.linear``.
    """

    _packed: tuple | None = None  # (weight, its identity, the packed copy), set on first use

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``F.linear(x, weight, bias)``, computed with the packed weight where it applies."""
        weight = self.packed_weight(x)
        return (F.linear(x, self.weight, self.bias) if weight is None
                else torch.ops.mkldnn._linear_pointwise(x, weight, self.bias, "none", [], ""))

    def packed_weight(self, x: torch.Tensor) -> torch.Tensor | None:
        """The oneDNN-packed copy of the weight for input ``x`` (None where packing does not apply).

        Packed on first use and kept on the module; packed again when the weight changed since
        (new data: another address or dtype; an in-place update: another version).
        """
        w = self.weight
        if (x.device.type != "cpu" or x.dtype != w.dtype or w.dtype not in PACKABLE or x.dim() < 2 or x.shape[-2] != 1
                or torch.is_grad_enabled() or torch.compiler.is_compiling()):  # compiling: F.linear
            return None
        # an inference tensor (made under inference_mode) has no version counter: it cannot change in place
        identity = (w.data_ptr(), w.dtype, 0 if w.is_inference() else w._version)
        if self._packed is None or self._packed[0] is not w or self._packed[1] != identity:
            self._packed = (w, identity, torch.ops.mkldnn._reorder_linear_weight(w.detach()))
        return self._packed[2]

    def __getstate__(self):  # copies and pickles leave the packed copy behind: it is rebuilt on first use
        return {**super().__getstate__(), "_packed": None}


def prepack(model: nn.Module) -> nn.Module:
    """Swap every plain ``nn.Linear`` of ``model`` for a :class:`PackedLinear` sharing its parameters.

    In place; returns the model. Tied weights stay tied (the parameters are the same objects).
    Layers of other types (``Int8Linear``, say) are left alone. A no-op without oneDNN.
    """
    if not PACKABLE:
        return model
    for name, m in list(model.named_modules()):
        if type(m) is nn.Linear:
            new = PackedLinear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
            new.weight, new.bias = m.weight, m.bias
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, new)
    return model


class StaticKV:
    """The cache as a static-shape decode step sees it (see :func:`decode_static`).

    ``update`` writes the new keys/values at ``column`` (a LongTensor [1], not a Python int) and
    returns the *whole* preallocated ``[B, kv_heads, max_len, head_dim]`` tensors: every shape stays
    the same from step to step, which is what ``torch.compile`` / CUDA graphs need. The attention mask
    hides the columns that are not filled yet.
    """

    def __init__(self, k: torch.Tensor, v: torch.Tensor, column: torch.Tensor):
        self.k, self.v, self.column = k, v, column

    def update(self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one column of layer ``layer``; return all of its ``max_len`` columns."""
        return (self.k[layer].index_copy_(2, self.column, k_new),  # index_copy_ returns the tensor it wrote
                self.v[layer].index_copy_(2, self.column, v_new))


def decode_static(model, table, input_ids, positions, column, mask, k, v) -> torch.Tensor:
    """One decode step of the native ``model`` with *static shapes*: what ``torch.compile`` can capture.

    The eager forward slices the cache to the filled length, a Python int that grows every step: a
    compiled graph would be specialised to each length (a recompilation per token). Here every shape
    is fixed by the cache's size: attention runs over *all* ``max_len`` columns and ``mask``
    [B, 1, 1, max_len] (True = attend) hides the unfilled ones; the new keys/values are written at
    ``column`` (a LongTensor [1]) with ``index_copy_``; ``positions`` [B, 1] is a tensor and ``table``
    the model's :meth:`~infergen.LlamaModel.rope_table`. No ``.item()``, no branch on
    data. ``k``/``v`` are the cache's tensors (written in place). Returns logits [B, 1, V].
    """
    return model.lm_head(model.norm(model.blocks(input_ids, positions, table, StaticKV(k, v, column), mask)))


class CompiledDecode(ModelBase):
    """A native model whose decode steps run :func:`decode_static` (optionally compiled).

    It speaks the same model protocol as the model it wraps (``forward``, ``new_cache``, ``device``,
    ``dtype``, ``max_context``, ``config``, ``defaults``), so every decoder runs on it unchanged.
    Prefill, ``logits="all"`` and ``hidden=True`` calls go to the eager model; one-token calls take
    the static path: the padding bookkeeping (positions, the mask of filled columns) happens eagerly
    in Python, then one captured graph runs the whole step.

    Two details make CUDA graphs pay off: ``new_cache`` rounds ``max_len`` up to a multiple of
    ``bucket`` (few distinct shapes, so few compilations) and reuses the key/value tensors of a cache
    that is no longer referenced (a CUDA graph replays fixed addresses; reuse avoids re-recording).
    """

    def __init__(self, model, compile: bool = True, mode: str = "reduce-overhead", bucket: int = 256):
        super().__init__()
        from .llama import LlamaModel

        if not isinstance(model, LlamaModel):
            raise TypeError(f"compile_decode needs infergen's native LlamaModel, got {type(model).__name__}")
        check_number("bucket", bucket, low=1, integer=True)
        self.model, self.bucket, self.compiled = model, bucket, bool(compile)
        step = lambda *args: decode_static(model, *args)  # noqa: E731
        self.step = torch.compile(step, mode=mode, fullgraph=True, dynamic=False) if compile else step
        self.config, self.defaults = model.config, model.defaults
        self._pool: dict[tuple[int, int], Any] = {}  # (B, max_len) -> (k, v, weak reference to its last cache)

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        """A :class:`KVCache` of ``max_len`` rounded up to the bucket, reusing free pooled storage."""
        max_len = min(-(-max_len // self.bucket) * self.bucket, max(max_len, self.model.max_context))
        pooled: Any = self._pool.get((batch_size, max_len))
        # free: its last cache is gone, or holds other storage now
        free = pooled is not None and getattr(pooled[2](), "k", None) is not pooled[0]
        cache = self.model.new_cache(batch_size, max_len, storage=pooled[:2] if free else None)
        if not free and self.compiled and cache.k.device.type == "cuda":
            for t in (cache.k, cache.v):
                torch._dynamo.mark_static_address(t)
        if free or pooled is None:  # a pooled pair in use elsewhere stays pooled: its user may drop it later
            self._pool[batch_size, max_len] = (cache.k, cache.v, weakref.ref(cache))
        return cache

    def forward(self, input_ids, cache, attention_mask=None, logits="last", hidden=False) -> ModelOutput:
        """One-token steps on a :class:`KVCache` take the static path; every other call the eager model."""
        if input_ids.shape[1] != 1 or hidden or logits != "last" or not isinstance(cache, KVCache):
            return self.model(input_ids, cache, attention_mask=attention_mask, logits=logits, hidden=hidden)
        positions = cache.append_mask(attention_mask, 1)  # eager bookkeeping: the new column is filled
        column = torch.tensor([cache.length - 1], device=cache.k.device)
        mask = cache.mask.index_fill(1, column, True)  # a (padding) query sees itself: no empty softmax row
        return ModelOutput(logits=self.step(self.model.rope_table(cache.max_len, cache.k.device), input_ids,
                                            positions, column, mask[:, None, None, :], cache.k, cache.v))


def compile_decode(model, compile: bool = True, mode: str = "reduce-overhead", bucket: int = 256) -> CompiledDecode:
    """Wrap ``model`` so its decode steps run as one static-shape, compiled graph (the GPU fast path).

    ``fast = compile_decode(model); greedy_search(fast, ids, 128)``. On a GPU, ``mode="reduce-overhead"``
    captures the step in a CUDA graph: a single launch replays all ~300 kernels of a step, which
    removes the Python and launch overhead that dominates small-batch decoding there. The first calls
    compile (tens of seconds). ``compile=False`` runs the same static-shape step eagerly (this is how
    the tests check it gives the tokens of the eager path). On a CPU it is correct but rarely faster
    than the eager model (whose packed-weight kernels the compiled graph does not use).
    """
    return CompiledDecode(model, compile=compile, mode=mode, bucket=bucket)
