"""Continuous against static batching: the same mixed-length requests, the same batch size, greedy.

:func:`static_batching` is the baseline :class:`~infergen.serving.ContinuousBatcher` is measured against
(one batch at a time, each to its longest request), :func:`mixed_workload` the traffic where the two
differ, and :func:`compare_batching` serves one workload both ways.
"""
from __future__ import annotations

import dataclasses
import time

import torch

from .._validation import check_number
from ..decoding.base import make_generator, special_ids
from ..decoding.sampling import generate_autoregressive
from ..decoding.steps import FinishReason
from ..models.hf import as_model
from ..params import SamplingParams
from ..serving import ContinuousBatcher, Request
from .records import ServingResult, ServingSide

def static_batching(model, requests: list[Request], batch_size: int = 8, *, eos_token_id=None,
                    pad_token_id=None, params: SamplingParams | None = None, temperature=None,
                    **settings) -> list[Request]:
    """The baseline: serve ``requests`` in arrival order, ``batch_size`` at a time, each batch to the end.

    A batch runs until every row is finished or its *largest* ``max_new_tokens`` is reached; a row is
    then cut to its own limit. (Arrival times are ignored: all requests are taken as waiting.) Each row
    samples with its own generator (its request's seed), so a request's tokens do not depend on its
    batch.
    """
    check_number("batch_size", batch_size, low=1, integer=True)
    model = as_model(model)
    temperature = 0.0 if params is None and temperature is None else temperature  # serving defaults to greedy
    params = SamplingParams.resolve(params, temperature=temperature, **settings)
    eos_list, pad = special_ids(model, eos_token_id, pad_token_id)
    if any(r.params is not None or r.constraint is not None for r in requests):
        raise ValueError("static_batching serves every request with one set of settings: requests with params "
                         "or a constraint of their own need the ContinuousBatcher")
    order = sorted(requests, key=lambda r: r.arrival)
    start = time.perf_counter()
    for i in range(0, len(order), batch_size):
        group = order[i:i + batch_size]
        width = max(len(r.prompt) for r in group)
        ids = torch.tensor([[pad] * (width - len(r.prompt)) + r.prompt for r in group], device=model.device)
        mask = torch.tensor([[0] * (width - len(r.prompt)) + [1] * len(r.prompt) for r in group], device=model.device)
        n = max(r.max_new_tokens for r in group)
        seeds = [r.seed if r.seed is not None else params.seed for r in group]
        generators = None if all(s is None for s in seeds) else [
            make_generator(s, device=model.device) or torch.Generator(device=model.device).manual_seed(
                int(torch.randint(0, 2**62, (1,)))) for s in seeds]
        out = generate_autoregressive(model, ids, n, attention_mask=mask, eos_token_id=eos_list, pad_token_id=pad,
                                      params=params.replace(seed=None), generator=generators, return_dict=True)
        now = time.perf_counter() - start
        for j, r in enumerate(group):
            k = min(out.lengths[j], r.max_new_tokens)
            r.tokens = out.new_tokens[j, :k].tolist()
            r.logprobs = out.logprobs[j, :k].tolist()
            r.finish_reason = out.finish_reason[j] if out.lengths[j] <= r.max_new_tokens else FinishReason.LENGTH
            r.latency_s = now
    return requests


def mixed_workload(n: int = 16, prompt_lengths=(4, 32), new_tokens=(8, 128), vocab: int = 1000,
                   seed: int = 0) -> list[Request]:
    """``n`` requests with random prompts and *different* lengths (the case continuous batching wins).

    Prompt lengths are uniform in ``prompt_lengths``, ``max_new_tokens`` log-uniform in ``new_tokens``
    (many short answers, a few long ones, as in real traffic). Token ids are drawn from ``[3, vocab)``.
    """
    g = torch.Generator().manual_seed(seed)
    reqs = []
    lo, hi = new_tokens
    for i in range(n):
        T = int(torch.randint(prompt_lengths[0], prompt_lengths[1] + 1, (1,), generator=g))
        m = int(round(lo * (hi / lo) ** float(torch.rand(1, generator=g))))
        reqs.append(Request(prompt=torch.randint(3, vocab, (T,), generator=g).tolist(), max_new_tokens=m, id=i))
    return reqs


def compare_batching(model, requests: list[Request], batch_size: int = 8, **params) -> dict:
    """Serve the same workload with static and with continuous batching; tokens/s, latency, agreement.

    EOS is ignored (``eos_token_id=[]``) so both serve exactly ``max_new_tokens`` per request and the
    comparison measures scheduling, not luck. With greedy settings the tokens must agree (``same_tokens``).
    """
    clone = lambda: [dataclasses.replace(r) for r in requests]  # noqa: E731  (copies: each run fills in its own results)

    static_reqs = static_batching(model, clone(), batch_size, eos_token_id=[], **params)
    batcher = ContinuousBatcher(model, max_batch=batch_size, eos_token_id=[], **params)
    start = time.perf_counter()
    cont_reqs = batcher.run(clone())
    cont_time = time.perf_counter() - start
    static_reqs_time = max(r.latency_s or 0.0 for r in static_reqs)
    tokens = sum(len(r.tokens) for r in cont_reqs)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {
        "requests": len(requests), "batch_size": batch_size, "tokens": tokens,
        "static": {"seconds": static_reqs_time, "tokens_per_s": tokens / static_reqs_time,
                   "mean_latency_s": mean([r.latency_s or 0.0 for r in static_reqs])},
        "continuous": {"seconds": cont_time, "tokens_per_s": tokens / cont_time,
                       "mean_latency_s": mean([r.latency_s or 0.0 for r in cont_reqs]), **batcher.stats},
        "speedup": static_reqs_time / cont_time,
        "same_tokens": all(a.tokens == b.tokens for a, b in zip(static_reqs, cont_reqs)),
    }


def measure(bench) -> ServingResult:
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
