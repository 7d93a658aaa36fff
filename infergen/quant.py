"""Int8 weight-only quantization: a quarter of the bytes, so up to four times the decode speed.

Decoding at batch 1 reads every weight once per token (see :mod:`infergen.bench`), so the speed is
roughly ``memory bandwidth / weight bytes``. Storing the weights of the linear layers as 8-bit
integers instead of 32-bit floats cuts those bytes by four (by two against bfloat16). Activations,
norms, the KV cache and the embedding lookup stay in floating point: "weight-only" quantization.

The scheme (symmetric, per output channel)
------------------------------------------
For each row ``w`` of a weight matrix (one output feature), pick the scale ``s = max|w| / 127`` and
store ``q = round(w / s)``, an integer in ``[-127, 127]``. The layer computes

    y_j = sum_i x_i * w_ji  ~=  s_j * sum_i x_i * q_ji

so the scale is applied once per output, after the dot product. Per-*channel* scales matter: one
scale for the whole matrix would let a single large weight flatten every other row to a few levels.
The rounding error per weight is at most ``s / 2``, about 0.4 % of the row's largest weight.

The kernel matters as much as the format. Dequantizing on the fly in Python (``q.float() * s``, then
a float matmul) writes a float copy of the weight at every call -- *more* memory traffic than the
float32 model. On the CPU, PyTorch's ``torch._weight_int8pack_mm`` reads the int8 weight directly
inside the matmul (activations in bfloat16); elsewhere the fallback dequantizes, which is correct but
not fast (on a GPU use a compiled kernel, e.g. ``torch.compile`` fuses the dequantization).

The quality cost is measured, not assumed: :func:`log_likelihood` scores a fixed text, and
:func:`compare_quality` reports the change in mean log-likelihood (perplexity), the KL divergence
between the float and the quantized next-token distributions, and how often their top-1 tokens agree.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: returns ``(q int8 [N, K], scales float32 [N])`` with ``weight ~= q * scales[:, None]``.

    A row of zeros gets scale 1 (any scale represents it exactly) instead of a division by zero.
    """
    if weight.dim() != 2:
        raise ValueError(f"weight must be a 2-D matrix [out_features, in_features], got shape {tuple(weight.shape)}")
    w = weight.detach().float()
    scales = w.abs().amax(dim=1) / 127.0
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    q = torch.round(w / scales[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scales


class Int8Linear(nn.Module):
    """A drop-in replacement for ``nn.Linear`` holding int8 weights and per-output-channel scales.

    ``forward`` accepts the same inputs as the float layer and returns the input's dtype. The int8
    weight and the scales are *buffers* (not parameters): nothing here is trainable.
    """

    qweight: torch.Tensor
    scales: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, linear: nn.Linear):
        super().__init__()
        q, scales = quantize_weight(linear.weight)  # on the weight's device
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("qweight", q)
        self.register_buffer("scales", scales.to(torch.bfloat16))  # the kernel's activation dtype, too
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        # the CPU int8 weight-only matmul (torch >= 2.3; portable CPU kernel): absent in torch 2.2, our floor
        self.packed = q.device.type == "cpu" and hasattr(torch, "_weight_int8pack_mm")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``F.linear(x, weight, bias)`` on the int8 weight: any shape ``[..., in_features]``, ``x``'s dtype out."""
        rows = x.reshape(-1, self.in_features)  # the kernels take [N, in] rows (a view, no copy)
        # the int8 kernel on the CPU (.to: a no-op when the dtypes already agree); elsewhere the portable
        # fallback: dequantize (correct everywhere, but it writes a float weight copy)
        y = (torch._weight_int8pack_mm(rows.to(self.scales.dtype), self.qweight, self.scales).to(x.dtype)
             if self.packed and x.device.type == "cpu"
             else F.linear(rows, self.qweight.to(x.dtype) * self.scales.to(x.dtype)[:, None]))
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        """The layer's sizes and kernel, as ``print(model)`` shows them."""
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel, packed={self.packed}"


def quantize_int8(model: nn.Module, skip=()) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` by an :class:`Int8Linear` (in place); returns the model.

    Works on infergen's native model (q|k|v, o, gate|up, down and the output head) and on any module
    tree of ``nn.Linear`` layers. ``skip``: names (as in ``named_modules``) to leave in floating point.
    A tied output head gets its own int8 copy; the embedding table it shared stays in float (a lookup
    reads one row per token, so its size does not slow decoding). The int8 kernel takes its activations
    in the scales' dtype (bfloat16).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear) and name not in skip]
    if not targets:
        raise ValueError("model has no nn.Linear layer to quantize")
    for name, linear in targets:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, Int8Linear(linear))
    return model


def log_likelihood(model, input_ids: torch.Tensor) -> dict:
    """Log-likelihood of a text under ``model``: ``sum_t log p(x_t | x_<t)`` over tokens 2..T.

    ``input_ids`` [1, T] (or [T]). Returns ``total_logprob``, ``mean_logprob`` (per predicted token),
    ``perplexity = exp(-mean_logprob)``, ``tokens`` and the per-position log-probabilities of the
    full next-token distributions (``logprobs`` [T-1, V], for :func:`compare_quality`).
    """
    from .models.hf import as_model

    model = as_model(model)
    ids = input_ids.reshape(1, -1).to(model.device)
    if ids.shape[1] < 2:
        raise ValueError(f"input_ids needs at least 2 tokens to score, got {ids.shape[1]}")
    with torch.inference_mode():
        logits = model(ids, model.new_cache(1, ids.shape[1]), logits="all").logits[0, :-1]
        logprobs = torch.log_softmax(logits.float(), -1)
        picked = logprobs.gather(-1, ids[0, 1:, None]).squeeze(-1)
    mean = float(picked.mean())
    return {"total_logprob": float(picked.sum()), "mean_logprob": mean, "perplexity": math.exp(-mean),
            "tokens": int(picked.numel()), "logprobs": logprobs}


def compare_quality(reference, candidate, input_ids: torch.Tensor) -> dict:
    """How much ``candidate`` (e.g. the int8 model) departs from ``reference`` on a fixed text.

    Returns both perplexities, ``delta_mean_logprob`` (candidate - reference, per token; negative =
    worse), the mean ``kl`` divergence KL(reference || candidate) of the next-token distributions in
    nats, and ``top1_agreement``: the fraction of positions where both predict the same next token.
    """
    ref, cand = (log_likelihood(model, input_ids) for model in (reference, candidate))
    p, q = ref.pop("logprobs"), cand.pop("logprobs")
    return {"reference": ref, "candidate": cand, "delta_mean_logprob": cand["mean_logprob"] - ref["mean_logprob"],
            "kl": float((p.exp() * (p - q)).sum(-1).mean()),  # KL(reference || candidate), per position
            "top1_agreement": float((p.argmax(-1) == q.argmax(-1)).float().mean())}
