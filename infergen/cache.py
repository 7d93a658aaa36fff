"""The KV cache: what a transformer remembers between decoding steps.

Generating token ``t+1`` needs attention over the keys and values of every earlier position. Without a
cache each step recomputes them for the whole sequence, so a step costs O(t) layer passes and a whole
generation O(n^2). With a cache, the prompt is processed once (*prefill*) and each new token adds one
column of keys and values (*decode*), so a step touches only the new token.

This module has two parts.

``PaddingState`` is the bookkeeping every cache needs for batches of prompts with different lengths.
Prompts are *left*-padded so that every row's next token sits in the same column; a boolean ``mask``
``[B, T]`` records which slots hold real tokens. From it we derive each new token's *position* (its
index among the row's real tokens, used by the rotary embedding) and the attention mask (a token
attends to the real tokens before it and never to padding).

``Cache`` (a ``typing.Protocol``) is the contract: every operation a decoder may use, implemented by
``KVCache`` here and by the transformers adapter's ``HFCache`` (:mod:`infergen.models.hf`). Decoders
never check a cache's type or touch its storage; a decoder that needs an operation some caches cannot
do asks :meth:`Cache.supports` up front and says so (:func:`require_ops`).

``KVCache`` is the static, preallocated cache of infergen's native model (the gpt-fast design): one
tensor for all keys and one for all values, ``[layers, B, kv_heads, max_len, head_dim]``, allocated
once on the model's device and dtype. Appending writes into the next free columns; nothing is
reallocated while decoding. Decoders reshape it with four operations:

* ``reorder(index)`` -- gather rows, e.g. the surviving beams of beam search (``index`` may repeat
  rows and may change the batch size, so it also serves to *select* rows);
* ``repeat(n)`` -- repeat each row ``n`` times, e.g. the ``k`` candidates of contrastive search;
* ``crop(length)`` -- forget everything after ``length`` columns, e.g. rejected speculative tokens;
* ``copy()`` -- an independent cache (e.g. to branch a search tree);
* ``read_column(column)`` / ``append_columns(k, v)`` -- one position's keys/values out of row 0, and
  such columns back in (MCTS keeps them per tree node).
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

#: Every operation of the protocol that some cache may not support.
OPTIONAL_OPS = ("reorder", "crop", "read_column", "append_columns", "write_row")


@runtime_checkable
class Cache(Protocol):
    """What a decoder may do with a cache (implemented by :class:`KVCache` and ``HFCache``).

    ``length`` is the number of filled columns (the same for every row), ``mask`` [B, max_len] marks
    real tokens, ``batch_size`` the rows. The model calls :meth:`append_mask` and reads
    :meth:`attention_mask` itself; decoders use the row and column operations.
    """

    length: int
    max_len: int
    mask: torch.Tensor

    @property
    def batch_size(self) -> int: ...

    def append_mask(self, new_mask: torch.Tensor | None, t: int) -> torch.Tensor:
        """Record ``t`` new columns (``new_mask`` [B, t], None = all real); return their positions [B, t]."""

    def reorder(self, index: torch.Tensor) -> "Cache":
        """Keep rows ``index`` (repeats allowed; the batch size may change)."""

    def repeat(self, n: int) -> "Cache":
        """Repeat every row ``n`` times (row b becomes rows b*n .. b*n+n-1)."""

    def crop(self, length: int) -> "Cache":
        """Forget every column from ``length`` on."""

    def copy(self) -> "Cache":
        """An independent copy."""

    def read_column(self, column: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Row 0's keys and values at ``column``: two tensors [layers, kv_heads, head_dim] (copies)."""

    def append_columns(self, k: torch.Tensor, v: torch.Tensor) -> "Cache":
        """Append ``n`` columns [layers, kv_heads, n, head_dim] as real tokens of a batch-1 cache."""

    def write_row(self, row: int, source: "Cache", source_row: int = 0) -> "Cache":
        """Put ``source``'s filled columns of ``source_row`` into ``row``, right-aligned (continuous batching)."""

    def supports(self, op: str) -> bool:
        """Can this cache do ``op`` (one of :data:`OPTIONAL_OPS`)?"""

    def describe(self) -> str:
        """A few words on what this cache is (for error messages)."""


def require_ops(cache: Cache, ops, who: str) -> Cache:
    """Raise a clear ``ValueError`` up front if ``cache`` cannot do every operation ``who`` needs."""
    missing = [op for op in ops if not cache.supports(op)]
    if missing:
        raise ValueError(f"{who} needs the cache operation(s) {missing}, which this model's cache "
                         f"({type(cache).__name__}: {cache.describe()}) does not support")
    return cache


