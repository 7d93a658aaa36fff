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
* the keys/values live in a :class:`~infergen.cache.Cache`, by default infergen's static,
  preallocated :class:`~infergen.cache.KVCache`;
* the rotary cos/sin values are a table computed once and looked up per position, and q and k are
  rotated together in three operations (:func:`apply_rope`);

The faster paths that are engineering rather than the model -- weights prepacked for oneDNN on the
CPU, a static-shape decode step for ``torch.compile`` and CUDA graphs -- live beside this file in
:mod:`infergen.models.fast`; they swap modules or wrap the model, and this file does not know them.

``LlamaModel.from_hf(hf_model)`` copies the weights of a transformers ``LlamaForCausalLM`` (or
Qwen2/Mistral); its logits match transformers' to about 1e-5 in float32 (tested).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..cache import Cache, KVCache
from .protocol import GenerationDefaults, ModelBase, ModelOutput

NATIVE_MODEL_TYPES = ("llama", "mistral", "qwen2")


class RMSNorm(nn.Module):
    """``weight * x / sqrt(mean(x^2) + eps)`` over the last dimension (normalised in float32)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` [..., dim]; low precision is normalised in float32, cast back, *then* scaled
        (the order the reference uses)."""
        # float32: one fused op, same math
        return (F.rms_norm(x, (x.shape[-1],), self.weight, self.eps) if x.dtype == torch.float32
                else self.weight * F.rms_norm(x.float(), (x.shape[-1],), None, self.eps).to(x.dtype))


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """``x * cos + rotate_half(x) * sin`` in three ops instead of six.

    ``rotate_half(x) = (-x2, x1)`` on the two halves of the last dimension equals
    ``roll(x, d/2) = (x2, x1)`` times the signs ``(-1, +1)``; we fold those signs into the sine table
    once (``sin_signed = (-sin, sin)``), so a step needs a roll, a multiply and a fused multiply-add.
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


class Attention(nn.Module):
    """Grouped-query self-attention of layer ``layer``: fused q|k|v projection, RoPE, the cache, output."""

    def __init__(self, cfg, layer: int):
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        # Llama's attention_bias covers q, k, v *and* o; Qwen2 has biases on q, k, v only
        qwen2 = cfg.model_type == "qwen2"
        bias = bool(getattr(cfg, "attention_bias", qwen2))
        self.wqkv = nn.Linear(cfg.hidden_size, (self.n_heads + 2 * self.n_kv) * self.head_dim, bias=bias)
        self.wo = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=bias and not qwen2)

    def forward(self, x: torch.Tensor, cos, sin, cache: Cache, mask) -> torch.Tensor:
        """``x`` [B, t, D] -> [B, t, D]; appends this layer's keys/values to ``cache``."""
        (B, t, _), hd, nh, nkv = x.shape, self.head_dim, self.n_heads, self.n_kv
        qk, v = self.wqkv(x).view(B, t, nh + 2 * nkv, hd).split((nh + nkv, nkv), dim=2)  # views
        q, k = apply_rope(qk, cos, sin).split((nh, nkv), dim=2)  # q and k rotated in one pass
        k, v = cache.update(self.layer, k.transpose(1, 2), v.transpose(1, 2))  # all so far: [B, n_kv, L, hd]
        groups = nh // nkv
        if t == 1:
            # Decode: the `groups` query heads that share a kv head are stacked as `groups` queries of
            # that head -- GQA without copying keys/values. Mask [B,1,1,L] broadcasts over them.
            attend = decode_attention if B > 1 and x.device.type == "cpu" else F.scaled_dot_product_attention
            return self.wo(attend(q.view(B, nkv, groups, hd), k, v, mask).reshape(B, 1, nh * hd))
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=mask, is_causal=mask is None)
        return self.wo(out.transpose(1, 2).reshape(B, t, nh * hd))


