"""The KV cache: what a transformer remembers between decoding steps.

Generating token ``t+1`` needs attention over the keys and values of every earlier position. Without a
cache each step recomputes them for the whole sequence, so a step costs O(t) layer passes and a whole
generation O(n^2). With a cache, the prompt is processed once (*prefill*) and each new token adds one
column of keys and values (*decode*), so a step touches only the new token.

**The contract** is a few ``typing.Protocol`` classes, all runtime-checkable. :class:`Cache` is what
every decoder and the model rely on: the padding bookkeeping, ``update`` (the model writes each layer's
keys/values), and the row operations ``reorder`` / ``repeat`` / ``copy``. The rest is optional, in named
groups a decoder asks for up front with :func:`require`:

* :class:`CropCache` -- ``crop(length)``: forget the newest columns (rejected speculative tokens);
* :class:`RowCache` -- ``write_row`` / ``clear_row`` / ``compact``: per-row slots (continuous batching);
* :class:`ColumnCache` -- ``read_column`` / ``append_columns``: one position's keys/values out and
  back in (MCTS keeps them per tree node).

Both caches, :class:`KVCache` here and the transformers adapter's ``HFCache``
(:mod:`infergen.models.hf`), implement every protocol *structurally* (neither inherits from them).
Having a method is not always enough: a sliding-window layer keeps only the last ``window`` positions,
so it cannot crop back or read columns once a sequence may outgrow the window. Each cache therefore
says why it cannot honour a protocol, or None, with ``unsupported(capability)``; :func:`require`
checks both and names the decoder, the missing operations and the reason.

:class:`PaddingState` is the bookkeeping both caches share. Prompts are *left*-padded so that every
row's next token sits in the same column; a boolean ``mask`` ``[B, T]`` records which slots hold real
tokens. From it we derive each new token's *position* (its index among the row's real tokens, used by
the rotary embedding) and the attention mask (a token attends to the real tokens before it and never
to padding). It also implements the row and column operations once, on the per-layer tensors a cache
exposes through ``kv_layers()``.

:class:`KVCache` is the static, preallocated cache of infergen's native model (the gpt-fast design):
one tensor for all keys and one for all values, ``[layers, B, kv_heads, max_len, head_dim]``, allocated
once on the model's device and dtype. Appending writes into the next free columns; nothing is
reallocated while decoding.
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

import torch

if TYPE_CHECKING:
    from typing_extensions import Self


@runtime_checkable
class Cache(Protocol):
    """What every decoder and the model may do with a cache (see the module docstring).

    ``length`` is the number of filled columns (the same for every row), ``mask`` [B, max_len] marks
    real tokens, ``has_padding`` whether any filled column is padding. The model calls
    :meth:`append_mask`, :meth:`attention_mask` and :meth:`update`; decoders use the row operations.
    """

    length: int
    max_len: int
    mask: torch.Tensor
    has_padding: bool

    @property
    def batch_size(self) -> int:
        """The number of rows."""

    def append_mask(self, new_mask: torch.Tensor | None, t: int) -> torch.Tensor:
        """Record ``t`` new columns (``new_mask`` [B, t], None = all real); return their positions [B, t]."""

    def attention_mask(self, t: int) -> torch.Tensor | None:
        """Boolean mask [B, 1, t, length] for the newest ``t`` columns as queries (None: plain causal)."""

    def update(self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store layer ``layer``'s keys/values of the newest ``t`` columns [B, kv_heads, t, head_dim];
        return all of that layer's keys/values so far [B, kv_heads, length, head_dim]."""

    def reorder(self, index: torch.Tensor) -> Self:
        """Keep rows ``index`` (repeats allowed; the batch size may change)."""

    def repeat(self, n: int) -> Self:
        """Repeat every row ``n`` times (row b becomes rows b*n .. b*n+n-1)."""

    def copy(self) -> Self:
        """An independent copy: changing one never changes the other."""

    def unsupported(self, capability: type) -> str | None:
        """Why this cache cannot honour ``capability`` (one of the protocols here), or None."""


@runtime_checkable
class CropCache(Cache, Protocol):
    """A cache that can forget its newest columns (speculative decoding, MCTS)."""

    def crop(self, length: int) -> Self:
        """Forget every column from ``length`` on."""


@runtime_checkable
class RowCache(Cache, Protocol):
    """A cache with per-row slots (continuous batching, MCTS's batches of leaves)."""

    def write_row(self, row: int, source: Self, source_row: int = 0) -> Self:
        """Put ``source``'s filled columns of ``source_row`` into ``row``, right-aligned at ``length``."""

    def clear_row(self, row: int) -> Self:
        """Forget everything in ``row``: all its columns become padding."""

    def compact(self) -> int:
        """Squeeze out padding columns; return how many columns were freed."""