class PaddingState:
    """Which cache slots hold real tokens, per row. Shared by every cache implementation.

    ``mask[b, j]`` is True when column ``j`` of row ``b`` holds a real token (False for left padding).
    ``length`` is the number of columns filled so far (the same for every row).
    """

    def __init__(self, batch_size: int, max_len: int, device):
        self.max_len = max_len
        self.mask = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)
        self.length = 0
        self.has_padding = False  # lets the model skip building masks when every slot is real

    @property
    def batch_size(self) -> int:
        return self.mask.shape[0]

    def append_mask(self, new_mask: torch.Tensor | None, t: int) -> torch.Tensor:
        """Record ``t`` new columns (``new_mask`` [B, t], None = all real); return their positions [B, t].

        The position of a token is the number of real tokens before it in its row, so a left-padded
        prompt gets positions 0, 1, 2, ... from its first real token, exactly as if it were alone.
        """
        start = self.length
        if start + t > self.max_len:
            raise ValueError(
                f"cache is full: {start} + {t} tokens exceed max_len={self.max_len}; "
                "allocate a larger cache (max_new_tokens too large for it?)")
        seen = self.mask[:, :start].sum(-1, keepdim=True)  # real tokens so far, [B, 1]
        if new_mask is None:
            self.mask[:, start:start + t] = True
            steps = torch.arange(t, device=self.mask.device).unsqueeze(0)
            positions = seen + steps
        else:
            new_mask = new_mask.to(device=self.mask.device, dtype=torch.bool)
            self.mask[:, start:start + t] = new_mask
            if not bool(new_mask.all()):
                self.has_padding = True
            positions = (seen + new_mask.long().cumsum(-1) - 1).clamp_(min=0)
        self.length = start + t
        return positions

    def attention_mask(self, t: int) -> torch.Tensor | None:
        """Boolean mask [B, 1, t, length] for the last ``t`` columns as queries (True = may attend).

        Query ``i`` (column ``length - t + i``) sees every earlier real column and itself (a padding
        query sees itself, so its softmax row is never empty and never produces NaN).
        Returns None when there is no padding and ``t == 1`` (attend to everything).
        """
        L = self.length
        if not self.has_padding and t == 1:
            return None
        keys = torch.arange(L, device=self.mask.device)
        queries = torch.arange(L - t, L, device=self.mask.device)
        causal = keys.unsqueeze(0) <= queries.unsqueeze(1)  # [t, L]
        real = self.mask[:, :L].unsqueeze(1)  # [B, 1, L]
        diagonal = keys.unsqueeze(0) == queries.unsqueeze(1)
        return (causal & (real | diagonal)).unsqueeze(1)  # [B, 1, t, L]

    # -- the row operations, applied to the mask; subclasses extend them to their storage --------
    def reorder_mask(self, index: torch.Tensor):
        """Gather the mask's rows (the storage is the subclass's business)."""
        self.mask = self.mask.index_select(0, index)

    def crop_mask(self, length: int):
        """Mark every column from ``length`` on as empty."""
        if not 0 <= length <= self.length:
            raise ValueError(f"crop length must be in [0, {self.length}], got {length}")
        self.mask[:, length:] = False
        self.length = length


class StaticKV:
    """The cache as a static-shape decode step sees it (see ``LlamaModel.decode_static``).

    ``update`` writes the new keys/values at ``column`` (a LongTensor [1], not a Python int) and
    returns the *whole* preallocated ``[B, kv_heads, max_len, head_dim]`` tensors: every shape stays
    the same from step to step, which is what ``torch.compile`` / CUDA graphs need. The attention mask
    hides the columns that are not filled yet.
    """

    def __init__(self, k: torch.Tensor, v: torch.Tensor, column: torch.Tensor):
        self.k, self.v, self.column = k, v, column

    def update(self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor):
        k, v = self.k[layer], self.v[layer]
        k.index_copy_(2, self.column, k_new)
        v.index_copy_(2, self.column, v_new)
        return k, v


