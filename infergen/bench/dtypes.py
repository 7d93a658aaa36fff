"""bfloat16 and int8 weights against float32: greedy speed (alternating, with each format's matrix
products alone beside it) and the quality cost on a fixed text (:data:`TEXT`)."""
from __future__ import annotations

import copy

import torch

from .records import DtypeResult, DtypeRow
from .roofline import decode_matmuls, kv_bytes_per_token, roofline, weight_bytes

TEXT = ("The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
        "combined movable metal type, oil-based ink and a wooden press adapted from those used to make "
        "wine. Books, which had been copied by hand, became cheaper and more common, and ideas spread "
        "faster across Europe than ever before.")
"""The fixed text on which the quality cost of bfloat16/int8 weights is measured."""


def measure(bench, bandwidth_GBps: float | None = None) -> DtypeResult:
    from ..decoding.sampling import greedy_search
    from ..quant import compare_quality

    n = bench.size["dtype_tokens"]
    ids, _ = bench.batch(1)
    models = {"float32": bench.model, "bfloat16": copy.deepcopy(bench.model).to(torch.bfloat16)}
    notes = {}
    try:
        from ..quant import quantize_int8

        models["int8"] = quantize_int8(copy.deepcopy(models["bfloat16"]))
        notes["int8"] = "int8 weights, bfloat16 activations"
    except (ImportError, RuntimeError, NotImplementedError) as err:
        notes["int8"] = f"skipped: {err}"
    contenders = {}
    for name, m in models.items():
        contenders[name] = lambda m=m: greedy_search(m, ids, n, eos_token_id=[])
        contenders[name + " matmuls"] = decode_matmuls(m, n)  # its matrix products alone, side by side
    timed = {c.name: c for c in bench.compare(contenders, n, "dtypes")}
    text_ids = bench.tok(TEXT, return_tensors="pt").input_ids.to(bench.device)
    rows = []
    for name, m in models.items():
        q = compare_quality(bench.model, m, text_ids)
        bound = (roofline(bandwidth_GBps, weight_bytes(m), kv_bytes_per_token(m), 8 + n / 2).tokens_per_s
                 if bandwidth_GBps else None)
        rows.append(DtypeRow(name=name, times_s=timed[name].times_s, matmul_times_s=timed[name + " matmuls"].times_s,
                             new_tokens=n, weight_bytes=weight_bytes(m), mean_logprob=q["candidate"]["mean_logprob"],
                             perplexity=q["candidate"]["perplexity"], delta_mean_logprob=q["delta_mean_logprob"],
                             kl_vs_fp32=q["kl"], top1_agreement_vs_fp32=q["top1_agreement"],
                             roofline_tokens_per_s=bound))
    return DtypeResult(new_tokens=n, rows=rows, notes=notes, text_tokens=int(text_ids.shape[1]))
