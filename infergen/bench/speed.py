"""The side-by-side sections: greedy, sampling and beam search against transformers' ``generate``, and
contrastive search / MCTS against their own reference versions without cache reuse.

Each contender runs the same prompts with the same settings, alternating (:func:`alternate`);
EOS is off on both sides so that every contender runs exactly ``n`` steps.
"""
from __future__ import annotations

import importlib

import torch

from .records import Comparison, GreedyComparison, RooflineResult, Skipped
from .reference import naive_contrastive
from .roofline import decode_matmuls


def greedy(bench, roof: RooflineResult | None = None) -> GreedyComparison:
    """Greedy batch 1: infergen, transformers, and infergen's matrix products alone, side by side."""
    from ..decoding.sampling import greedy_search

    n = bench.size["greedy_tokens"]
    ids, mask = bench.batch(1)
    out = {}
    contenders = bench.compare({
        "infergen": lambda: out.__setitem__("ig", greedy_search(bench.model, ids, n, eos_token_id=[])),
        "transformers": lambda: out.__setitem__("hf", bench.hf.generate(
            ids, attention_mask=mask, max_new_tokens=n, do_sample=False)),
        "matmuls only": decode_matmuls(bench.model, n),
    }, n, "greedy b1")
    matmul_s = contenders[2].median_s / n
    result = GreedyComparison(new_tokens=n, contenders=contenders,
                              same_tokens=bool(torch.equal(out["ig"].cpu(), out["hf"].cpu())),
                              matmul_s_per_token=matmul_s,
                              matmul_share_of_step=matmul_s / (contenders[0].median_s / n))
    if roof is not None:
        result.roofline_fraction = contenders[0].tokens_per_s / roof.fp32_bound_tokens_per_s
        result.achieved_GBps = contenders[0].tokens_per_s * roof.bytes_per_token / 1e9
        result.matmul_roofline_fraction = 1 / matmul_s / roof.fp32_bound_tokens_per_s
    return result


def sampling(bench) -> list[Comparison]:
    """Sampling (temperature 0.8, top-k 50, top-p 0.95) at batch 1 and at ``sample_batch``."""
    from ..decoding.sampling import generate_autoregressive

    n = bench.size["sample_tokens"]
    settings = dict(temperature=0.8, top_k=50, top_p=0.95)
    results = []
    for B in (1, bench.size["sample_batch"]):
        ids, mask = bench.batch(B)

        def hf_run():
            torch.manual_seed(0)
            bench.hf.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=True, **settings)

        contenders = bench.compare({
            "infergen": lambda: generate_autoregressive(bench.model, ids, n, attention_mask=mask,
                                                        eos_token_id=[], seed=0, **settings),
            "transformers": hf_run,
        }, n * B, f"sampling b{B}")
        results.append(Comparison(new_tokens=n * B, contenders=contenders, settings=dict(settings, batch=B)))
    return results


def beam(bench) -> Comparison | Skipped:
    try:
        from ..decoding.beam import beam_search
    except ImportError as err:
        return Skipped(f"infergen.decoding.beam not importable: {err}")
    n, k = bench.size["beam_tokens"], bench.size["beams"]
    ids, mask = bench.batch(1)
    out = {}
    contenders = bench.compare({
        "infergen": lambda: out.__setitem__("ig", beam_search(bench.model, ids, n, num_beams=k, eos_token_id=[])),
        "transformers": lambda: out.__setitem__("hf", bench.hf.generate(
            ids, attention_mask=mask, max_new_tokens=n, num_beams=k, do_sample=False,
            early_stopping=False, length_penalty=1.0)),
    }, n, "beam 4")
    return Comparison(new_tokens=n, contenders=contenders, same_tokens=bool(torch.equal(out["ig"].cpu(), out["hf"].cpu())),
                      settings={"num_beams": k})


def _search(bench, key, module, fn_name, params, n) -> Comparison | Skipped:
    ids, _ = bench.batch(1)
    try:
        fn = getattr(importlib.import_module(module), fn_name)
    except (ImportError, AttributeError) as err:
        return Skipped(f"{module}.{fn_name} not importable: {err}")
    if key == "mcts":  # the same search without the K/V slices: every leaf re-runs its whole prefix
        from .mcts_nocache import mcts_decode_nocache
        reference, ref_name = (lambda: mcts_decode_nocache(bench.model, ids, n, eos_token_id=[], **params),
                               "reference (no K/V slices)")
    elif key == "contrastive":  # no switch in the decoder: the plain loop of the reference module
        reference, ref_name = lambda: naive_contrastive(bench.model, ids, n, **params), "reference (naive_contrastive)"
    else:
        return Skipped(f"{fn_name} has no uncached reference")
    out = {}
    contenders = bench.compare({
        "cached": lambda: out.__setitem__("c", fn(bench.model, ids, n, eos_token_id=[], **params)),
        ref_name: lambda: out.__setitem__("r", reference()),
    }, n, key, repeats=max(1, bench.size["repeats"] // 2))
    return Comparison(new_tokens=n, contenders=contenders, same_tokens=bool(torch.equal(out["c"].cpu(), out["r"].cpu())),
                      settings=dict(params))


def contrastive(bench) -> Comparison | Skipped:
    """Contrastive search with its cache against the same search re-running every sequence."""
    return _search(bench, "contrastive", "infergen.decoding.contrastive", "contrastive_search",
                   dict(top_k=bench.size["contrastive_k"], alpha=0.6), bench.size["search_tokens"])


def mcts(bench) -> Comparison | Skipped:
    """MCTS with K/V reuse along the tree against the same search re-running every path."""
    return _search(bench, "mcts", "infergen.decoding.mcts", "mcts_decode",
                   dict(num_simulations=bench.size["mcts_simulations"], seed=0), bench.size["mcts_tokens"])
