"""Continuous against static batching: the same mixed-length requests, the same batch size, greedy."""
from __future__ import annotations

from .records import ServingResult, ServingSide


def measure(bench) -> ServingResult:
    from ..serving import compare_batching, mixed_workload

    reqs = mixed_workload(bench.size["serving_requests"], new_tokens=bench.size["serving_tokens"], vocab=bench.vocab_hi)
    with bench.bar(1, "serving") as bar:
        res = compare_batching(bench.model, reqs, batch_size=bench.size["serving_batch"])
        bar.update(1)

    def side(d: dict) -> ServingSide:
        return ServingSide(seconds=d["seconds"], tokens_per_s=d["tokens_per_s"], mean_latency_s=d["mean_latency_s"],
                           decode_steps=d.get("decode_steps"), occupancy=d.get("occupancy"))

    return ServingResult(requests=res["requests"], batch_size=res["batch_size"], tokens=res["tokens"],
                         static=side(res["static"]), continuous=side(res["continuous"]), speedup=res["speedup"],
                         same_tokens=bool(res["same_tokens"]), max_new_tokens=[r.max_new_tokens for r in reqs])
