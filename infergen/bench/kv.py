"""KV cache against none: one step at each context length, and whole generations.

A whole no-cache generation of ``n`` tokens takes minutes for large ``n`` (it is quadratic), so whole
generations are *measured* up to ``kv_measured_upto`` new tokens; beyond, the total is the sum of the
measured per-step costs (interpolated between the measured lengths), and the record says which is
which. The measured points validate the sum (``estimate_error``).
"""
from __future__ import annotations

import numpy as np
import torch

from .records import EstimateError, KVResult, KVSteps, KVTotals
from .reference import naive_greedy
from .timing import alternate, median, time_call


def measure(bench) -> KVResult:
    from ..decoding.sampling import greedy_search

    model, device = bench.model, bench.device
    ids, _ = bench.batch(1)
    T = ids.shape[1]
    lengths = list(bench.size["kv_lengths"])
    reps = bench.size["repeats"]
    step = KVSteps(context=lengths, cached_s=[], naive_s=[])
    with bench.bar(len(lengths) * reps * 2, "kv per step") as bar:
        for L in lengths:
            seq = torch.randint(3, bench.vocab_hi, (1, L), device=device,
                                generator=torch.Generator(device=device).manual_seed(L))
            cache = model.new_cache(1, L + reps + 2)
            with torch.inference_mode():
                model(seq[:, :-1], cache)
                last = seq[:, -1:]

                def cached():
                    model(last, cache)
                    cache.crop(L - 1)  # the same context length every time

                def naive():
                    model(seq, model.new_cache(1, L))

                times = alternate({"cached": cached, "naive": naive}, repeats=reps, device=device, progress=bar)
            step.cached_s.append(median(times["cached"]))
            step.naive_s.append(median(times["naive"]))

    def per_step(values, L):
        return float(np.interp(L, lengths, values))

    total = KVTotals(new_tokens=[], cached_s=[], naive_s=[], naive_measured=[])
    measured = [n for n in lengths if n <= bench.size["kv_measured_upto"]]
    with bench.bar(len(measured), "kv whole runs") as bar:
        for n in lengths:
            est_cached = sum(per_step(step.cached_s, T + i) for i in range(n))
            est_naive = sum(per_step(step.naive_s, T + i + 1) for i in range(n))
            if n in measured:
                c = time_call(lambda: greedy_search(model, ids, n, eos_token_id=[]), device)
                r = time_call(lambda: naive_greedy(model, ids, n), device)
                total.estimate_error[n] = EstimateError(cached=est_cached / c - 1, naive=est_naive / r - 1)
                bar.update(1)
            else:
                c, r = est_cached, est_naive
            total.new_tokens.append(n)
            total.cached_s.append(c)
            total.naive_s.append(r)
            total.naive_measured.append(n in measured)
    return KVResult(per_step=step, total=total)