class KVCache(PaddingState):
    """Static key/value cache, preallocated on one device and dtype (see the module docstring).

    ``storage=(k, v)`` hands in preallocated tensors of shape ``[layers, B, kv_heads, max_len, head_dim]``
    instead (a compiled decode step reuses them: a CUDA graph replays fixed addresses).
    """

    def __init__(self, num_layers: int, batch_size: int, num_kv_heads: int, head_dim: int, max_len: int,
                 device=None, dtype=torch.float32, storage: tuple[torch.Tensor, torch.Tensor] | None = None):
        super().__init__(batch_size, max_len, device)
        shape = (num_layers, batch_size, num_kv_heads, max_len, head_dim)
        if storage is None:
            storage = (torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))
        elif any(tuple(t.shape) != shape for t in storage):
            raise ValueError(f"storage must be two tensors of shape {shape}, got "
                             f"{[tuple(t.shape) for t in storage]}")
        self.k, self.v = storage

    def supports(self, op: str) -> bool:
        return op in OPTIONAL_OPS

    def describe(self) -> str:
        return f"{self.batch_size} rows x {self.max_len} columns"

    def update(self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor):
        """Write this layer's keys/values for the newest ``t`` columns; return all keys/values so far.

        Call after ``append_mask`` (which advanced ``length``). Shapes: [B, kv_heads, t, head_dim] in,
        [B, kv_heads, length, head_dim] out (views, no copy).
        """
        t, end = k_new.shape[2], self.length
        k, v = self.k[layer], self.v[layer]
        k.narrow(2, end - t, t).copy_(k_new)  # narrow + copy_: the cheapest spelling of k[:, :, end-t:end] = k_new
        v.narrow(2, end - t, t).copy_(v_new)
        return k.narrow(2, 0, end), v.narrow(2, 0, end)

    def reorder(self, index: torch.Tensor) -> "KVCache":
        """Keep rows ``index`` (in that order, repeats allowed): beams that survived, chosen candidates."""
        index = index.to(self.k.device)
        L = self.length
        if index.numel() == self.batch_size:  # same batch size: gather the used columns in place
            self.k[:, :, :, :L] = self.k[:, index, :, :L]
            self.v[:, :, :, :L] = self.v[:, index, :, :L]
        else:
            self.k = self.k.index_select(1, index)
            self.v = self.v.index_select(1, index)
        self.reorder_mask(index)
        return self

    def repeat(self, n: int) -> "KVCache":
        """Repeat every row ``n`` times (row b becomes rows b*n .. b*n+n-1)."""
        index = torch.arange(self.batch_size, device=self.k.device).repeat_interleave(n)
        return self.reorder(index)

    def crop(self, length: int) -> "KVCache":
        """Forget every column from ``length`` on (the stale keys are simply overwritten later)."""
        self.crop_mask(length)
        return self

    def read_column(self, column: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Row 0's keys and values at ``column``: two tensors [layers, kv_heads, head_dim] (copies)."""
        return self.k[:, 0, :, column].clone(), self.v[:, 0, :, column].clone()

    def append_columns(self, k: torch.Tensor, v: torch.Tensor) -> "KVCache":
        """Append ``n`` columns [layers, kv_heads, n, head_dim] as real tokens of row 0 (no forward pass)."""
        n = k.shape[2]
        self.append_mask(None, n)
        end = self.length
        self.k[:, 0, :, end - n:end] = k
        self.v[:, 0, :, end - n:end] = v
        return self

    def copy(self) -> "KVCache":
        new = KVCache.__new__(KVCache)
        new.__dict__.update(self.__dict__)
        new.k, new.v, new.mask = self.k.clone(), self.v.clone(), self.mask.clone()
        return new

    @property
    def nbytes(self) -> int:
        """Bytes held by the preallocated keys and values."""
        return 2 * self.k.numel() * self.k.element_size()

    # -- per-row slots (continuous batching, see infergen.serving) --------------------------------
    def write_row(self, row: int, source: "KVCache", source_row: int = 0) -> "KVCache":
        """Put ``source``'s filled columns of ``source_row`` into ``row``, right-aligned at ``length``.

        Every row's newest token sits in the last filled column, so a request that joins a running
        batch is written into columns ``[length - n, length)`` (``n = source.length``) and the
        columns before them become padding for that row. Keys carry their rotary position already
        (a token's position counts the *real* tokens before it), so they may move to any column.
        """
        n, L = source.length, self.length
        if n > L:
            raise ValueError(f"the source holds {n} columns but only {L} are filled here: append padding "
                             "columns first (append_mask with an all-False mask)")
        self.k[:, row, :, L - n:L] = source.k[:, source_row, :, :n]
        self.v[:, row, :, L - n:L] = source.v[:, source_row, :, :n]
        self.mask[row, :L] = False
        self.mask[row, L - n:L] = source.mask[source_row, :n]
        self.has_padding = self.has_padding or n < L or source.has_padding
        return self

    def clear_row(self, row: int) -> "KVCache":
        """Forget everything in ``row`` (a finished request's slot): all its columns become padding."""
        self.mask[row] = False
        self.has_padding = True
        return self

    def compact(self) -> int:
        """Squeeze out padding: move every row's real columns to its right end (in order), then drop the
        leading columns that are padding for every row. Returns how many columns were freed.

        Rows fill up with padding columns in continuous batching (a request admitted with a longer
        prompt pads every other row). Positions are unaffected: a token's rotary position was fixed
        when its key was computed, and the next positions count real tokens, not columns.
        """
        L = self.length
        counts = self.mask[:, :L].sum(-1).tolist()
        for row, n in enumerate(counts):
            if n and not bool(self.mask[row, L - n:L].all()):  # gaps: gather the real columns rightwards
                cols = self.mask[row, :L].nonzero().flatten()
                self.k[:, row, :, L - n:L] = self.k[:, row, :, cols].clone()
                self.v[:, row, :, L - n:L] = self.v[:, row, :, cols].clone()
                self.mask[row, :L] = False
                self.mask[row, L - n:L] = True
        drop = L - max(counts, default=0)
        if drop:
            self.k[:, :, :, :L - drop] = self.k[:, :, :, drop:L].clone()
            self.v[:, :, :, :L - drop] = self.v[:, :, :, drop:L].clone()
            self.mask[:, :L - drop] = self.mask[:, drop:L].clone()
            self.mask[:, L - drop:] = False
            self.length = L - drop
        return drop