@runtime_checkable
class ColumnCache(Cache, Protocol):
    """A cache whose columns can be read out (from any row) and appended back (to row 0 of a batch-1
    cache): MCTS's tree nodes keep one column each."""

    def read_column(self, column: int, row: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Row ``row``'s keys and values at ``column``: two tensors [layers, kv_heads, head_dim] (copies)."""

    def append_columns(self, k: torch.Tensor, v: torch.Tensor) -> Self:
        """Append ``n`` columns [layers, kv_heads, n, head_dim] as real tokens of row 0."""


C = TypeVar("C", bound=Cache)


def require(cache: C, capability: type, who: str) -> C:
    """Return ``cache`` if it can do what ``capability`` (a protocol above) names, else raise ``ValueError``.

    The message names the decoder (``who``), the protocol and its operations, and why the cache cannot
    (a missing method, or the reason its ``unsupported`` gives). Call it before any work is done.
    """
    ops = sorted(n for n in vars(capability) if not n.startswith("_") and n not in vars(Cache))
    what = f"{capability.__name__} operations ({', '.join(ops)})" if ops else capability.__name__
    why = cache.unsupported(capability) if isinstance(cache, capability) else "it lacks some of them"
    if why:
        raise ValueError(f"{who} needs a cache with the {what}, which this model's cache "
                         f"({type(cache).__name__}) cannot provide: {why}")
    return cache


class PaddingState:
    """Which cache slots hold real tokens, per row, and the row/column operations shared by every cache.

    ``mask[b, j]`` is True when column ``j`` of row ``b`` holds a real token (False for left padding).
    ``length`` is the number of columns filled so far (the same for every row). A subclass provides its
    storage as :meth:`kv_layers` and ``update`` / ``reorder`` (and ``crop`` where it must cut storage).
    """

    def __init__(self, batch_size: int, max_len: int, device):
        self.max_len = max_len
        self.mask = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)
        self.length = 0
        self.has_padding = False  # lets the model skip building masks when every slot is real

    @property
    def batch_size(self) -> int:
        """The number of rows."""
        return self.mask.shape[0]

    def unsupported(self, capability: type) -> str | None:
        """Why this cache cannot honour ``capability``, or None (here: None, it can do everything)."""
        return None

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
        self.mask[:, start:start + t] = True if new_mask is None else new_mask  # copied from any device/dtype
        real = self.mask[:, start:start + t]  # [B, t]
        self.has_padding = self.has_padding or (new_mask is not None and not bool(real.all()))
        self.length = start + t
        return (seen + real.long().cumsum(-1) - 1).clamp_(min=0)  # a padding slot takes its neighbour's

    def attention_mask(self, t: int) -> torch.Tensor | None:
        """Boolean mask [B, 1, t, length] for the last ``t`` columns as queries (True = may attend).

        Query ``i`` (column ``length - t + i``) sees every earlier real column and itself (a padding
        query sees itself, so its softmax row is never empty and never produces NaN).
        Returns None when there is no padding and the queries are one token (it attends to everything)
        or every column so far (a plain causal prefill: SDPA's ``is_causal`` path).
        """
        L = self.length
        if not self.has_padding and (t == 1 or t == L):
            return None
        keys = torch.arange(L, device=self.mask.device)  # [L]
        queries = keys[L - t:, None]  # [t, 1]: the columns of the newest t tokens
        real = self.mask[:, None, :L]  # [B, 1, L]
        return ((keys <= queries) & (real | (keys == queries))).unsqueeze(1)  # [B, 1, t, L]

    # -- shared operations, written once on the storage of kv_layers() ------------------------------
    if TYPE_CHECKING:  # each subclass provides these three (see KVCache)
        def update(self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """Store the newest columns of one layer; return all so far."""
        def reorder(self, index: torch.Tensor) -> Self:
            """Keep rows ``index``."""
        def kv_layers(self, like=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
            """The storage as ``(keys, values)`` pairs, each ``[..., B, kv_heads, columns >= length, head_dim]``
            (one stacked pair with a leading layer dimension, or one pair per layer). ``like``: a cache of
            the same model, whose shapes a still-empty storage may copy."""

    def copy(self) -> Self:
        """An independent copy (its own keys, values and mask): changing one never changes the other."""
        return copy.deepcopy(self)

    def reorder_mask(self, index: torch.Tensor) -> Self:
        """Gather the mask's rows (the storage is the subclass's business); returns the cache, as
        ``reorder`` does."""
        self.mask = self.mask.index_select(0, index)
        return self

    def repeat(self, n: int) -> Self:
        """Repeat every row ``n`` times (row b becomes rows b*n .. b*n+n-1)."""
        return self.reorder(torch.arange(self.batch_size, device=self.mask.device).repeat_interleave(n))

    def crop(self, length: int) -> Self:
        """Forget every column from ``length`` on: they are marked empty (the static cache simply
        overwrites its stale keys later; a growing storage also cuts them, see ``HFCache.crop``)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"crop length must be in [0, {self.length}], got {length}")
        self.mask[:, length:] = False
        self.length = length
        return self

    def read_column(self, column: int, row: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Row ``row``'s keys and values at ``column``: two tensors [layers, kv_heads, head_dim] (copies)."""
        k, v = (torch.cat([t[..., row, :, column, :].reshape(-1, t.shape[-3], t.shape[-1]) for t in ts])
                for ts in zip(*self.kv_layers()))
        return k, v

    def append_columns(self, k: torch.Tensor, v: torch.Tensor) -> Self:
        """Append ``n`` columns [layers, kv_heads, n, head_dim] as real tokens of row 0 (no forward pass)."""
        self.append_mask(None, k.shape[2])
        for layer in range(k.shape[0]):
            self.update(layer, k[layer].unsqueeze(0), v[layer].unsqueeze(0))
        return self

    def write_row(self, row: int, source: Self, source_row: int = 0) -> Self:
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
        for mine, theirs in zip(self.kv_layers(like=source), source.kv_layers()):
            for t, s in zip(mine, theirs):
                t[..., row, :, L - n:L, :] = s[..., source_row, :, :n, :]
        self.mask[row, :L] = False
        self.mask[row, L - n:L] = source.mask[source_row, :n]
        self.has_padding = self.has_padding or n < L or source.has_padding
        return self

    def clear_row(self, row: int) -> Self:
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
        keep = int(self.mask[:, :L].sum(-1).max()) if L else 0  # the most real columns any row holds
        # Per row: its padding columns first, then its real ones, each in order; the last `keep` of them.
        order = self.mask[:, :L].int().argsort(dim=-1, stable=True)[:, L - keep:]  # [B, keep]
        for t in (t for kv in self.kv_layers() for t in kv):
            t[..., :keep, :] = t.gather(-2, order[:, None, :, None].expand(*t.shape[:-2], keep, t.shape[-1]))
        self.mask[:, :keep] = self.mask.gather(1, order)
        self.crop(keep)
        return L - keep


class KVCache(PaddingState):
    """Static key/value cache, preallocated on one device and dtype (see the module docstring).

    ``storage=(k, v)`` hands in preallocated tensors of shape ``[layers, B, kv_heads, max_len, head_dim]``
    instead (a compiled decode step reuses them: a CUDA graph replays fixed addresses).
    """

    def __init__(self, num_layers: int, batch_size: int, num_kv_heads: int, head_dim: int, max_len: int,
                 device=None, dtype=torch.float32, storage: tuple[torch.Tensor, torch.Tensor] | None = None):
        super().__init__(batch_size, max_len, device)
        shape = (num_layers, batch_size, num_kv_heads, max_len, head_dim)
        self.k, self.v = storage or [torch.zeros(shape, device=device, dtype=dtype) for _ in range(2)]

    def kv_layers(self, like=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One stacked pair: ``k``, ``v`` [layers, B, kv_heads, max_len, head_dim]."""
        return [(self.k, self.v)]

    def update(self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this layer's keys/values for the newest ``t`` columns; return all keys/values so far.

        Call after ``append_mask`` (which advanced ``length``). Shapes: [B, kv_heads, t, head_dim] in,
        [B, kv_heads, length, head_dim] out (views, no copy).
        """
        t, end = k_new.shape[2], self.length
        k, v = self.k[layer], self.v[layer]
        k.narrow(2, end - t, t).copy_(k_new)  # narrow + copy_: the cheapest spelling of k[:, :, end-t:end] = k_new
        v.narrow(2, end - t, t).copy_(v_new)
        return k.narrow(2, 0, end), v.narrow(2, 0, end)

    def reorder(self, index: torch.Tensor) -> Self:
        """Keep rows ``index`` (in that order, repeats allowed): beams that survived, chosen candidates."""
        index, L = index.to(self.k.device), self.length
        if index.numel() == self.batch_size:  # same batch size: gather the used columns in place
            for t in (self.k, self.v):
                t[:, :, :, :L] = t[:, index, :, :L]
        else:
            self.k, self.v = self.k.index_select(1, index), self.v.index_select(1, index)
        return self.reorder_mask(index)

    @property
    def nbytes(self) -> int:
        """Bytes held by the preallocated keys and values."""
        return 2 * self.k.numel() * self.k.element_size()

