"""MCTS speed with and without batched leaf evaluation, measured side by side in one run.

    python benchmarks/mcts_speed.py                      # 10 tokens at 50 simulations, leaf_batch 1/4/8/16
    python benchmarks/mcts_speed.py --rounds 3 --batches 1,8

The settings alternate within each round (1, 4, 8, 16, 1, 4, ...), so a change of machine load hits every
setting alike; the table reports medians, the ratio of each setting's tokens/s to leaf_batch=1 in the same
run, the load average during the run, and whether the committed tokens equal the sequential search's.
Results go to benchmarks/results/mcts/ (JSON and a markdown table).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

import infergen
from infergen.decoding.mcts import mcts_decode

PROMPT = "The best way to learn a new language is"


def run_once(model, ids, tokens, sims, leaf_batch, top_k):
    load = os.getloadavg()[0]
    start = time.perf_counter()
    out = mcts_decode(model, ids, tokens, num_simulations=sims, top_k=top_k, leaf_batch=leaf_batch,
                      eos_token_id=[], return_dict=True)
    seconds = time.perf_counter() - start
    stats = out.info["stats"]
    return dict(leaf_batch=leaf_batch, seconds=seconds, tokens_per_s=tokens / seconds, load_before=load,
                load_after=os.getloadavg()[0], forwards_per_simulation=stats["forwards_per_simulation"],
                tokens_per_simulation=stats["tokens_per_simulation"], leaves_per_batch=stats["leaves_per_batch"],
                ms_per_simulation=1000 * seconds / max(stats["simulations"], 1), new_ids=out.sequences[0, ids.shape[1]:].tolist())


def table(runs: list[dict], settings: dict) -> str:
    by = {}
    for r in runs:
        by.setdefault(r["leaf_batch"], []).append(r)
    base = statistics.median(r["tokens_per_s"] for r in by[1])
    reference = by[1][0]["new_ids"]
    loads = [r["load_before"] for r in runs] + [r["load_after"] for r in runs]
    lines = [f"MCTS on {settings['model']}: {settings['tokens']} tokens at {settings['sims']} simulations per token, "
             f"top_k {settings['top_k']}, {settings['threads']} thread(s), {settings['rounds']} alternating round(s); "
             f"load average {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores.", "",
             "| leaf_batch | tokens/s (median) | ms per simulation | forwards per simulation | leaves per forward "
             "| speed vs leaf_batch=1 | same tokens as leaf_batch=1 |",
             "|---|---|---|---|---|---|---|"]
    for b in sorted(by):
        rs = by[b]
        tps = statistics.median(r["tokens_per_s"] for r in rs)
        same = sum(r["new_ids"] == reference for r in rs)
        lines.append(f"| {b} | {tps:.3f} | {statistics.median(r['ms_per_simulation'] for r in rs):.0f} "
                     f"| {statistics.median(r['forwards_per_simulation'] for r in rs):.2f} "
                     f"| {statistics.median(r['leaves_per_batch'] for r in rs):.1f} | {tps / base:.2f}x "
                     f"| {same} of {len(rs)} runs |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=10)
    ap.add_argument("--sims", type=int, default=50)
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--batches", default="1,4,8,16")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "mcts"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tok = infergen.load_model("smollm2-135m", device="cpu")
    ids = tok(PROMPT, return_tensors="pt").input_ids
    batches = [int(b) for b in args.batches.split(",")]
    if 1 not in batches:
        batches = [1] + batches
    runs = []
    for r in range(args.rounds):
        for b in batches:
            run = run_once(model, ids, args.tokens, args.sims, b, args.top_k)
            run["round"] = r
            runs.append(run)
            print(f"round {r} leaf_batch {b}: {run['tokens_per_s']:.3f} tokens/s ({run['seconds']:.1f} s, "
                  f"load {run['load_before']:.1f})", flush=True)
    settings = dict(model="SmolLM2-135M (float32, CPU)", tokens=args.tokens, sims=args.sims, top_k=args.top_k,
                    threads=args.threads, rounds=args.rounds, prompt=PROMPT)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.json").write_text(json.dumps(dict(settings=settings, runs=runs), indent=1))
    text = table(runs, settings)
    (out / "speed.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
