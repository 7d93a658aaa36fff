"""A Llama-family decoder in one file, read top to bottom (the nanoGPT / gpt-fast style).

SmolLM2, Llama 2/3, Mistral and Qwen2 share one architecture: token embedding, then ``n_layers``
identical blocks, then a final norm and a linear head onto the vocabulary. Each block is

    x = x + Attention(RMSNorm(x))      grouped-query attention with rotary position embeddings
    x = x + MLP(RMSNorm(x))            SwiGLU: down(silu(gate(x)) * up(x))

* **RMSNorm** rescales each vector by the root of its mean square (no mean subtraction, no bias).
* **RoPE** rotates each (even, odd) pair of query/key features by an angle proportional to the
  token's position, so the dot product q.k depends on the *relative* distance of the two tokens.
* **Grouped-query attention (GQA)**: ``n_heads`` query heads share ``n_kv_heads`` key/value heads
  (SmolLM2-135M: 9 query heads, 3 kv heads), which shrinks the KV cache by ``n_heads / n_kv_heads``.
* **Tied embeddings**: the output head reuses the input embedding matrix.
* **Qwen2** adds a bias to the q/k/v projections (``attention_bias`` in the config).

Speed choices a reader should notice (decoding at batch 1 reads every weight once per token, and on
a CPU each of the ~30 small operations per layer also costs a few microseconds of Python dispatch):

* q/k/v are one fused matrix (``wqkv``), and so are the MLP's gate and up projections (``w13``) --
  fewer, larger matrix multiplies;
* the keys/values live in infergen's static, preallocated :class:`~infergen.cache.KVCache`;
* the rotary cos/sin values are a table computed once and looked up per position, and q and k are
  rotated together in three operations (:func:`apply_rope`);
* rows are flattened to ``[B * t, D]`` through the blocks, so every linear layer is a plain 2-D
  matrix multiply;
* on the CPU, decode steps multiply with weights prepacked for oneDNN (:class:`Linear`).

``LlamaModel.from_hf(hf_model)`` copies the weights of a transformers ``LlamaForCausalLM`` (or
Qwen2/Mistral); its logits match transformers' to about 1e-5 in float32 (tested).
"""
from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from ..cache import KVCache, StaticKV
from .protocol import GenerationDefaults, ModelOutput


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        if x.dtype == torch.float32 and _HAS_RMS_NORM:
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)  # one fused op, same math
        # Low precision: normalise in float32, cast back, *then* scale -- the order the reference uses.
        x32 = x.float()
        if _HAS_RMS_NORM:
            x32 = F.rms_norm(x32, (x.shape[-1],), None, self.eps)
        else:  # pragma: no cover  (torch < 2.4)
            x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


_HAS_RMS_NORM = hasattr(F, "rms_norm")


def rotate_half(x):
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension (the 'half' RoPE layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x, cos, sin_signed):
    """``x * cos + rotate_half(x) * sin`` in three ops instead of six.

    ``rotate_half(x) = (-x2, x1)`` equals ``roll(x, d/2) = (x2, x1)`` times the signs ``(-1, +1)``; we
    fold those signs into the sine table once (``sin_signed = (-sin, sin)``), so a step needs a roll,
    a multiply and a fused multiply-add.
    """
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), sin_signed)


def decode_attention(q, k, v, mask):
    """``softmax(q k^T / sqrt(d), masked) v`` written out, for decode steps of a batch on the CPU.

    ``q`` [B, kv_heads, groups, d] (one new token per row), ``k``/``v`` [B, kv_heads, L, d], ``mask``
    [B, 1, 1, L] (True = attend) or None. The same math as ``F.scaled_dot_product_attention``, but the
    CPU's fused kernel pays a fixed cost for every (row, head) block of queries, which with a handful
    of queries per block dominates: two batched matrix products are ~2x faster from 4 rows on. The
    softmax runs in float32 whatever the dtype.
    """
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5)
    if mask is not None:
        scores.masked_fill_(~mask, float("-inf"))
    return torch.matmul(scores.softmax(-1, dtype=torch.float32).to(v.dtype), v)


