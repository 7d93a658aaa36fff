"""Throughput against the batch size, and prefill against decode as the prompt grows (with the KV-cache
size and the peak memory of a generation on each side)."""
from __future__ import annotations

import torch

from .records import BatchResult, BatchRow, PeakMemory, PrefillResult, PrefillRow
from .reference import prefill_decode_times
from .roofline import kv_bytes_per_token, weight_bytes
from .timing import median, peak_memory


def batch_sizes(bench) -> BatchResult:
    n = bench.size["batch_tokens"]
    rows = []
    with bench.bar(len(bench.size["batch_sizes"]) * bench.size["repeats"], "batch sizes") as bar:
        for B in bench.size["batch_sizes"]:
            ids, mask = bench.batch(B)
            prefill_decode_times(bench.model, ids, 2, attention_mask=mask)  # warm-up
            runs = []
            for _ in range(bench.size["repeats"]):
                runs.append(prefill_decode_times(bench.model, ids, n, attention_mask=mask))
                bar.update(1)
            decode = median([r.decode_s for r in runs])
            prefill = median([r.prefill_s for r in runs])
            rows.append(BatchRow(batch=B, decode_s=decode, prefill_s=prefill, decode_tokens_per_s=B * n / decode,
                                 total_tokens_per_s=B * n / (decode + prefill)))
    return BatchResult(new_tokens=n, rows=rows)


def prefill(bench) -> PrefillResult:
    from ..decoding.sampling import greedy_search

    model, device = bench.model, bench.device
    rows = []
    gen = torch.Generator(device=device).manual_seed(0)
    with bench.bar(len(bench.size["prefill_lengths"]) * bench.size["repeats"], "prefill/decode") as bar:
        for T in bench.size["prefill_lengths"]:
            ids = torch.randint(3, bench.vocab_hi, (1, T), device=device, generator=gen)
            prefill_decode_times(model, ids, 1)
            runs = []
            for _ in range(bench.size["repeats"]):
                runs.append(prefill_decode_times(model, ids, 8))
                bar.update(1)
            p = median([r.prefill_s for r in runs])
            d = median([r.decode_s for r in runs]) / 8
            rows.append(PrefillRow(prompt=T, prefill_s=p, prefill_tokens_per_s=T / p, decode_step_s=d,
                                   decode_tokens_per_s=1 / d))
    kv = kv_bytes_per_token(model)
    ids, mask = bench.batch(bench.size["sample_batch"])
    n = bench.size["sample_tokens"]
    with peak_memory(device) as ig_peak:
        greedy_search(model, ids, n, attention_mask=mask, eos_token_id=[])
    with peak_memory(device) as hf_peak:
        bench.hf.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False)
    B, T = ids.shape
    cache = model.new_cache(B, T + n)
    return PrefillResult(
        rows=rows, kv_bytes_per_token=kv,
        kv_bytes={L: kv * L for L in (128, 512, 2048, model.max_context)},
        peak_memory=PeakMemory(batch=B, new_tokens=n, infergen_bytes=ig_peak[0], transformers_bytes=hf_peak[0],
                               infergen_cache_bytes=getattr(cache, "nbytes", None), weight_bytes=weight_bytes(model)))
