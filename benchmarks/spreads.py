"""The comparisons of chapters 2-5 over many prompts and seeds, with 95% confidence intervals.

Each chapter runs its comparison on a handful of prompts, fast enough for CI. This script runs the same
comparison, with the same settings, on ``--prompts`` prompts (24 by default) and, for the strategies that
sample, on several seeds, and stores every per-prompt number and a summary with intervals from
:func:`infergen.bench.stats.bootstrap_interval` (percentile bootstrap over the prompts, 2000 resamples,
seed 0). The chapters read the summary and say which differences these intervals resolve.

    python benchmarks/spreads.py --chapter 2     # strategy table: 7 strategies, sampled ones with 3 seeds
    python benchmarks/spreads.py --chapter 3     # greedy against nucleus sampling (5 seeds); greedy's rank
    python benchmarks/spreads.py --chapter 4     # beam widths 1, 2, 4, 8; diverse against plain beams
    python benchmarks/spreads.py --chapter 5     # contrastive alpha sweep, with and without EOS

One torch thread (the book's CPU is shared), float32, the bundled model. Each run replaces its chapter's
entry in ``benchmarks/results/spreads/results.json`` and writes the same file to
``infergen/bench/results/spreads.json`` (the copy the chapters read, shipped with the package).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

import infergen
from infergen.bench.stats import bootstrap_interval
from infergen.metrics import distinct_n, diversity, rep_n

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = [ROOT / "benchmarks" / "results" / "spreads" / "results.json",
           ROOT / "infergen" / "bench" / "results" / "spreads.json"]

PROMPTS = [  # open-ended prompts of several kinds; the chapters' own prompts come first
    "The old lighthouse keeper opened the door and",
    "Scientists have discovered a new species of",
    "The best way to learn a programming language is",
    "In the middle of the night, the city",
    "The future of AI is",
    "Once upon a time, in a small village by the sea,",
    "Here is a recipe for pancakes:",
    "In 1969, the first humans",
    "The three laws of thermodynamics are",
    "My favourite book is",
    "I like to eat",
    "The most important thing about cooking is",
    "Here are three facts about the Moon:",
    "I like to eat apples because",
    "The history of the Roman Empire",
    "The best advice my teacher ever gave me was",
    "A good night's sleep matters because",
    "The small robot looked at the broken vase and",
    "To fix a flat bicycle tyre, first",
    "Climate change affects farmers because",
    "The museum's newest exhibit shows",
    "When I moved to a new country, I",
    "The recipe for a happy team is",
    "Yesterday the football match ended with",
    "The train was late again, so",
    "Photosynthesis is the process by which",
    "My grandmother always told me that",
    "The detective opened the envelope and found",
    "Learning to play the piano taught me",
    "The city council voted to",
    "On the first day of spring, the garden",
    "Water boils at a lower temperature in the mountains because",
]


def interval(values, statistic=None) -> dict:
    """The estimate with its 95% bootstrap interval, as a JSON-ready dict (NaN items left out of a mean)."""
    if statistic is None:
        values = [v for v in values if not math.isnan(v)]
    iv = bootstrap_interval(values, statistic)
    return {"estimate": iv.estimate, "low": iv.low, "high": iv.high, "n": iv.n}


def pooled_diversity(texts) -> dict:
    """Diversity of the texts pooled (as the chapters compute it), with its interval over the texts."""
    return interval([t.split() for t in texts], diversity)


def per_token(out) -> list[float]:
    """Each row's mean log-probability per real generated token (a decoder's ``GenerationOutput``)."""
    sums = out.logprobs.float().sum(-1).cpu().tolist()
    return [s / max(n, 1) for s, n in zip(sums, out.lengths)]


def texts_of(tok, out) -> list[str]:
    """Each row's real generated tokens, decoded without special tokens."""
    return [tok.decode(out.new_tokens[i, :n], skip_special_tokens=True) for i, n in enumerate(out.lengths)]


