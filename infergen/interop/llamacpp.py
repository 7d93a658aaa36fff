"""llama.cpp's forward pass behind infergen's model protocol: :class:`LlamaCppModel`.

llama.cpp runs a GGUF model on the CPU faster than PyTorch's kernels, but has none of beam search with length
penalty, contrastive search, MCTS or speculative decoding with another draft. infergen's decoders see a model
only through the :class:`~infergen.LanguageModel` and :class:`~infergen.Cache` protocols: behind them, llama.cpp's low-level
API lets every decoder drive llama.cpp unchanged::

    model = LlamaCppModel("smollm2-135m-F32.gguf")            # pip install "infergen[llamacpp]"
    greedy_search(model, input_ids, max_new_tokens=32)

One ``llama_decode`` per forward pass, on a batch of tokens with explicit positions and sequence ids. A
cache row is a llama.cpp *sequence id* in one KV memory that every sequence shares: padding is never sent
(a real token's position is the number of real tokens before it, :class:`~infergen.cache.PaddingState`);
``reorder`` / ``repeat`` / ``copy`` / ``write_row`` copy sequences (``llama_memory_seq_cp``: the cells
are shared, no keys are copied), ``crop`` / ``clear_row`` remove positions (``llama_memory_seq_rm``),
``compact`` is bookkeeping (llama.cpp stores positions, not columns). Hidden states (contrastive search)
are llama.cpp's output embeddings, switched on for the calls that ask. :class:`~infergen.cache.ColumnCache`
is refused: llama.cpp does not hand out one position's keys and values.
"""
from __future__ import annotations

import ctypes
import importlib
import logging
import weakref
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch

from ..cache import Cache, ColumnCache, CropCache, PaddingState, RowCache
from ..models.protocol import GenerationDefaults, ModelOutput

if TYPE_CHECKING:
    from typing_extensions import Self

KV_TYPES = {"f32": 0, "f16": 1}  # ggml's GGML_TYPE_F32 / GGML_TYPE_F16


def import_llama_cpp() -> Any:
    """The ``llama_cpp`` module (llama-cpp-python), or an ``ImportError`` naming the extra to install."""
    try:
        return importlib.import_module("llama_cpp")  # imported when a LlamaCppModel is made, never by the core
    except ImportError as e:
        raise ImportError('LlamaCppModel needs llama-cpp-python: pip install "infergen[llamacpp]" (it compiles '
                          "llama.cpp from source, about 20 minutes on 2 cores)") from e


def _release(llama_cpp, ctx, batch, model, llama=None) -> None:
    """Free what a :class:`LlamaCppModel` allocated (``model`` when it loaded the file itself; a ``Llama``
    whose weights it used is kept alive until its context is freed)."""
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
    if model is not None:
        llama_cpp.llama_model_free(model)