class Linear(nn.Linear):
    """``nn.Linear`` that, in CPU decode steps, multiplies with a copy of its weight prepacked by oneDNN.

    At batch 1 a linear layer is a matrix-vector product whose speed is set by how fast the weight
    streams from memory. oneDNN (PyTorch's CPU kernel library) can reorder a weight once into the
    blocked layout its kernels read best; with that copy the decode matmuls of SmolLM2-135M stream
    the same bytes 2-3x faster than ``F.linear`` on the plain row-major matrix (2 cores, float32; the
    same holds for bfloat16), at batch 1 as at batch 16. The price is memory: the packed copy sits
    next to the original weight (which the state dict, the tied embedding, prefill and the GPU use).
    The copy is packed without a batch-size hint: a hint of 1 picks a layout that is ~1.4x slower.

    Only decode steps take this path: the caller says so with ``packed=True`` (:class:`LlamaModel` passes
    it for one-token steps when its ``prepack`` setting is on). On a long prefill oneDNN's blocking rounds
    differently enough to double the (tiny) difference from transformers' logits, so prefill keeps
    ``F.linear``. The packed copy is rebuilt when the weight changes (new data, new dtype, or an
    in-place update). Never used with autograd or under ``torch.compile``.
    """

    def forward(self, x, packed: bool = False):
        if packed and not _is_compiling():
            weight = self.packed_weight(x)
            if weight is not None:
                return torch.ops.mkldnn._linear_pointwise(x, weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)

    def packed_weight(self, x: torch.Tensor) -> torch.Tensor | None:
        """The oneDNN-packed copy of the weight for input ``x`` (None where packing does not apply).

        Packed on first use and kept on the module; packed again when the weight changed since
        (new data: another address or dtype; an in-place update: another version).
        """
        w = self.weight
        if x.device.type != "cpu" or x.dtype != w.dtype or w.dtype not in _PACKABLE or torch.is_grad_enabled():
            return None
        try:
            identity = (w.data_ptr(), w.dtype, w._version)
        except RuntimeError:  # an inference tensor (made under inference_mode) has no version counter
            identity = (w.data_ptr(), w.dtype, 0)
        entry = self.__dict__.get("_packed")
        if entry is None or entry[0] is not w or entry[1] != identity:
            entry = self.__dict__["_packed"] = (w, identity, torch.ops.mkldnn._reorder_linear_weight(w.detach()))
        return entry[2]

    def __getstate__(self):  # copies and pickles leave the packed copy behind: it is rebuilt on first use
        state = dict(super().__getstate__())
        state.pop("_packed", None)
        return state


def _packable_dtypes():
    try:
        if not torch.backends.mkldnn.is_available():
            return ()
        return (torch.float32, torch.bfloat16) if torch.ops.mkldnn._is_mkldnn_bf16_supported() else (torch.float32,)
    except (AttributeError, RuntimeError):  # pragma: no cover  (a build without oneDNN)
        return ()


_PACKABLE = _packable_dtypes()