def chapter_2(model, tok, prompts, seeds) -> dict:
    """The strategy table of chapter 2: 40 new tokens, the chapter's seven strategies."""
    n_new = 40
    strategies = {
        "greedy": dict(strategy="greedy"),
        "beam (4 beams)": dict(strategy="beam", num_beams=4),
        "sampling (T=1)": dict(strategy="sample", temperature=1.0),
        "top-k (k=50)": dict(strategy="sample", top_k=50),
        "top-p (p=0.95)": dict(strategy="sample", top_p=0.95),
        "contrastive (k=5, a=0.6)": dict(strategy="contrastive", top_k=5, alpha=0.6),
        "MCTS (8 simulations)": dict(strategy="mcts", num_simulations=8, top_k=5, c_puct=1.0),
    }
    runs = [(name, seed) for name, spec in strategies.items()
            for seed in (seeds if spec["strategy"] in ("sample", "mcts") else [None])]
    per_run = {}
    for name, seed in tqdm(runs, desc="chapter 2", file=sys.stdout):
        params = dict(strategies[name]) | ({} if seed is None else {"seed": seed})
        start = time.perf_counter()
        results = infergen.generate(model, tok, prompts, max_new_tokens=n_new, **params)
        seconds = time.perf_counter() - start
        texts = [r.text for r in results]
        per_run.setdefault(name, []).append({
            "seed": seed, "seconds": seconds, "tokens": sum(r.num_tokens for r in results),
            "mean_logprob": [r.mean_logprob for r in results], "diversity": [diversity(t) for t in texts],
            "texts": texts})
    summary = {}
    for name, seed_runs in per_run.items():
        first = seed_runs[0]
        summary[name] = {
            "mean_logprob": interval(first["mean_logprob"]), "diversity": pooled_diversity(first["texts"]),
            "tokens_per_s": [r["tokens"] / r["seconds"] for r in seed_runs],
            "seeds": [r["seed"] for r in seed_runs],
            # the spread over seeds of the strategy's numbers (one value per seed)
            "mean_logprob_per_seed": [sum(r["mean_logprob"]) / len(prompts) for r in seed_runs],
            "diversity_per_seed": [diversity(r["texts"]) for r in seed_runs]}
    search = ["greedy", "beam (4 beams)", "contrastive (k=5, a=0.6)", "MCTS (8 simulations)"]
    sampling = ["sampling (T=1)", "top-k (k=50)", "top-p (p=0.95)"]
    group = lambda names, key, i: sum(per_run[n][0][key][i] for n in names) / len(names)  # noqa: E731
    gaps = {key: [group(search, key, i) - group(sampling, key, i) for i in range(len(prompts))]
            for key in ("mean_logprob", "diversity")}
    summary["search - sampling"] = {key: interval(values) for key, values in gaps.items()}
    return {"settings": {"max_new_tokens": n_new, "seeds": seeds, "strategies": strategies},
            "summary": summary, "runs": per_run}


def chapter_3(model, tok, prompts, seeds) -> dict:
    """Chapter 3: greedy against nucleus sampling (p=0.95) over 64 tokens, and greedy's rank in a tree."""
    n_new = 64
    tok.padding_side = "left"
    batch = tok(prompts, return_tensors="pt", padding=True).to(model.device)
    kw = dict(attention_mask=batch.attention_mask, return_dict=True)
    runs = {"greedy": [None], "nucleus p=0.95": seeds}
    per_run = {}
    for name, seed in tqdm([(n, s) for n, ss in runs.items() for s in ss], desc="chapter 3", file=sys.stdout):
        if seed is None:
            out = infergen.greedy_search(model, batch.input_ids, n_new, **kw)
        else:
            out = infergen.generate_autoregressive(model, batch.input_ids, n_new, temperature=1.0, top_p=0.95,
                                                   seed=seed, **kw)
        texts = texts_of(tok, out)
        per_run.setdefault(name, []).append({
            "seed": seed, "texts": texts, "lengths": list(out.lengths),
            **{f"rep{n}": [rep_n(t, n) for t in texts] for n in (2, 3, 4)}})
    greedy, nucleus = per_run["greedy"][0], per_run["nucleus p=0.95"]
    summary = {name: {"diversity": pooled_diversity(r[0]["texts"]),
                      "diversity_per_seed": [diversity(x["texts"]) for x in r],
                      **{f"rep{n}": interval(r[0]["texts"], lambda ts, n=n: rep_n(ts, n)) for n in (2, 3, 4)},
                      **{f"rep{n}_per_seed": [rep_n(x["texts"], n) for x in r] for n in (2, 3, 4)}}
               for name, r in per_run.items()}
    # paired per prompt (seed 0): how much more greedy repeats than nucleus sampling; NaN (too short) left out
    summary["greedy - nucleus rep2"] = interval([g - s for g, s in zip(greedy["rep2"], nucleus[0]["rep2"])])
    summary["nucleus repeats less, seeds"] = sum(
        rep_n(x["texts"], 2) < rep_n(greedy["texts"], 2) for x in nucleus)
    # greedy's 3-token path among the 125 of the top-5 tree, for every prompt
    ranks, ratios = [], []
    for prompt in tqdm(prompts, desc="chapter 3 tree", file=sys.stdout):
        ids = tok(prompt, return_tensors="pt").input_ids.to(model.device)
        paths, scores = top_k_tree(model, ids)
        greedy_path = infergen.greedy_search(model, ids, 3)[0, -3:]
        g = next(i for i in range(len(paths)) if torch.equal(paths[i], greedy_path))
        ranks.append(int((scores > scores[g]).sum()) + 1)
        ratios.append(float((scores.max() - scores[g]).exp()))
    summary["tree"] = {"greedy_rank": ranks, "best_over_greedy": ratios,
                       "greedy_is_best": sum(r == 1 for r in ranks), "prompts": len(prompts)}
    return {"settings": {"max_new_tokens": n_new, "seeds": seeds, "top_p": 0.95, "tree": "depth 3, width 5"},
            "summary": summary, "runs": per_run}


