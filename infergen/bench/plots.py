"""The plots the optimization chapter uses, drawn from a run's records, and ``save`` (JSON + plots)."""
from __future__ import annotations

import json
from pathlib import Path

from .records import Comparison, Results


def plot(results, out) -> list[Path]:
    """Write the plots into ``out``; returns their paths. ``results``: a :class:`Results` or its JSON form."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = results if isinstance(results, Results) else Results.from_json(results)
    out = Path(out)
    paths = []

    def save_fig(fig, name):
        fig.tight_layout()
        path = out / name
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)

    named = [("greedy_b1", r.greedy)] + [(f"sample_b{c.settings.get('batch', 1)}", c) for c in r.sampling] + [
        ("beam4", r.beam)]
    pairs = [(k, c) for k, c in named if isinstance(c, Comparison)
             and {"infergen", "transformers"} <= {x.name for x in c.contenders}]
    if pairs:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        xs = range(len(pairs))
        ax.bar([x - 0.2 for x in xs], [c.contender("infergen").tokens_per_s for _, c in pairs], 0.4, label="infergen")
        ax.bar([x + 0.2 for x in xs], [c.contender("transformers").tokens_per_s for _, c in pairs], 0.4,
               label="transformers")
        ax.set_xticks(list(xs), [k for k, _ in pairs])
        ax.set_ylabel("new tokens / s")
        ax.set_title("infergen vs transformers generate (median, alternating)")
        ax.legend()
        save_fig(fig, "speed.png")
    if r.kv is not None:
        step, t = r.kv.per_step, r.kv.total
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
        a1.plot(step.context, [1e3 * x for x in step.cached_s], "o-", label="KV cache")
        a1.plot(step.context, [1e3 * x for x in step.naive_s], "s-", label="no cache")
        a1.set_xlabel("context length (tokens)")
        a1.set_ylabel("ms per new token")
        a1.set_title("one step")
        a1.legend()
        a2.plot(t.new_tokens, t.cached_s, "o-", label="KV cache: O(n)")
        a2.plot(t.new_tokens, t.naive_s, "s-", label="no cache: O(n^2)")
        a2.set_xlabel("new tokens")
        a2.set_ylabel("seconds")
        a2.set_title("whole generation")
        a2.legend()
        save_fig(fig, "kv_cache.png")
    if r.batch is not None:
        rows = r.batch.rows
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot([x.batch for x in rows], [x.decode_tokens_per_s for x in rows], "o-")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("decode tokens / s")
        ax.set_title("throughput grows with the batch (one weight read, B tokens)")
        save_fig(fig, "batch.png")
    if r.prefill is not None:
        rows = r.prefill.rows
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot([x.prompt for x in rows], [x.prefill_tokens_per_s for x in rows], "o-", label="prefill")
        ax.plot([x.prompt for x in rows], [x.decode_tokens_per_s for x in rows], "s-", label="decode")
        ax.set_xlabel("prompt length")
        ax.set_ylabel("tokens / s")
        ax.set_yscale("log")
        ax.set_title("prefill is compute-bound, decode memory-bound")
        ax.legend()
        save_fig(fig, "prefill_decode.png")
    if r.dtype is not None:
        rows = r.dtype.rows
        names = [x.name for x in rows]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.bar(names, [x.tokens_per_s for x in rows], 0.5, label="measured")
        ax.bar(names, [1 / x.matmul_s for x in rows], 0.5, fill=False, hatch="//", label="matrix products alone")
        if all(x.roofline_tokens_per_s is not None for x in rows):
            ax.scatter(names, [x.roofline_tokens_per_s for x in rows], marker="_", s=900, color="red",
                       label="memory roofline", zorder=3)
        ax.set_ylabel("greedy tokens / s, batch 1")
        ax.set_title("fewer bytes per weight, more tokens")
        ax.legend()
        save_fig(fig, "roofline.png")
    return paths


def save(results: Results, out) -> list[Path]:
    """Write ``results.json`` and the plots into ``out``; returns the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    path.write_text(json.dumps(results.to_json(), indent=1, default=str))
    return [path] + plot(results, out)
