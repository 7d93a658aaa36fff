"""The GPU benchmark of ``make gpu-check``: infergen eager and compiled (``compile_decode``: inductor + CUDA
graphs) against transformers eager and transformers with a static cache + ``torch.compile``, greedy,
at batch 1 and 16, alternating after warm-up calls (which absorb the compilation), medians.

    python benchmarks/gpu/bench_gpu.py [--dtype bfloat16] [--tokens 128] [--rounds 5]

Writes benchmarks/results/gpu/results.json and results.md. Without CUDA it says so and exits 0.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "gpu"))
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device here: the GPU benchmark is skipped")
        return None
    from transformers import CompileConfig
    from transformers.utils import logging as hf_logging

    import infergen
    from infergen import bench

    hf_logging.set_verbosity_error()
    dtype = getattr(torch, args.dtype)
    model, tok = infergen.load_model("smollm2-135m", device="cuda", dtype=dtype)
    hf = bench.load_reference("smollm2-135m", device="cuda", dtype=dtype)
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = tok.pad_token_id
    fast = infergen.compile_decode(model)
    n = args.tokens
    rows = []
    for B in [int(b) for b in args.batches.split(",")]:
        texts = [bench.PROMPTS[i % len(bench.PROMPTS)] for i in range(B)]
        enc = tok(texts, return_tensors="pt", padding=True)
        ids, mask = enc.input_ids.cuda(), enc.attention_mask.cuda()
        out = {}
        contenders = {
            "infergen eager": lambda: out.__setitem__("eager", infergen.greedy_search(
                model, ids, n, attention_mask=mask, eos_token_id=[])),
            "infergen compiled": lambda: out.__setitem__("compiled", infergen.greedy_search(
                fast, ids, n, attention_mask=mask, eos_token_id=[])),
            "transformers eager": lambda: hf.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False),
            "transformers static + compile": lambda: hf.generate(
                ids, attention_mask=mask, max_new_tokens=n, do_sample=False, cache_implementation="static",
                compile_config=CompileConfig(mode="reduce-overhead")),
        }
        times = bench.alternate(contenders, repeats=args.rounds, warmup=2, device="cuda")
        med = {name: bench.median(ts) for name, ts in times.items()}
        rows.append(dict(batch=B, new_tokens=n, times_s=times,
                         tokens_per_s={name: B * n / s for name, s in med.items()},
                         compiled_same_tokens=bool(torch.equal(out["eager"], out["compiled"]))))
    result = dict(gpu=torch.cuda.get_device_name(), dtype=args.dtype, torch=torch.__version__,
                  load_average=list(os.getloadavg()), rows=rows)
    lines = [f"GPU benchmark on {result['gpu']}, {args.dtype}, greedy, {n} new tokens, {args.rounds} alternating "
             "rounds (medians).", "",
             "| batch | contender | tokens/s | infergen compiled over it |", "|---|---|---|---|"]
    for r in rows:
        for name, rate in r["tokens_per_s"].items():
            lines.append(f"| {r['batch']} | {name} | {rate:.0f} | {r['tokens_per_s']['infergen compiled'] / rate:.2f}x |")
        lines.append(f"| {r['batch']} | compiled tokens equal eager | {r['compiled_same_tokens']} | |")
    bench.write_report(args.out, result, "\n".join(lines) + "\n")
    return result


if __name__ == "__main__":
    main()