class Attention(nn.Module):
    def __init__(self, cfg, layer: int):
        super().__init__()
        self.layer = layer
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        bias = bool(cfg.attention_bias)
        self.wqkv = Linear(cfg.hidden_size, (self.n_heads + 2 * self.n_kv) * self.head_dim, bias=bias)
        # Llama's `attention_bias` also gives o_proj a bias; Qwen2 has q/k/v biases only (see `_bias_layout`).
        self.wo = Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=_bias_layout(cfg)["o_proj"])

    def forward(self, x, B: int, t: int, cos, sin, cache: KVCache, mask, packed: bool = False):
        """``x`` [B * t, D] (rows flattened: every linear layer is then a plain 2-D matmul)."""
        hd, nh, nkv = self.head_dim, self.n_heads, self.n_kv
        qk, v = self.wqkv(x, packed).view(B, t, nh + 2 * nkv, hd).split((nh + nkv, nkv), dim=2)  # views
        qk = apply_rope(qk, cos, sin)  # rotate q and k in one pass: [B, t, nh+nkv, hd]
        q, k = qk.split((nh, nkv), dim=2)
        k, v = cache.update(self.layer, k.transpose(1, 2), v.transpose(1, 2))  # all so far: [B, n_kv, L, hd]
        groups = nh // nkv
        if t == 1:
            # Decode: the `groups` query heads that share a kv head are stacked as `groups` queries of
            # that head -- GQA without copying keys/values. Mask [B,1,1,L] broadcasts over them.
            q = q.view(B, nkv, groups, hd)
            if B > 1 and x.device.type == "cpu" and not _is_compiling():
                out = decode_attention(q, k, v, mask)
            else:
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            out = out.reshape(B, nh * hd)
        else:
            q = q.transpose(1, 2)
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
            causal = mask is None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
            out = out.transpose(1, 2).reshape(B * t, nh * hd)
        return self.wo(out, packed)


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.inter = cfg.intermediate_size
        bias = _bias_layout(cfg)["mlp"]
        self.w13 = Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=bias)  # gate | up
        self.w2 = Linear(cfg.intermediate_size, cfg.hidden_size, bias=bias)

    def forward(self, x, packed: bool = False):
        gate, up = self.w13(x, packed).split(self.inter, dim=-1)
        return self.w2(F.silu(gate).mul_(up), packed)  # in place: one temporary fewer


class Block(nn.Module):
    def __init__(self, cfg, layer: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = Attention(cfg, layer)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, B, t, cos, sin, cache, mask, packed: bool = False):
        x = x + self.attn(self.attn_norm(x), B, t, cos, sin, cache, mask, packed)
        return x + self.mlp(self.mlp_norm(x), packed)


def _rope_inverse_frequencies(cfg):
    """Inverse frequencies theta_i = base^(-2i/d), or a scaled variant (llama3, linear, ...)."""
    params = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        base = params.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
        d = cfg.head_dim
        return 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float64) / d)).float(), 1.0
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # scaled variants: reuse theirs
    inv_freq, scale = ROPE_INIT_FUNCTIONS[rope_type](cfg, "cpu")
    return inv_freq.float(), float(scale)