def top_k_tree(model, prompt_ids, depth=3, width=5):
    """Every continuation taking one of the ``width`` best tokens at each of ``depth`` steps, with scores."""
    paths = prompt_ids.new_zeros(1, 0)
    scores = torch.zeros(1, device=prompt_ids.device)
    for _ in range(depth):
        prefixes = torch.cat([prompt_ids.expand(len(paths), -1), paths], 1)
        with torch.inference_mode():
            lp = model(prefixes, model.new_cache(*prefixes.shape)).logits[:, -1].float().log_softmax(-1)
        top = lp.topk(width, dim=-1)
        paths = torch.cat([paths.repeat_interleave(width, 0), top.indices.reshape(-1, 1)], 1)
        scores = scores.repeat_interleave(width) + top.values.reshape(-1)
    return paths, scores


def chapter_4(model, tok, prompts, seeds) -> dict:
    """Chapter 4: beam widths 1, 2, 4, 8 over 32 new tokens."""
    n_new, widths = 32, [1, 2, 4, 8]
    tok.padding_side = "left"
    batch = tok(prompts, return_tensors="pt", padding=True).to(model.device)
    per_run = {}
    for k in tqdm(widths, desc="chapter 4", file=sys.stdout):
        start = time.perf_counter()
        out = infergen.beam_search(model, batch.input_ids, n_new, num_beams=k, attention_mask=batch.attention_mask,
                                   return_dict=True)
        seconds = time.perf_counter() - start
        texts = texts_of(tok, out)
        per_run[str(k)] = {"seconds": seconds, "mean_logprob": per_token(out), "lengths": list(out.lengths),
                           "rep2": [rep_n(t, 2) for t in texts], "texts": texts}
    summary = {str(k): {"mean_logprob": interval(per_run[str(k)]["mean_logprob"]),
                        "rep2": interval(per_run[str(k)]["texts"], lambda ts: rep_n(ts, 2)),
                        "seconds": per_run[str(k)]["seconds"]} for k in widths}
    for a, b in zip(widths, widths[1:]):
        diffs = [y - x for x, y in zip(per_run[str(a)]["mean_logprob"], per_run[str(b)]["mean_logprob"])]
        summary[f"{b} - {a}"] = {"mean_logprob": interval(diffs), "better": sum(d > 1e-6 for d in diffs),
                                 "worse": sum(d < -1e-6 for d in diffs), "same": sum(abs(d) <= 1e-6 for d in diffs)}
    # diverse beam search against plain beam search: distinct-2 across each prompt's 4 returned outputs
    distinct = {}
    for name, decode in tqdm([("beam", infergen.beam_search), ("diverse", infergen.diverse_beam_search)],
                             desc="chapter 4 diverse", file=sys.stdout):
        extra = {"num_beam_groups": 4, "diversity_penalty": 1.0} if name == "diverse" else {}
        per_prompt = []
        for prompt in prompts:  # one prompt at a time, as the chapter does
            ids = tok([prompt], return_tensors="pt").input_ids.to(model.device)
            out = decode(model, ids, 20, num_beams=4, num_return_sequences=4, return_dict=True, **extra)
            per_prompt.append(distinct_n(texts_of(tok, out), 2))
        distinct[name] = per_prompt
    summary["distinct2"] = {name: interval(values) for name, values in distinct.items()}
    summary["distinct2"]["diverse - beam"] = interval([d - b for d, b in zip(distinct["diverse"], distinct["beam"])])
    per_run["distinct2"] = distinct
    return {"settings": {"max_new_tokens": n_new, "widths": widths,
                         "diverse": "20 new tokens, 4 beams, 4 returned; diverse: 4 groups, penalty 1.0"},
            "summary": summary, "runs": per_run}


