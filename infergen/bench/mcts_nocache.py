"""MCTS without the K/V slices: the naive baseline that re-runs the whole prefix for every evaluation.

    python -m infergen.bench.mcts_nocache            # short and long prompt, sequential and batched leaves
    python -m infergen.bench.mcts_nocache --quick

The library's search (:class:`infergen.decoding.mcts.RowSearch`) evaluates a leaf with one single-token
forward on a cache assembled from the K/V slices its path's nodes keep. :class:`NoCacheSearch` is the
same search, but it evaluates every leaf (and every rollout step) by running ``prompt + committed +
path (+ rollout)`` from scratch: the naive version, kept here as the reference the slices are measured
against. Both build the same trees and commit the same tokens (asserted by every run of this script);
only the cost differs, and the naive cost grows with the context length.

Results go to benchmarks/results/mcts/nocache.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from infergen.decoding.base import make_generator, prepare
from infergen.decoding.mcts import RowSearch, SearchConfig, likelihood_value, mcts_decode
from infergen.decoding.mcts.search import run_searches, summarise
from infergen.decoding.steps import Rows, last_logits, prefill
from infergen.params import SamplingParams


class NoCacheSearch(RowSearch):
    """:class:`~infergen.decoding.mcts.RowSearch` that recomputes every path from scratch (no K/V reuse)."""

    def leaf_logits(self, paths):
        """Next-token logits after each path, by a forward over the whole sequence; no cache is kept."""
        return self.rollout_logits(paths, [[] for _ in paths], None), None

    def rollout_logits(self, paths, rollouts, cache):
        """Next-token logits after each path and its rollout so far: the whole sequences, left-padded,
        run from scratch on an emptied cache (the working one for a single leaf, else the batch cache)."""
        seqs = [self.context + [n.token for n in p] + r for p, r in zip(paths, rollouts)]
        cache = self.cache if len(paths) == 1 else self.batch
        seqs += seqs[-1:] * (cache.batch_size - len(seqs))  # filler rows: outputs ignored
        T = max(len(q) for q in seqs)
        ids = torch.zeros(len(seqs), T, dtype=torch.long, device=self.device)
        mask = torch.zeros(len(seqs), T, dtype=torch.bool, device=self.device)
        for i, q in enumerate(seqs):
            ids[i, T - len(q):] = torch.tensor(q, device=self.device)
            mask[i, T - len(q):] = True
        cache.crop(0)
        self.stats["forwards"] += 1
        self.stats["forward_tokens"] += sum(len(q) for q in seqs[:len(paths)])
        return last_logits(prefill(self.model, ids, cache, mask))[:len(paths)]


def mcts_decode_nocache(model, input_ids, max_new_tokens, *, attention_mask=None, eos_token_id=None,
                        pad_token_id=None, stopping=None, return_dict=False, num_simulations=50, c_puct=1.0,
                        temperature=1.0, top_k=10, value_fn=None, rollout_tokens=0, leaf_batch=None, seed=None,
                        commit_temperature=0.0):
    """``mcts_decode`` re-running the prefix for every evaluation (what ``use_cache=False`` used to do).

    The decoder's own driver, written out with :class:`NoCacheSearch` searching every row (each row its
    own tree, one column committed for all unfinished rows per step), so that the library needs no seam
    for this baseline. The settings are those of :func:`~infergen.decoding.mcts.mcts_decode`, taken as
    valid: the benchmark and the tests pass the same ones to both and compare the results.
    """
    setup, _ = prepare(model, input_ids, max_new_tokens, attention_mask=attention_mask, eos_token_id=eos_token_id,
                       pad_token_id=pad_token_id, allocate=False)
    model = setup.model
    cfg = SearchConfig(num_simulations, c_puct, top_k, value_fn or likelihood_value, rollout_tokens,
                       frozenset(setup.eos.tolist()), SamplingParams(temperature=temperature),
                       SamplingParams(temperature=commit_temperature),
                       generator=make_generator(seed, device=model.device), leaf_batch=leaf_batch)
    rows = Rows(setup, stopping=stopping)
    with torch.inference_mode():
        searches = [NoCacheSearch(model, ids[mask].tolist(), max_new_tokens, cfg)
                    for ids, mask in zip(setup.input_ids, setup.attention_mask)]
        trees = run_searches(searches, rows, max_new_tokens)
    return rows.output(return_dict, info={"tree": trees[0], "trees": trees, "stats": summarise(searches)})


def assert_same_search(cached, naive, atol=1e-5):
    """The two ``return_dict=True`` outputs committed the same tokens and built the same first trees."""
    assert torch.equal(cached.sequences, naive.sequences), (cached.sequences, naive.sequences)
    torch.testing.assert_close(cached.logprobs, naive.logprobs, atol=atol, rtol=0)
    for a, b in zip(cached.info["trees"], naive.info["trees"]):
        pairs = [(a, b)]
        while pairs:
            x, y = pairs.pop()
            assert (x.token, x.visits, x.terminal) == (y.token, y.visits, y.terminal), (x, y)
            assert abs(x.prior - y.prior) <= atol and abs(x.q - y.q) <= atol, (x, y)
            assert len(x.children) == len(y.children)
            pairs.extend(zip(x.children, y.children))


LONG_PROMPT = ("The history of computing is a story of abstraction. Early machines were programmed by rewiring "
               "panels; stored programs made software possible; compilers let people write in languages closer "
               "to mathematics; operating systems hid the hardware behind files and processes. ") * 4 \
              + "The next abstraction will be"


def stop_after(n):
    """A stopping criterion: every row ends once it has ``n`` new tokens."""
    return lambda new_tokens: torch.full((new_tokens.shape[0],), new_tokens.shape[1] >= n, dtype=torch.bool)


def timed(fn, *args, **kwargs):
    """``(fn(*args, **kwargs), seconds)``."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def cost_table(model, tok, n=2, sims=6, top_k=10, rollouts=(0, 2), leaf_batches=(1, 8)) -> list[dict]:
    """Print (and return) the cost per simulation with and without K/V slices, for a short and a long
    prompt; asserts that both searches commit the same tokens and build the same trees.

    The horizon is set far (``max_new_tokens=64``, a stopping criterion ends each run after ``n``
    tokens), so almost every simulation evaluates a new leaf instead of re-scoring a terminal node."""
    rows = []
    print("| prompt tokens | rollout | leaf_batch | K/V slices | evaluations / sim | forwards / sim | tokens / sim "
          "| ms / sim | speed-up |")
    print("|---:|---:|---:|:---:|---:|---:|---:|---:|---:|")
    for prompt in ["The future of AI is", LONG_PROMPT]:
        ids = tok(prompt, return_tensors="pt").input_ids.to(model.device)
        for rollout in rollouts:
            for leaf_batch in leaf_batches:
                kwargs = dict(num_simulations=sims, top_k=top_k, rollout_tokens=rollout, leaf_batch=leaf_batch,
                              stopping=stop_after(n), return_dict=True)
                cached, t_cached = timed(mcts_decode, model, ids, 64, **kwargs)
                naive, t_naive = timed(mcts_decode_nocache, model, ids, 64, **kwargs)
                assert_same_search(cached, naive, atol=1e-4)
                for slices, out, seconds in (("yes", cached, t_cached), ("no", naive, t_naive)):
                    s = out.info["stats"]
                    row = dict(prompt_tokens=ids.shape[1], rollout=rollout, leaf_batch=leaf_batch, kv_slices=slices,
                               ms_per_simulation=1000 * seconds / max(s["simulations"], 1),
                               evaluations_per_simulation=s["evaluations"] / max(s["simulations"], 1),
                               **{k: s[k] for k in ("forwards_per_simulation", "tokens_per_simulation")})
                    rows.append(row)
                    speedup = f"{t_naive / t_cached:.1f}x" if slices == "no" else ""
                    print(f"| {row['prompt_tokens']} | {rollout} | {leaf_batch} | {slices} "
                          f"| {row['evaluations_per_simulation']:.2f} | {row['forwards_per_simulation']:.2f} "
                          f"| {row['tokens_per_simulation']:.1f} | {row['ms_per_simulation']:.1f} | {speedup} |",
                          flush=True)
    print("same tokens and trees with and without K/V slices in every setting (asserted)")
    return rows


def main(argv=None):
    """Time the cached search against :class:`NoCacheSearch` on the bundled model; write the results."""
    import infergen

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer tokens and simulations")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/mcts")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tok = infergen.load_model("smollm2-135m", device="cpu")
    n, sims = (1, 4) if args.quick else (2, 6)
    rows = cost_table(model, tok, n, sims)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "nocache.json").write_text(json.dumps(dict(quick=args.quick, threads=args.threads, new_tokens=n,
                                                      simulations=sims, rows=rows), indent=1))


if __name__ == "__main__":
    main()