class LlamaModel(nn.Module):
    """The native decoder. ``forward(input_ids, cache, attention_mask)`` -> :class:`ModelOutput`.

    ``cfg`` is a transformers config (``LlamaConfig``, ``Qwen2Config``, ...): the native model reads
    the same fields, so any checkpoint of the family describes itself. Configurations it cannot run
    exactly (a sliding attention window that a sequence could exceed) are refused with the reason
    (:func:`native_unsupported`); ``load_model`` then uses the transformers adapter.
    ``defaults``: the :class:`~infergen.models.protocol.GenerationDefaults` (EOS/pad ids, name; from the
    config when not given). ``prepack``: multiply with oneDNN-packed weights in CPU decode steps.
    """

    def __init__(self, cfg, defaults: GenerationDefaults | None = None, prepack: bool = True):
        super().__init__()
        reason = native_unsupported(cfg)
        if reason:
            raise ValueError(f"the native model cannot run this config: {reason}; load it with "
                             "infergen.load_model(..., backend='hf') (the transformers adapter)")
        if getattr(cfg, "head_dim", None) is None:
            cfg.head_dim = cfg.hidden_size // cfg.num_attention_heads
        if not hasattr(cfg, "attention_bias"):
            cfg.attention_bias = getattr(cfg, "model_type", "") == "qwen2"
        self.config = cfg
        self.defaults = defaults if defaults is not None else GenerationDefaults.from_config(cfg)
        self.prepack = bool(prepack)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight
        inv_freq, self.rope_scale = _rope_inverse_frequencies(cfg)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._rope_table = None  # cos | signed sin per position, built on first use (see `rope`)

    # -- the protocol every decoder relies on ------------------------------------------------------
    @property
    def device(self):
        return self.embed.weight.device

    @property
    def dtype(self):
        return self.embed.weight.dtype

    @property
    def max_context(self) -> int:
        return int(getattr(self.config, "max_position_embeddings", 2048))

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        """A static cache for ``batch_size`` rows of up to ``max_len`` tokens, on the model's device."""
        c = self.config
        return KVCache(c.num_hidden_layers, batch_size, c.num_key_value_heads, c.head_dim, max_len,
                       device=self.device, dtype=self.dtype)

    def forward(self, input_ids: torch.Tensor, cache: KVCache, attention_mask: torch.Tensor | None = None,
                logits: str = "last", hidden: bool = False) -> ModelOutput:
        """Run ``input_ids`` [B, t] through the model, appending their keys/values to ``cache``.

        ``attention_mask`` [B, t] marks real tokens (1) and padding (0) among the *new* tokens; None
        means all real. ``logits="last"`` returns only the last position's logits [B, 1, V] (all a
        decoder needs after prefill), ``"all"`` every position's [B, t, V]. ``hidden=True`` also
        returns the last layer's (normalised) hidden states [B, t, D].
        """
        B, t = input_ids.shape
        if self.inv_freq.dtype != torch.float32:  # `.to(bfloat16)` also cast this buffer: restore it
            self.inv_freq = _rope_inverse_frequencies(self.config)[0].to(self.device)
            self._rope_table = None
        positions = cache.append_mask(attention_mask, t)  # [B, t]
        mask = cache.attention_mask(t)
        if mask is not None and not cache.has_padding and cache.length == t:
            mask = None  # a plain causal prefill: let SDPA use its fast causal path
        cos, sin = self.rope(positions, cache.length)
        x = self.embed(input_ids).view(B * t, -1)  # rows flattened through the blocks
        packed = self.prepack and t == 1  # decode steps multiply with the packed weights (see Linear)
        for block in self.layers:
            x = block(x, B, t, cos, sin, cache, mask, packed)
        x = x.view(B, t, -1)
        h = None
        if hidden:
            x = h = self.norm(x)
            if logits == "last":
                x = x[:, -1:]
        else:
            if logits == "last":
                x = x[:, -1:]  # the norm acts row by row: normalising only the last row is the same
            x = self.norm(x)
        return ModelOutput(logits=self.lm_head(x, packed), hidden=h)

    def rope(self, positions: torch.Tensor, needed: int):
        """Rotary tables for ``positions`` [B, t]: ``(cos, sin_signed)``, each [B, t, 1, head_dim].

        The cos/sin of every position up to ``needed`` are computed once into a table (model dtype,
        model device) and then *looked up*: a step costs one gather instead of a product, a
        concatenation, two trigonometric functions and two casts. The table grows (powers of two)
        when a longer cache needs it. The values are bit-identical to computing them per step.
        """
        table = self.rope_table(needed, positions.device)
        both = F.embedding(positions, table).unsqueeze(2)  # [B, t, 1, 2 * head_dim]
        hd = table.shape[-1] // 2
        return both[..., :hd], both[..., hd:]

    def rope_table(self, needed: int, device=None) -> torch.Tensor:
        """The table ``[n >= needed, 2 * head_dim]`` of ``cos | sin_signed`` per position (see :meth:`rope`)."""
        device = torch.device(device) if device is not None else self.device
        table = self._rope_table
        if table is None or table.shape[0] < needed or table.device != device or table.dtype != self.dtype:
            n = max(512, 1 << max(needed - 1, 1).bit_length())
            steps = torch.arange(n, device=self.inv_freq.device, dtype=torch.float32)
            angles = steps[:, None] * self.inv_freq[None, :]  # [n, hd/2], float32 as the reference
            angles = torch.cat((angles, angles), dim=-1)
            cos = (angles.cos() * self.rope_scale).to(self.dtype)
            sin = (angles.sin() * self.rope_scale).to(self.dtype)
            half = sin.shape[-1] // 2
            sin_signed = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)  # see apply_rope
            table = self._rope_table = torch.cat((cos, sin_signed), dim=-1).to(device)
        return table

    def decode_static(self, input_ids, positions, column, mask, k, v) -> torch.Tensor:
        """One decode step with *static shapes*: what ``torch.compile(mode="reduce-overhead")`` can capture.

        The eager :meth:`forward` slices the cache to the filled length, a Python int that grows every
        step: a compiled graph would be specialised to each length (a recompilation per token). Here
        every shape is fixed by the cache's size: attention runs over *all* ``max_len`` columns and
        ``mask`` [B, 1, 1, max_len] (True = attend) hides the unfilled ones; the new keys/values are
        written at ``column`` (a LongTensor [1]) with ``index_copy_``; ``positions`` [B, 1] is a tensor.
        No ``.item()``, no branch on data. ``k``/``v`` are the cache's tensors (written in place).
        Returns logits [B, V]. Call :meth:`rope_table` once beforehand (tables are built eagerly).
        Use it through :func:`compile_decode`, which does the bookkeeping.
        """
        B = input_ids.shape[0]
        table = self._rope_table
        both = F.embedding(positions, table).unsqueeze(2)
        hd = table.shape[-1] // 2
        cos, sin = both[..., :hd], both[..., hd:]
        kv = StaticKV(k, v, column)
        x = self.embed(input_ids).view(B, -1)
        for block in self.layers:
            x = block(x, B, 1, cos, sin, kv, mask)
        return self.lm_head(self.norm(x))

    # -- loading -----------------------------------------------------------------------------------
    @classmethod
    def from_hf(cls, hf_model, defaults: GenerationDefaults | None = None) -> "LlamaModel":
        """Build the native model from a transformers Llama/Qwen2/Mistral causal LM (weights copied)."""
        cfg = hf_model.config
        model = cls(cfg, defaults=defaults)
        model.load_hf_state_dict(hf_model.state_dict())
        return model.to(device=hf_model.device, dtype=hf_model.dtype).eval()

    def load_hf_state_dict(self, sd: dict):
        """Map transformers' parameter names onto ours, fusing q|k|v and gate|up.

        Every weight of ``sd`` must find its place: a weight left over (a bias this model would not use,
        say) is refused by name instead of being dropped, and so is a weight the model needs but ``sd``
        lacks.
        """
        source = {k.removeprefix("model."): v for k, v in sd.items()}
        source = {k: v for k, v in source.items() if not k.endswith("rotary_emb.inv_freq")}  # a derived buffer
        used: set[str] = set()

        def take(*names):
            missing = [n for n in names if n not in source]
            if missing:
                raise ValueError(f"weights do not fit the model: the checkpoint lacks {missing}")
            used.update(names)
            return [source[n] for n in names]

        tied = self.config.tie_word_embeddings
        new = {"embed.weight": take("embed_tokens.weight")[0], "norm.weight": take("norm.weight")[0]}
        new["lm_head.weight"] = take("lm_head.weight")[0] if "lm_head.weight" in source or not tied else new["embed.weight"]
        biases = _bias_layout(self.config)
        for i in range(self.config.num_hidden_layers):
            p = f"layers.{i}."
            a = p + "self_attn."
            m = p + "mlp."
            new[p + "attn.wqkv.weight"] = torch.cat(take(*(a + n + "_proj.weight" for n in "qkv")))
            if biases["qkv"]:
                new[p + "attn.wqkv.bias"] = torch.cat(take(*(a + n + "_proj.bias" for n in "qkv")))
            new[p + "attn.wo.weight"] = take(a + "o_proj.weight")[0]
            if biases["o_proj"]:
                new[p + "attn.wo.bias"] = take(a + "o_proj.bias")[0]
            new[p + "mlp.w13.weight"] = torch.cat(take(m + "gate_proj.weight", m + "up_proj.weight"))
            new[p + "mlp.w2.weight"] = take(m + "down_proj.weight")[0]
            if biases["mlp"]:
                new[p + "mlp.w13.bias"] = torch.cat(take(m + "gate_proj.bias", m + "up_proj.bias"))
                new[p + "mlp.w2.bias"] = take(m + "down_proj.bias")[0]
            new[p + "attn_norm.weight"] = take(p + "input_layernorm.weight")[0]
            new[p + "mlp_norm.weight"] = take(p + "post_attention_layernorm.weight")[0]
        left = sorted(set(source) - used)
        if left:
            raise ValueError(f"weights do not fit the model: the checkpoint has weights the native model would "
                             f"not use: {left[:8]}{' ...' if len(left) > 8 else ''}")
        missing, unexpected = self.load_state_dict(new, strict=False)
        missing = [k for k in missing if not (k == "lm_head.weight" and tied)]
        if missing or unexpected:
            raise ValueError(f"weights do not fit the model: missing {missing}, unexpected {unexpected}")
        return self


