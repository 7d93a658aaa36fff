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

Two speed choices a reader should notice: q/k/v are one fused matrix (``wqkv``), and so are the
MLP's gate and up projections (``w13``) -- fewer, larger matrix multiplies. And the keys/values live
in infergen's static :class:`~infergen.cache.KVCache`.

``LlamaModel.from_hf(hf_model)`` copies the weights of a transformers ``LlamaForCausalLM`` (or
Qwen2/Mistral); its logits match transformers' to about 1e-5 in float32 (tested).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..cache import KVCache


@dataclass
class ModelOutput:
    """What a forward pass returns: logits [B, t, V] (or [B, 1, V]) and, if asked, hidden [B, t, D]."""
    logits: torch.Tensor
    hidden: torch.Tensor | None = None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()  # normalise in float32 even for bf16 weights, as the reference does
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rotate_half(x):
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension (the 'half' RoPE layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg, layer: int):
        super().__init__()
        self.layer = layer
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        bias = bool(cfg.attention_bias)
        self.wqkv = nn.Linear(cfg.hidden_size, (self.n_heads + 2 * self.n_kv) * self.head_dim, bias=bias)
        self.wo = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=False)

    def forward(self, x, cos, sin, cache: KVCache, mask):
        B, t, _ = x.shape
        hd, nh, nkv = self.head_dim, self.n_heads, self.n_kv
        q, k, v = self.wqkv(x).split([nh * hd, nkv * hd, nkv * hd], dim=-1)
        q = q.view(B, t, nh, hd).transpose(1, 2)  # [B, heads, t, hd]
        k = k.view(B, t, nkv, hd).transpose(1, 2)
        v = v.view(B, t, nkv, hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k, v = cache.update(self.layer, k, v)  # all keys/values so far: [B, n_kv, L, hd]
        groups = nh // nkv
        if t == 1:
            # Decode: the `groups` query heads that share a kv head are stacked as `groups` queries of
            # that head -- GQA without copying keys/values. Mask [B,1,1,L] broadcasts over them.
            q = q.view(B, nkv, groups, hd)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            out = out.reshape(B, 1, nh * hd)
        else:
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
            causal = mask is None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
            out = out.transpose(1, 2).reshape(B, t, nh * hd)
        return self.wo(out)


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.inter = cfg.intermediate_size
        self.w13 = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)  # gate | up
        self.w2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        gate, up = self.w13(x).split(self.inter, dim=-1)
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg, layer: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = Attention(cfg, layer)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, cache, mask):
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, mask)
        return x + self.mlp(self.mlp_norm(x))


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
    the same fields, so any checkpoint of the family describes itself.
    """

    def __init__(self, cfg):
        super().__init__()
        if getattr(cfg, "head_dim", None) is None:
            cfg.head_dim = cfg.hidden_size // cfg.num_attention_heads
        if not hasattr(cfg, "attention_bias"):
            cfg.attention_bias = getattr(cfg, "model_type", "") == "qwen2"
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight
        inv_freq, self.rope_scale = _rope_inverse_frequencies(cfg)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

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
        t = input_ids.shape[1]
        if self.inv_freq.dtype != torch.float32:  # `.to(bfloat16)` also cast this buffer: restore it
            self.inv_freq = _rope_inverse_frequencies(self.config)[0].to(self.device)
        positions = cache.append_mask(attention_mask, t)  # [B, t]
        mask = cache.attention_mask(t)
        if mask is not None and not cache.has_padding and cache.length == t:
            mask = None  # a plain causal prefill: let SDPA use its fast causal path
        angles = positions.unsqueeze(-1).to(self.inv_freq.dtype) * self.inv_freq  # [B, t, hd/2]
        angles = torch.cat((angles, angles), dim=-1)
        cos = (angles.cos() * self.rope_scale).to(self.dtype).unsqueeze(1)  # [B, 1, t, hd]
        sin = (angles.sin() * self.rope_scale).to(self.dtype).unsqueeze(1)
        x = self.embed(input_ids)
        for block in self.layers:
            x = block(x, cos, sin, cache, mask)
        x = self.norm(x)
        h = x if hidden else None
        if logits == "last":
            x = x[:, -1:]
        return ModelOutput(logits=self.lm_head(x), hidden=h)

    # -- loading -----------------------------------------------------------------------------------
    @classmethod
    def from_hf(cls, hf_model) -> "LlamaModel":
        """Build the native model from a transformers Llama/Qwen2/Mistral causal LM (weights copied)."""
        cfg = hf_model.config
        model = cls(cfg)
        model.load_hf_state_dict(hf_model.state_dict())
        return model.to(device=hf_model.device, dtype=hf_model.dtype).eval()

    def load_hf_state_dict(self, sd: dict):
        """Map transformers' parameter names onto ours, fusing q|k|v and gate|up."""
        sd = {k.removeprefix("model."): v for k, v in sd.items()}
        new = {"embed.weight": sd["embed_tokens.weight"], "norm.weight": sd["norm.weight"]}
        new["lm_head.weight"] = sd.get("lm_head.weight", sd["embed_tokens.weight"])
        for i in range(self.config.num_hidden_layers):
            p = f"layers.{i}."
            a = p + "self_attn."
            new[p + "attn.wqkv.weight"] = torch.cat([sd[a + n + "_proj.weight"] for n in "qkv"])
            if self.config.attention_bias:
                new[p + "attn.wqkv.bias"] = torch.cat([sd[a + n + "_proj.bias"] for n in "qkv"])
            new[p + "attn.wo.weight"] = sd[a + "o_proj.weight"]
            new[p + "mlp.w13.weight"] = torch.cat([sd[p + "mlp.gate_proj.weight"], sd[p + "mlp.up_proj.weight"]])
            new[p + "mlp.w2.weight"] = sd[p + "mlp.down_proj.weight"]
            new[p + "attn_norm.weight"] = sd[p + "input_layernorm.weight"]
            new[p + "mlp_norm.weight"] = sd[p + "post_attention_layernorm.weight"]
        missing, unexpected = self.load_state_dict(new, strict=False)
        missing = [m for m in missing if not (m == "lm_head.weight" and self.config.tie_word_embeddings)]
        if missing or unexpected:
            raise ValueError(f"weights do not fit the model: missing {missing}, unexpected {unexpected}")
        return self


NATIVE_MODEL_TYPES = ("llama", "mistral", "qwen2")