class LlamaCppCache(PaddingState):
    """A cache whose rows are sequence ids of one :class:`LlamaCppModel`'s llama.cpp context: the padding
    state is :class:`~infergen.cache.PaddingState`'s, the keys and values are llama.cpp's (:meth:`kv_layers`
    is empty), each row operation also acts on the sequences, whose ids go back when the cache is collected."""

    def __init__(self, model: LlamaCppModel, batch_size: int, max_len: int):
        super().__init__(batch_size, max_len, "cpu")
        self.model = model
        self.seqs: list[int] = model.take_sequences(batch_size)
        # the ids go back when the cache is collected (the list is updated in place); not at exit
        weakref.finalize(self, model.give_sequences, self.seqs).atexit = False

    def unsupported(self, capability: type) -> str | None:
        """Every protocol but :class:`~infergen.cache.ColumnCache` (llama.cpp keeps its keys/values)."""
        return ("llama.cpp keeps keys and values inside its context and does not hand out one position's"
                if capability is ColumnCache else None)

    def kv_layers(self, like=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """No tensors: llama.cpp stores the keys and values (the inherited row operations move only the mask)."""
        return []

    def update(self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Not used: llama.cpp computes and stores keys and values itself."""
        raise NotImplementedError("llama.cpp computes and stores keys and values itself")

    def reorder(self, index: torch.Tensor) -> Self:
        """Keep rows ``index`` (repeats allowed): a row's first use keeps its sequence, each repeat copies it."""
        rows, old, m = index.tolist(), list(self.seqs), self.model
        used = set(rows)
        m.give_sequences([s for r, s in enumerate(old) if r not in used])  # dropped rows first: ids to reuse
        new: list[int] = []
        for r in rows:
            new.append(m.take_sequences(1)[0] if old[r] in new else old[r])
            if new[-1] != old[r]:
                m.lib.llama_memory_seq_cp(m.memory, old[r], new[-1], -1, -1)
        self.seqs[:] = new
        self.reorder_mask(index.to(self.mask.device))
        return self

    def copy(self) -> Self:
        """An independent copy: new sequences, each a copy of one of these."""
        other = type(self)(self.model, self.batch_size, self.max_len)
        for src, dst in zip(self.seqs, other.seqs):
            self.model.lib.llama_memory_seq_cp(self.model.memory, src, dst, -1, -1)
        other.mask, other.length, other.has_padding = self.mask.clone(), self.length, self.has_padding
        return other

    def crop(self, length: int) -> Self:
        """Forget every column from ``length`` on: each row's positions from its real count there on go."""
        keep = self.mask[:, :max(length, 0)].sum(-1).tolist()  # real tokens each row keeps
        super().crop(length)  # validates length
        for s, n in zip(self.seqs, keep):
            self.model.lib.llama_memory_seq_rm(self.model.memory, s, n, -1)
        return self

    def write_row(self, row: int, source: Self, source_row: int = 0) -> Self:
        """Put ``source``'s ``source_row`` into ``row`` (same model): its sequence is copied over this row's."""
        if source.model is not self.model:
            raise ValueError("write_row needs a source cache of the same LlamaCppModel (one llama.cpp context)")
        super().write_row(row, source, source_row)  # checks the lengths, moves the mask
        self.model.lib.llama_memory_seq_rm(self.model.memory, self.seqs[row], -1, -1)
        self.model.lib.llama_memory_seq_cp(self.model.memory, source.seqs[source_row], self.seqs[row], -1, -1)
        return self

    def clear_row(self, row: int) -> Self:
        """Forget everything in ``row``: its sequence is emptied, its columns become padding."""
        self.model.lib.llama_memory_seq_rm(self.model.memory, self.seqs[row], -1, -1)
        return super().clear_row(row)


class LlamaCppModel:
    """llama.cpp behind :class:`~infergen.models.protocol.LanguageModel` (see the module docstring).

    ``path_or_llama``: a GGUF file, or a ``llama_cpp.Llama`` whose loaded weights (and context settings) are
    reused. ``n_ctx``: KV cells shared by every row of every live cache (the context's length);
    ``n_seq_max``: how many rows all live caches may hold together; ``n_threads``: CPU threads (default:
    torch's); ``kv_type``: ``"f16"`` (llama.cpp's default) or ``"f32"`` keys/values; ``defaults``: the
    generation defaults (default: the GGUF's EOS/EOT and pad ids).
    """

    def __init__(self, path_or_llama, n_ctx: int = 2048, n_threads: int | None = None, n_seq_max: int = 16,
                 kv_type: str = "f16", defaults: GenerationDefaults | None = None, verbose: bool = False):
        lib = self.lib = import_llama_cpp()
        for name, value in (("n_ctx", n_ctx), ("n_seq_max", n_seq_max), ("n_threads", n_threads)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if kv_type not in KV_TYPES:
            raise ValueError(f"kv_type must be one of {sorted(KV_TYPES)}, got {kv_type!r}")
        if not verbose:  # llama-cpp-python's own logger decides what llama.cpp prints
            logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
        owned = llama = None
        if isinstance(path_or_llama, (str, Path)):
            if not Path(path_or_llama).is_file():
                raise ValueError(f"path_or_llama must be a GGUF file or a llama_cpp.Llama, got {path_or_llama!r}")
            lib.llama_backend_init()
            owned = lib.llama_model_load_from_file(str(path_or_llama).encode(), lib.llama_model_default_params())
            if not owned:
                raise ValueError(f"llama.cpp could not load {path_or_llama!r}")
            self.llama_model, params, name = owned, lib.llama_context_default_params(), Path(path_or_llama).stem
        elif isinstance(path_or_llama, lib.Llama):
            llama = path_or_llama  # its weights, kept alive while this context lives
            params = lib.llama_context_params.from_buffer_copy(path_or_llama.context_params)
            self.llama_model, name = path_or_llama.model, Path(path_or_llama.model_path).stem
        else:
            raise TypeError("path_or_llama must be a GGUF path or a llama_cpp.Llama, got "
                            f"{type(path_or_llama).__name__}")
        params.n_ctx = params.n_batch = n_ctx  # one llama_decode may hold every token of the context
        params.n_ubatch, params.n_seq_max, params.kv_unified = min(n_ctx, 512), n_seq_max, True
        params.n_threads = params.n_threads_batch = n_threads or torch.get_num_threads()
        params.type_k = params.type_v = KV_TYPES[kv_type]
        self.ctx = lib.llama_init_from_model(self.llama_model, params)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not create a context (n_ctx={n_ctx}, n_seq_max={n_seq_max})")
        self.memory = lib.llama_get_memory(self.ctx)
        self.batch = lib.llama_batch_init(n_ctx, 0, 1)
        weakref.finalize(self, _release, lib, self.ctx, self.batch, owned, llama)
        vocab = lib.llama_model_get_vocab(self.llama_model)
        self.n_ctx, self.n_seq_max, self.free = n_ctx, n_seq_max, list(range(n_seq_max))
        self.embeddings = bool(params.embeddings)  # llama.cpp returns output embeddings (switched when a call asks)
        self.config = SimpleNamespace(vocab_size=lib.llama_vocab_n_tokens(vocab),
                                      num_hidden_layers=lib.llama_model_n_layer(self.llama_model),
                                      hidden_size=lib.llama_model_n_embd(self.llama_model),
                                      max_position_embeddings=n_ctx)
        eos, pad = {lib.llama_vocab_eos(vocab), lib.llama_vocab_eot(vocab)} - {-1}, lib.llama_vocab_pad(vocab)
        self.defaults = defaults or GenerationDefaults(tuple(sorted(eos)), pad if pad >= 0 else None, name)

    @property
    def device(self) -> torch.device:
        """The CPU: llama.cpp's outputs are copied into CPU tensors."""
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """float32, the dtype of the logits llama.cpp returns."""
        return torch.float32

    @property
    def max_context(self) -> int:
        """The context's length ``n_ctx``."""
        return self.n_ctx

    def take_sequences(self, n: int) -> list[int]:
        """``n`` free sequence ids (empty in llama.cpp's memory), or a ``ValueError`` naming ``n_seq_max``."""
        if n > len(self.free):
            raise ValueError(f"the live caches of this LlamaCppModel would hold {self.n_seq_max - len(self.free) + n} "
                             f"rows, more than n_seq_max={self.n_seq_max}: create it with a larger n_seq_max")
        taken, self.free = self.free[:n], self.free[n:]
        return taken

    def give_sequences(self, seqs: list[int]) -> None:
        """Empty sequences ``seqs`` in llama.cpp's memory and make their ids free again."""
        for s in seqs:
            self.lib.llama_memory_seq_rm(self.memory, s, -1, -1)
        self.free.extend(seqs)

    def new_cache(self, batch_size: int, max_len: int) -> LlamaCppCache:
        """A :class:`LlamaCppCache` of ``batch_size`` rows (sequence ids) of up to ``max_len`` tokens."""
        if max_len > self.n_ctx:
            raise ValueError(f"max_len={max_len} exceeds this context's n_ctx={self.n_ctx}")
        return LlamaCppCache(self, batch_size, max_len)

    def __call__(self, input_ids: torch.Tensor, cache: LlamaCppCache, attention_mask: torch.Tensor | None = None,
                 logits: str = "last", hidden: bool = False) -> ModelOutput:
        """Run ``input_ids`` [B, t] (the contract of ``LlamaModel.forward``): one ``llama_decode`` of every
        row's real tokens, each with its row's sequence id and position; logits [B, 1 or t, V] float32."""
        if logits not in ("last", "all"):
            raise ValueError(f"logits must be 'last' or 'all', got {logits!r}")
        lib, b, (B, t) = self.lib, self.batch, input_ids.shape
        positions = cache.append_mask(attention_mask, t).tolist()
        real, ids = cache.mask[:, cache.length - t:cache.length].tolist(), input_ids.tolist()
        sent = [(r, j) for r in range(B) for j in range(t) if real[r][j]]  # padding is never sent
        if len(sent) > self.n_ctx:
            raise ValueError(f"{len(sent)} tokens in one call exceed n_ctx={self.n_ctx}")
        every = logits == "all" or hidden  # else only each row's last column is an output
        for n, (r, j) in enumerate(sent):
            b.token[n], b.pos[n], b.n_seq_id[n], b.seq_id[n][0] = ids[r][j], positions[r][j], 1, cache.seqs[r]
            b.logits[n] = every or j == t - 1
        b.n_tokens = len(sent)
        outputs = [(r, j if every else 0) for r, j in sent if every or j == t - 1]
        if bool(hidden) != self.embeddings:
            self.embeddings = bool(hidden)
            lib.llama_set_embeddings(self.ctx, self.embeddings)
        status = lib.llama_decode(self.ctx, b) if sent else 0
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status} (1: no room in the KV memory: all rows of "
                               f"all live caches share n_ctx={self.n_ctx} cells; create the model with a larger n_ctx)")
        width = t if every else 1
        h = self._read("embeddings", self.config.hidden_size, outputs, B, width) if hidden else None
        full = self._read("logits", self.config.vocab_size, outputs, B, width)
        return ModelOutput(logits=full if logits == "all" else full[:, -1:], hidden=h)

    def _read(self, kind: str, size: int, outputs: list[tuple[int, int]], B: int, width: int) -> torch.Tensor:
        """llama.cpp's ``kind`` outputs ("logits" / "embeddings") as [B, width, size]: its buffer holds one row
        per output, in batch order (``outputs``: their (row, column)); padding columns get zeros."""
        if not outputs:
            return torch.zeros(B, width, size)
        ptr = getattr(self.lib, f"llama_get_{kind}")(self.ctx)  # a float * into llama.cpp's buffer: copied
        flat = torch.frombuffer((ctypes.c_float * (len(outputs) * size)).from_address(ctypes.addressof(ptr.contents)),
                                dtype=torch.float32).clone().view(-1, size)
        if len(outputs) == B * width:  # no padding among them: the copy is the tensor
            return flat.view(B, width, size)
        full = torch.zeros(B, width, size)
        full[tuple(torch.tensor(outputs).T)] = flat
        return full


if TYPE_CHECKING:  # mypy checks that the cache satisfies the protocols it claims structurally
    def _satisfies(cache: LlamaCppCache) -> tuple[Cache, CropCache, RowCache]:
        return cache, cache, cache