def chapter_5(model, tok, prompts, seeds) -> dict:
    """Chapter 5: the contrastive alpha sweep (k=5, 64 tokens), stopping at EOS and at a fixed length."""
    n_new, alphas = 64, [0.0, 0.2, 0.4, 0.6, 0.8]
    tok.padding_side = "left"
    batch = tok(prompts, return_tensors="pt", padding=True).to(model.device)
    per_run = {}
    jobs = [(mode, a) for mode in ("eos", "fixed length") for a in alphas]
    for mode, alpha in tqdm(jobs, desc="chapter 5", file=sys.stdout):
        start = time.perf_counter()
        out = infergen.contrastive_search(model, batch.input_ids, n_new, top_k=5, alpha=alpha,
                                          attention_mask=batch.attention_mask, return_dict=True,
                                          **({} if mode == "eos" else {"eos_token_id": []}))
        texts = texts_of(tok, out)
        per_run.setdefault(mode, {})[str(alpha)] = {
            "seconds": time.perf_counter() - start, "lengths": list(out.lengths), "mean_logprob": per_token(out),
            "diversity": [diversity(t) for t in texts], "texts": texts}
    summary = {}
    for mode, by_alpha in per_run.items():
        summary[mode] = {a: {"diversity": pooled_diversity(r["texts"]),
                             "rep2": interval(r["texts"], lambda ts: rep_n(ts, 2)),
                             "tokens": interval([float(n) for n in r["lengths"]]),
                             "mean_logprob": interval(r["mean_logprob"])} for a, r in by_alpha.items()}
        base = by_alpha["0.0"]
        for a, r in by_alpha.items():
            if a != "0.0":  # paired per prompt: alpha against greedy (alpha = 0)
                summary[mode][a]["diversity - alpha 0"] = interval(
                    [x - y for x, y in zip(r["diversity"], base["diversity"])])
    return {"settings": {"max_new_tokens": n_new, "top_k": 5, "alphas": alphas,
                         "modes": {"eos": "each row stops at its EOS", "fixed length": "eos_token_id=[]"}},
            "summary": summary, "runs": per_run}


CHAPTERS = {2: chapter_2, 3: chapter_3, 4: chapter_4, 5: chapter_5}


def main(argv=None) -> None:
    """Run one chapter's comparison and merge it into the committed results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chapter", type=int, choices=sorted(CHAPTERS), required=True)
    parser.add_argument("--prompts", type=int, default=24, help=f"how many prompts, 1..{len(PROMPTS)}")
    parser.add_argument("--seeds", type=int, default=None, help="seeds for sampled strategies (ch. 2: 3, ch. 3: 5)")
    args = parser.parse_args(argv)
    if not 1 <= args.prompts <= len(PROMPTS):
        parser.error(f"--prompts must be in [1, {len(PROMPTS)}], got {args.prompts}")
    torch.set_num_threads(1)
    seeds = list(range(args.seeds if args.seeds is not None else {2: 3, 3: 5}.get(args.chapter, 1)))
    model, tok = infergen.load_model("smollm2-135m", device="cpu", dtype=torch.float32)
    start = time.perf_counter()
    result = CHAPTERS[args.chapter](model, tok, PROMPTS[:args.prompts], seeds)
    result["run"] = {"command": "python benchmarks/spreads.py " + shlex.join(sys.argv[1:] if argv is None else argv),
                     "seconds": time.perf_counter() - start, "prompts": PROMPTS[:args.prompts],
                     "device": f"cpu ({platform.machine()}), torch threads 1, float32",
                     "torch": torch.__version__, "infergen": infergen.__version__,
                     "interval": "95% percentile bootstrap over the prompts "
                                 "(infergen.bench.stats.bootstrap_interval, 2000 resamples, seed 0)"}
    everything = json.loads(OUTPUTS[0].read_text()) if OUTPUTS[0].exists() else {}
    everything[f"chapter_{args.chapter}"] = result
    text = json.dumps(everything, indent=1, sort_keys=True) + "\n"
    for path in OUTPUTS:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    print(f"chapter {args.chapter}: {result['run']['seconds']:.0f} s; wrote", *map(str, OUTPUTS))


if __name__ == "__main__":
    main()
