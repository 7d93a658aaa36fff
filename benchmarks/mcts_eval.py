"""MCTS decoding on the bundled model: likelihood, keyword reward, and the cost of a simulation.

    python benchmarks/mcts_eval.py              # full run (a few minutes on 2 CPU cores)
    python benchmarks/mcts_eval.py --quick      # fewer prompts / tokens / simulations

Prints three tables:

1. **Likelihood.** The mean per-token log-likelihood (under the model) of greedy search and of MCTS with
   the default value (the path's geometric-mean probability): does looking ahead find continuations the
   model itself finds more likely than the step-by-step argmax?
2. **Keyword reward.** The fraction of continuations that contain a prompt-specific keyword, for plain
   sampling (temperature 1, several seeds), MCTS with the default value (control) and MCTS with
   ``mix(likelihood_value, keyword_reward(kw), 0.5)``; with the likelihood of each, the price of steering.
3. **Cost per simulation.** Forwards, tokens processed and milliseconds per simulation with K/V reuse
   along the tree and re-running the prefix (:mod:`infergen.bench.mcts_nocache`), for a short and a
   long prompt, without and with rollouts. Timings depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from infergen.bench import mcts_nocache as nocache

import infergen
from infergen.bench.lookahead import keyword_reward
from infergen.decoding.mcts import likelihood_value, mix  # registers "mcts"

PROMPTS = [  # (prompt, keyword to steer towards: plausible, but not what the model says by itself)
    ("The future of AI is", "bright"),
    ("Once upon a time, in a small village by the sea,", "girl"),
    ("def fibonacci(n):", "print"),
    ("The capital of France is", "city"),
    ("Here is a recipe for pancakes:", "banana"),
    ("In 1969, the first humans", "Apollo"),
    ("The three laws of thermodynamics are", "heat"),
    ("My favourite book is", "novel"),
]

def mean(xs):
    xs = [x for x in xs if x == x]
    return sum(xs) / len(xs) if xs else float("nan")


def run(model, tok, prompts, strategy, **params):
    return infergen.generate(model, tok, prompts, strategy=strategy, **params)


def likelihood_table(model, tok, prompts, n, sims, top_k):
    print(f"\n## 1. Mean per-token log-likelihood ({len(prompts)} prompts, {n} new tokens)")
    rows = [("greedy", dict(strategy="greedy")),
            (f"mcts default value (sims={sims}, top_k={top_k}, c_puct=1)",
             dict(strategy="mcts", num_simulations=sims, top_k=top_k)),
            (f"mcts default value + rollout 4",
             dict(strategy="mcts", num_simulations=sims, top_k=top_k, rollout_tokens=4))]
    print(f"| {'method':58s} | mean log p / token | seconds |")
    print(f"|{'-' * 60}|--------------------|---------|")
    for name, params in rows:
        start = time.perf_counter()
        results = run(model, tok, prompts, max_new_tokens=n, **params)
        seconds = time.perf_counter() - start
        print(f"| {name:58s} | {mean([r.mean_logprob for r in results]):18.3f} | {seconds:7.1f} |")


def keyword_table(model, tok, pairs, n, sims, top_k, seeds):
    prompts = [p for p, _ in pairs]
    print(f"\n## 2. Keyword reward ({len(pairs)} prompts, {n} new tokens): fraction of continuations containing "
          "the keyword")
    hits = {}
    loglik = {}
    sampled = [run(model, tok, prompts, "sample", max_new_tokens=n, temperature=1.0, seed=s) for s in range(seeds)]
    hits["sampling T=1"] = [mean([kw.lower() in out[i].text.lower() for out in sampled])
                            for i, (_, kw) in enumerate(pairs)]
    loglik["sampling T=1"] = mean([r.mean_logprob for out in sampled for r in out])
    plain = run(model, tok, prompts, "mcts", max_new_tokens=n, num_simulations=sims, top_k=top_k)
    hits["mcts default value"] = [float(kw.lower() in r.text.lower()) for r, (_, kw) in zip(plain, pairs)]
    loglik["mcts default value"] = mean([r.mean_logprob for r in plain])
    steered = []
    for prompt, kw in pairs:  # one keyword per prompt, so one call per prompt
        value = mix(likelihood_value, keyword_reward(kw, tokenizer=tok), 0.5)
        steered.append(run(model, tok, prompt, "mcts", max_new_tokens=n, num_simulations=sims, top_k=top_k,
                           value_fn=value))
    hits["mcts mix(likelihood, keyword, 0.5)"] = [float(kw.lower() in r.text.lower())
                                                  for r, (_, kw) in zip(steered, pairs)]
    loglik["mcts mix(likelihood, keyword, 0.5)"] = mean([r.mean_logprob for r in steered])
    print(f"| {'method':36s} | keyword reward | mean log p / token | " + " | ".join(kw for _, kw in pairs) + " |")
    print(f"|{'-' * 38}|----------------|--------------------|"
          + "|".join("-" * (len(kw) + 2) for _, kw in pairs) + "|")
    for name, per_prompt in hits.items():
        cells = " | ".join(f"{h:{len(kw)}.2f}" for h, (_, kw) in zip(per_prompt, pairs))
        print(f"| {name:36s} | {mean(per_prompt):14.2f} | {loglik[name]:18.3f} | {cells} |")
    print("\nMCTS + keyword continuations:")
    for r, (_, kw) in zip(steered, pairs):
        print(f"  [{kw}] {r.prompt!r} -> {r.text!r}")


def cost_table(model, tok, n, sims, top_k):
    print(f"\n## 3. Cost per simulation ({n} new tokens, {sims} simulations per token, top_k={top_k})")
    print("K/V slices along the tree against re-running the prefix (infergen/bench/mcts_nocache.py).\n")
    nocache.cost_table(model, tok, n, sims, top_k, rollouts=(0, 4))
    cfg = model.config
    print(f"\nK/V kept per evaluated node: {cfg.num_hidden_layers} layers x {cfg.num_key_value_heads} kv heads x "
          f"{cfg.head_dim} x 2 x {torch.finfo(model.dtype).bits // 8} bytes = "
          f"{cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 2 * torch.finfo(model.dtype).bits // 8} bytes")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 prompts, fewer tokens and simulations")
    parser.add_argument("--new-tokens", type=int, default=None)
    parser.add_argument("--simulations", type=int, default=None)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=4, help="sampling runs per prompt for the keyword table")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--sections", default="123", help="which tables to print, e.g. 13 (default: 123)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.new_tokens or (8 if args.quick else 16)
    sims = args.simulations or (10 if args.quick else 20)
    pairs = PROMPTS[:4] if args.quick else PROMPTS
    model, tok = infergen.load_model("smollm2-135m")
    print(f"# MCTS evaluation: SmolLM2-135M-Instruct, {model.dtype}, device {model.device}, "
          f"{torch.get_num_threads()} threads")
    if "1" in args.sections:
        likelihood_table(model, tok, [p for p, _ in pairs], n, sims, args.top_k)
    if "2" in args.sections:
        keyword_table(model, tok, pairs, n, sims, args.top_k, args.seeds)
    if "3" in args.sections:
        cost_table(model, tok, min(n, 8), min(sims, 10), args.top_k)


if __name__ == "__main__":
    main()