def _bias_layout(cfg) -> dict:
    """Which projections carry a bias. Llama's ``attention_bias`` covers q, k, v *and* o; Qwen2 has q/k/v
    biases only; ``mlp_bias`` (Llama) covers gate, up and down."""
    attention = bool(getattr(cfg, "attention_bias", getattr(cfg, "model_type", "") == "qwen2"))
    return {"qkv": attention, "o_proj": attention and getattr(cfg, "model_type", "") != "qwen2",
            "mlp": bool(getattr(cfg, "mlp_bias", False))}


def native_unsupported(cfg) -> str | None:
    """Why the native model cannot run ``cfg`` exactly, or None.

    The native attention is full causal attention. A sliding window (Mistral's ``sliding_window``,
    Qwen2's with ``use_sliding_window``) changes the logits once a sequence is longer than the window,
    so such configs go to the transformers adapter, which implements the window.
    """
    if getattr(cfg, "model_type", None) not in NATIVE_MODEL_TYPES:
        return f"model_type {getattr(cfg, 'model_type', None)!r} is not one of {NATIVE_MODEL_TYPES}"
    window = getattr(cfg, "sliding_window", None)
    if getattr(cfg, "model_type", "") == "qwen2" and not getattr(cfg, "use_sliding_window", False):
        window = None
    context = getattr(cfg, "max_position_embeddings", None)
    if window is not None and (context is None or window < context):
        return f"it uses a sliding attention window of {window} tokens (the native attention is full)"
    return None


