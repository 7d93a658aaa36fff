"""A task built for look-ahead (chapter 6): a keyword the model only reaches after an unlikely first token.

    python benchmarks/mcts_demo.py            # the committed run (about 25 minutes on one busy CPU thread)
    python benchmarks/mcts_demo.py --quick    # 4 prompts, one seed: a smoke test

**The task** (:mod:`infergen.bench.lookahead`, which also summarises the run for the chapter). For each
prompt, the ``top_k`` most likely first tokens are each continued greedily to ``horizon`` tokens
(``find_task``). The keyword is a word (5+ letters, not in the prompt) that occurs
in exactly one of those ``top_k`` branches, chosen from the *least likely* branch whose first token is
ranked 3 or lower with probability below 0.1; the reward of a continuation is 1 if it contains the
keyword (a case-insensitive substring test, as :func:`~infergen.bench.lookahead.keyword_reward`), else 0.
The task is built so that look-ahead pays: the good first token is one greedy and beam search do not
pick, independent samples rarely take it, and a greedy rollout from it reaches the reward by construction.
It shows the mechanism; it is no benchmark of MCTS against anything on a task chosen without it.

**The methods,** each scored by the same 0/1 reward, and their cost in *model tokens*: the tokens the
model processed after the prompt (for MCTS its ``forward_tokens`` counter: every evaluated leaf and
every rollout token; for the others the tokens they generated, all rows counted; prefills not counted):

* greedy (``horizon`` tokens) and beam search with ``top_k`` beams (``top_k * horizon``), its best
  beam, and "beam + reward": the reward picks among its ``top_k`` final beams;
* MCTS with the reward (mixed with the likelihood, 0.2 / 0.8: the likelihood only breaks ties among
  continuations that have, or lack, the keyword), ``top_k`` children per node, greedy rollouts to the
  horizon, at two prior temperatures: 1 (the model's priors) and a flat prior (``temperature`` 100:
  each of the ``top_k`` children is tried once before any is tried twice);
* best-of-N: N samples at temperature 1, the reward picks (success = any sample has the keyword). Per
  prompt and seed the run draws N = (the larger MCTS run's model tokens) / horizon samples, rounded up,
  and records the index of the first one with the keyword: best-of-N for every smaller N, the equal-
  compute N of either MCTS run included, follows from it. ``--seeds`` seeds.

Writes ``benchmarks/results/mcts/results.json`` and its copy ``infergen/bench/results/mcts.json`` (what
chapter 6 reads with ``infergen.bench.committed.committed_results("mcts")``).
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

import infergen
from infergen.decoding import test_time
from infergen.bench.lookahead import PROMPTS, find_task, has, keyword_reward
from infergen.decoding.mcts import likelihood_value, mix

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "mcts" / "results.json"
PACKAGED = ROOT / "infergen" / "bench" / "results" / "mcts.json"


def run_mcts(model, tok, ids, task, horizon, top_k, simulations, temperature):
    """One MCTS run: (success, model tokens, text)."""
    value = mix(likelihood_value, keyword_reward(task["keyword"], tokenizer=tok), 0.8)
    out = infergen.mcts_decode(model, ids, horizon, num_simulations=simulations, top_k=top_k, temperature=temperature,
                               rollout_tokens=horizon, value_fn=value, tokenizer=tok, return_dict=True)
    text = tok.decode(out.new_tokens[0], skip_special_tokens=True)
    return has(text, task["keyword"]), int(out.info["stats"]["forward_tokens"]), text


def main():
    """Find the tasks, run every method on each, write the results (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 prompts, one seed, no files written")
    parser.add_argument("--horizon", type=int, default=12)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--simulations", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=24, help="how many of PROMPTS to try (in order)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from tqdm.auto import tqdm

    model, tok = infergen.load_model("smollm2-135m")
    H, K, S = args.horizon, args.top_k, args.simulations
    start = time.perf_counter()
    found = [find_task(model, tok, p, K, H) for p in tqdm(PROMPTS[:args.prompts], desc="tasks")]
    tasks = [t for t in found if t is not None]
    if args.quick:
        tasks, args.seeds = tasks[:4], 1
    seconds = {"tasks": time.perf_counter() - start}
    mcts_runs = {"mcts (priors T=1)": 1.0, "mcts (flat priors)": 100.0}
    rows = []
    for task in tqdm(tasks, desc="prompts"):
        ids = tok(task["prompt"], return_tensors="pt").input_ids.to(model.device)
        row = dict(task)
        t0 = time.perf_counter()
        greedy = infergen.greedy_search(model, ids, H, return_dict=True)
        row["greedy"] = dict(ok=has(tok.decode(greedy.new_tokens[0], skip_special_tokens=True), task["keyword"]),
                             tokens=H)
        beam = infergen.beam_search(model, ids, H, num_beams=K, num_return_sequences=K, return_dict=True)
        beams = tok.batch_decode(beam.new_tokens, skip_special_tokens=True)
        row["beam"] = dict(ok=has(beams[0], task["keyword"]), tokens=K * H, text=beams[0])
        row["beam + reward"] = dict(ok=any(has(b, task["keyword"]) for b in beams), tokens=K * H)
        row["seconds_greedy_beam"] = time.perf_counter() - t0
        for name, temperature in mcts_runs.items():
            t0 = time.perf_counter()
            ok, tokens, text = run_mcts(model, tok, ids, task, H, K, S, temperature)
            row[name] = dict(ok=ok, tokens=tokens, text=text, seconds=time.perf_counter() - t0)
        t0 = time.perf_counter()
        max_n = max(-(-row[name]["tokens"] // H) for name in mcts_runs)  # the larger MCTS budget, in samples
        hits = []  # per seed: for each N = 1 .. max_n, does one of the first N samples have the keyword
        for seed in range(args.seeds):
            out = test_time.sample_candidates(model, ids, max_n, H, temperature=1.0, seed=seed)
            texts = tok.batch_decode(out.new_tokens, skip_special_tokens=True)
            first = next((i for i, t in enumerate(texts) if has(t, task["keyword"])), None)
            hits.append(first)  # index of the first sample with the keyword (None: none of max_n)
        row["best_of_n_first_hit"], row["best_of_n_drawn"] = hits, max_n
        row["seconds_best_of_n"] = time.perf_counter() - t0
        rows.append(row)
        tqdm.write(f"{task['keyword']:>12} rank {task['rank']} p={task['first_token_prob']:.3f} | greedy "
                   f"{row['greedy']['ok']:d} beam {row['beam']['ok']:d}/{row['beam + reward']['ok']:d} | "
                   + " | ".join(f"{n} {row[n]['ok']:d} ({row[n]['tokens']} tok)" for n in mcts_runs)
                   + f" | best-of-N first hit {hits}")
    seconds["total"] = time.perf_counter() - start
    result = dict(command="python benchmarks/mcts_demo.py" + (" --quick" if args.quick else ""),
                  model="smollm2-135m", device=str(model.device), threads=1, horizon=H, top_k=K, simulations=S,
                  value="mix(likelihood_value, keyword_reward(keyword), 0.8)", rollout_tokens=H,
                  mcts_prior_temperatures=mcts_runs, best_of_n_temperature=1.0, seeds=args.seeds,
                  prompts_tried=len(found),
                  seconds=seconds, rows=rows)
    print(f"{len(rows)} prompts, {seconds['total']:.0f} s")
    if not args.quick:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps(result, indent=1) + "\n", encoding="utf8")
        shutil.copyfile(OUT, PACKAGED)
        print("wrote", OUT.relative_to(ROOT), "and", PACKAGED.relative_to(ROOT))


if __name__ == "__main__":
    main()