class MLP(nn.Module):
    """SwiGLU feed-forward: ``down(silu(gate(x)) * up(x))``, with gate|up fused into one matrix."""

    def __init__(self, cfg):
        super().__init__()
        bias = bool(getattr(cfg, "mlp_bias", False))  # Llama's mlp_bias covers gate, up and down
        self.w13 = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=bias)  # gate | up
        self.w2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [..., D] -> [..., D]."""
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate).mul_(up))  # in place: one temporary fewer


class Block(nn.Module):
    """One transformer layer: pre-norm attention and pre-norm MLP, each added to the residual stream."""

    def __init__(self, cfg, layer: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = Attention(cfg, layer)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos, sin, cache: Cache, mask) -> torch.Tensor:
        """``x`` [B, t, D] -> [B, t, D] (see :meth:`Attention.forward`)."""
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, mask)
        return x + self.mlp(self.mlp_norm(x))


class LlamaModel(ModelBase):
    """The native decoder. ``forward(input_ids, cache, attention_mask)`` -> :class:`ModelOutput`.

    ``cfg`` is a transformers config (``LlamaConfig``, ``Qwen2Config``, ...): the native model reads
    the same fields, so any checkpoint of the family describes itself. Configurations it cannot run
    exactly (a sliding attention window that a sequence could exceed) are refused with the reason
    (:func:`native_unsupported`); ``load_model`` then uses the transformers adapter.
    ``defaults``: the :class:`~infergen.models.protocol.GenerationDefaults` (EOS/pad ids, name; from the
    config when not given).
    """

    def __init__(self, cfg, defaults: GenerationDefaults | None = None):
        super().__init__()
        if reason := native_unsupported(cfg):
            raise ValueError(f"the native model cannot run this config: {reason}; load it with "
                             "infergen.load_model(..., backend='hf') (the transformers adapter)")
        if getattr(cfg, "head_dim", None) is None:
            cfg.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.config = cfg
        self.defaults = defaults if defaults is not None else GenerationDefaults.from_config(cfg)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight
        self._rope_table: torch.Tensor | None = None  # cos | signed sin per position (see `rope_table`)

    def new_cache(self, batch_size: int, max_len: int, storage=None) -> KVCache:
        """A static cache for ``batch_size`` rows of up to ``max_len`` tokens, on the model's device
        (``storage``: preallocated keys/values to reuse, see :class:`~infergen.cache.KVCache`)."""
        c = self.config
        return KVCache(c.num_hidden_layers, batch_size, c.num_key_value_heads, c.head_dim, max_len,
                       device=self.device, dtype=self.dtype, storage=storage)

    def forward(self, input_ids: torch.Tensor, cache: Cache, attention_mask: torch.Tensor | None = None,
                logits: str = "last", hidden: bool = False) -> ModelOutput:
        """Run ``input_ids`` [B, t] through the model, appending their keys/values to ``cache``.

        ``attention_mask`` [B, t] marks real tokens (1) and padding (0) among the *new* tokens; None
        means all real. ``logits="last"`` returns only the last position's logits [B, 1, V] (all a
        decoder needs after prefill), ``"all"`` every position's [B, t, V]. ``hidden=True`` also
        returns the last layer's (normalised) hidden states [B, t, D].
        """
        t = input_ids.shape[1]
        positions = cache.append_mask(attention_mask, t)  # [B, t]
        mask = cache.attention_mask(t)  # None: plain causal attention (SDPA's fast causal path)
        x = self.blocks(input_ids, positions, self.rope_table(cache.length, positions.device), cache, mask)
        # The norm acts row by row: when only the last position's logits are wanted, normalise only it.
        h = self.norm(x if hidden or logits == "all" else x[:, -1:])
        return ModelOutput(logits=self.lm_head(h[:, -1:] if logits == "last" else h), hidden=h if hidden else None)

    def blocks(self, input_ids: torch.Tensor, positions: torch.Tensor, table: torch.Tensor, cache, mask):
        """Embed ``input_ids`` [B, t] and run every block: the hidden states [B, t, D] before the final norm.

        ``positions`` [B, t] index the :meth:`rope_table` ``table``; ``cache`` takes each layer's keys and
        values (a :class:`~infergen.cache.Cache`, or the static view that
        :func:`~infergen.models.fast.decode_static` passes); ``mask`` is the attention mask (None: causal).
        """
        cos, sin = F.embedding(positions, table).unsqueeze(2).chunk(2, dim=-1)  # [B, t, 1, head_dim] each
        x = self.embed(input_ids)  # [B, t, D]
        for block in self.layers:
            x = block(x, cos, sin, cache, mask)
        return x

    def rope_table(self, needed: int, device: torch.device) -> torch.Tensor:
        """The table ``[n >= needed, 2 * head_dim]`` of ``cos | sin_signed`` per position (see :func:`apply_rope`).

        The angle of feature pair ``i`` at position ``p`` is ``p * theta_i`` with the inverse frequencies
        ``theta_i = base^(-2i/d)`` (``base`` is the config's ``rope_theta``), cos and sin times a scale of
        1; a scaled variant (``rope_type`` llama3, yarn, ...) takes its frequencies and scale from
        transformers. The cos/sin of every position up to ``needed`` are computed once (model dtype, on
        ``device``) and then *looked up*: a step costs one gather instead of a product, a concatenation,
        two trigonometric functions and two casts. The table grows (powers of two) when a longer cache
        needs it. The values are bit-identical to computing them per step.
        """
        table, cfg = self._rope_table, self.config
        if table is None or table.shape[0] < needed or table.device != device or table.dtype != self.dtype:
            params = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
            rope_type = params.get("rope_type", params.get("type", "default"))
            if rope_type == "default":
                base, d = params.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)), cfg.head_dim
                inv_freq, scale = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float64) / d)), 1.0
            else:
                from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
                inv_freq, scale = ROPE_INIT_FUNCTIONS[rope_type](cfg, "cpu")
            n = max(512, 1 << max(needed - 1, 1).bit_length())
            # [n, hd/2]: position times frequency, float32 as the reference
            angles = torch.outer(torch.arange(n, device=device).float(), inv_freq.float().to(device))
            cos, sin = (angles.cos() * scale).to(self.dtype), (angles.sin() * scale).to(self.dtype)
            table = self._rope_table = torch.cat((cos, cos, -sin, sin), dim=-1)  # cos | sin_signed, see apply_rope
        return table

    @classmethod
    def from_hf(cls, hf_model, defaults: GenerationDefaults | None = None) -> "LlamaModel":
        """Build the native model from a transformers Llama/Qwen2/Mistral causal LM (weights copied)."""
        from .loading import native_from_state_dict

        model = native_from_state_dict(hf_model.config, hf_model.state_dict(), defaults)
        return model.to(device=hf_model.device, dtype=hf_model.dtype).eval()


def native_unsupported(cfg) -> str | None:
    """Why the native model cannot run ``cfg`` exactly, or None.

    The native attention is full causal attention. A sliding window (Mistral's ``sliding_window``,
    Qwen2's with ``use_sliding_window``) changes the logits once a sequence is longer than the window,
    so such configs go to the transformers adapter, which implements the window.
    """
    kind = getattr(cfg, "model_type", None)
    if kind not in NATIVE_MODEL_TYPES:
        return f"model_type {kind!r} is not one of {NATIVE_MODEL_TYPES}"
    qwen2_off = kind == "qwen2" and not getattr(cfg, "use_sliding_window", False)  # Qwen2 ignores it when off
    window = None if qwen2_off else getattr(cfg, "sliding_window", None)
    if window is not None and window < (getattr(cfg, "max_position_embeddings", None) or float("inf")):
        return f"it uses a sliding attention window of {window} tokens (the native attention is full)"
    return None


# Re-exported for ``from infergen.models.llama import compile_decode`` (the fast paths live in fast.py,
# which imports nothing from this module at import time).
from .fast import CompiledDecode, PackedLinear, compile_decode, prepack  # noqa: E402,F401