class CompiledDecode(nn.Module):
    """A native model whose decode steps run :meth:`LlamaModel.decode_static` (optionally compiled).

    It speaks the same model protocol as the model it wraps (``forward``, ``new_cache``, ``device``,
    ``dtype``, ``max_context``, ``config``, ``defaults``), so every decoder runs on it unchanged.
    Prefill, ``logits="all"`` and ``hidden=True`` calls go to the eager model; one-token calls take
    the static path: the padding bookkeeping (positions, the mask of filled columns) happens eagerly
    in Python, then one captured graph runs the whole step.

    Two details make CUDA graphs pay off: ``new_cache`` rounds ``max_len`` up to a multiple of
    ``bucket`` (few distinct shapes, so few compilations) and reuses the key/value tensors of a cache
    that is no longer referenced (a CUDA graph replays fixed addresses; reuse avoids re-recording).
    """

    def __init__(self, model: "LlamaModel", compile: bool = True, mode: str = "reduce-overhead",
                 bucket: int = 256):
        super().__init__()
        if not isinstance(model, LlamaModel):
            raise TypeError(f"compile_decode needs infergen's native LlamaModel, got {type(model).__name__}")
        if not isinstance(bucket, int) or isinstance(bucket, bool) or bucket < 1:
            raise ValueError(f"bucket must be an integer >= 1, got {bucket!r}")
        self.model, self.bucket, self.compiled = model, bucket, bool(compile)
        self.step = (torch.compile(model.decode_static, mode=mode, fullgraph=True, dynamic=False)
                     if compile else model.decode_static)
        self._pool: dict = {}  # (B, max_len) -> (k, v, weak reference to the cache using them)

    @property
    def config(self):
        return self.model.config

    @property
    def defaults(self) -> GenerationDefaults:
        return self.model.defaults

    @property
    def device(self):
        return self.model.device

    @property
    def dtype(self):
        return self.model.dtype

    @property
    def max_context(self) -> int:
        return self.model.max_context

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        max_len = min(-(-max_len // self.bucket) * self.bucket, max(max_len, self.model.max_context))
        c = self.model.config
        key = (batch_size, max_len)
        entry = self._pool.get(key)
        free = entry is not None and (entry[2]() is None or entry[2]().k is not entry[0])
        if free:
            storage = entry[0], entry[1]
        else:
            shape = (c.num_hidden_layers, batch_size, c.num_key_value_heads, max_len, c.head_dim)
            storage = (torch.zeros(shape, device=self.device, dtype=self.dtype),
                       torch.zeros(shape, device=self.device, dtype=self.dtype))
            if self.compiled and storage[0].device.type == "cuda":
                for t in storage:
                    torch._dynamo.mark_static_address(t)
        cache = KVCache(c.num_hidden_layers, batch_size, c.num_key_value_heads, c.head_dim, max_len,
                        device=self.device, dtype=self.dtype, storage=storage)
        if free or entry is None:  # the pooled pair is in use elsewhere: leave it to its user
            self._pool[key] = (cache.k, cache.v, weakref.ref(cache))
        self.model.rope_table(max_len)
        return cache

    def forward(self, input_ids, cache, attention_mask=None, logits="last", hidden=False) -> ModelOutput:
        t = input_ids.shape[1]
        if t != 1 or hidden or logits != "last" or not isinstance(cache, KVCache):
            return self.model(input_ids, cache, attention_mask=attention_mask, logits=logits, hidden=hidden)
        positions = cache.append_mask(attention_mask, 1)  # eager bookkeeping: the new column is filled
        column = cache.length - 1
        mask = cache.mask.clone()
        mask[:, column] = True  # a (padding) query always sees itself: no empty softmax row
        self.model.rope_table(cache.max_len)
        col = torch.tensor([column], device=cache.k.device)
        out = self.step(input_ids, positions, col, mask[:, None, None, :], cache.k, cache.v)
        return ModelOutput(logits=out[:, None])


def compile_decode(model: "LlamaModel", compile: bool = True, mode: str = "reduce-overhead",
                   bucket: int = 256) -> CompiledDecode:
    """Wrap ``model`` so its decode steps run as one static-shape, compiled graph (the GPU fast path).

    ``fast = compile_decode(model); greedy_search(fast, ids, 128)``. On a GPU, ``mode="reduce-overhead"``
    captures the step in a CUDA graph: a single launch replays all ~300 kernels of a step, which
    removes the Python and launch overhead that dominates small-batch decoding there. The first calls
    compile (tens of seconds). ``compile=False`` runs the same static-shape step eagerly (this is how
    the tests check it gives the tokens of the eager path). On a CPU it is correct but rarely faster
    than the eager model (whose packed-weight kernels the compiled graph does not use).
    """
    return CompiledDecode(model, compile=compile, mode=mode, bucket=bucket)


# True while torch.compile traces the model (then the eager-only CPU fast paths step aside).
_is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)


NATIVE_MODEL_TYPES = ("llama", "mistral", "qwen2")
