"""The reader-facing report: a plain-text table of every measurement, then each comparison as a ratio
with a plain description of what it compares. Reporting only: nothing here measures."""
from __future__ import annotations

from dataclasses import dataclass

from .records import Comparison, Results, Skipped


@dataclass
class Ratio:
    """One comparison: ``value`` is the ratio ``description`` names; ``note`` adds what explains it."""
    description: str
    value: float
    note: str = ""


def _as_results(results) -> Results:
    return results if isinstance(results, Results) else Results.from_json(results)


def ratios(results) -> list[Ratio]:
    """The headline comparisons of a run, each a same-run ratio."""
    r = _as_results(results)
    out = []
    if r.greedy is not None:
        out.append(Ratio("greedy, batch 1: infergen's tokens/s over transformers'", r.greedy.ratio,
                         f"same tokens: {r.greedy.same_tokens}"))
        if r.greedy.roofline_fraction is not None and r.roofline is not None:
            out.append(Ratio("greedy, batch 1: infergen's tokens/s over the float32 memory bound",
                             r.greedy.roofline_fraction,
                             f"bound {r.roofline.fp32_bound_tokens_per_s:.1f} tokens/s at "
                             f"{r.roofline.bandwidth.read_GBps:.1f} GB/s; the matrix products alone, timed beside "
                             f"it, would reach {100 * r.greedy.matmul_roofline_fraction:.0f}% of it"))
    for c in r.sampling:
        out.append(Ratio(f"sampling, batch {c.settings.get('batch', 1)}: infergen's tokens/s over transformers'",
                         c.ratio))
    if isinstance(r.beam, Comparison):
        out.append(Ratio(f"beam search, {r.beam.settings.get('num_beams', 4)} beams: infergen's speed over "
                         "transformers'", r.beam.ratio, f"same tokens: {r.beam.same_tokens}"))
    for name, c in (("contrastive search", r.contrastive), ("MCTS", r.mcts)):
        if isinstance(c, Comparison):
            out.append(Ratio(f"{name}: with cache reuse over re-running every sequence", c.ratio,
                             f"same tokens: {c.same_tokens}"))
    if r.kv is not None:
        by = r.kv.ratio
        n = 512 if 512 in by else max(by)
        measured = r.kv.total.naive_measured[r.kv.total.new_tokens.index(n)]
        out.append(Ratio(f"greedy with a KV cache over greedy without, {n} new tokens", by[n],
                         "" if measured else "the no-cache time summed from measured per-step times"))
    if r.batch is not None and any(row.batch == 1 for row in r.batch.rows):
        top = 16 if any(row.batch == 16 for row in r.batch.rows) else max(row.batch for row in r.batch.rows)
        out.append(Ratio(f"decode tokens/s at batch {top} over batch 1", r.batch.tokens_per_s(top) / r.batch.tokens_per_s(1)))
    if r.dtype is not None:
        f32 = r.dtype.row("float32")
        for name in r.dtype.names:
            if name == "float32":
                continue
            row = r.dtype.row(name)
            out.append(Ratio(f"{name} weights: greedy tokens/s over float32's", r.dtype.speedup(name),
                             f"perplexity {row.perplexity:.3f} vs {f32.perplexity:.3f}; matrix products alone "
                             f"{r.dtype.matmul_speedup(name):.2f}x (the ratio with no other work); other work "
                             f"{1e3 * row.overhead_s_per_token:.1f} vs {1e3 * f32.overhead_s_per_token:.1f} ms per token"))
    if r.serving is not None:
        out.append(Ratio(f"continuous over static batching, {r.serving.requests} mixed requests", r.serving.speedup,
                         f"same tokens: {r.serving.same_tokens}"))
    return out


def format_table(results) -> str:
    """A plain-text report (``results``: a :class:`Results` or its JSON form): one line per
    measurement, then the comparisons as ratios."""
    r = _as_results(results)
    m = r.machine
    lines = [f"machine: {m.processor}, {m.threads} threads, torch {m.torch}, transformers {m.transformers}, "
             f"load {m.load_average_start}"]
    if r.roofline is not None:
        ro = r.roofline
        samples = ", ".join(f"{x:.0f}" for x in ro.bandwidth.read_samples)
        lines.append(f"roofline: read bandwidth {ro.bandwidth.read_GBps:.1f} GB/s (buffers: {samples}; "
                     f"copy {ro.bandwidth.copy_GBps:.1f}), weights {ro.weight_bytes / 1e6:.0f} MB, "
                     f"KV {ro.kv_bytes_per_token / 1e3:.1f} kB/token -> fp32 bound "
                     f"{ro.fp32_bound_tokens_per_s:.1f} tokens/s at batch 1")
        lines.append(f"          decode matmuls alone: {1e3 * ro.matmul_s:.1f} ms = {ro.matmul_GBps:.1f} GB/s "
                     f"({100 * ro.matmul_GBps / ro.bandwidth.read_GBps:.0f}% of the bandwidth) -> "
                     f"{1 / ro.matmul_s:.1f} tokens/s with zero overhead")
    lines.append("")
    lines.append(f"{'benchmark':<34}{'contender A':>22}{'contender B':>26}{'A/B speed':>11}")
    pairs = [("greedy_b1", r.greedy)] + [(f"sample_b{c.settings.get('batch', 1)}", c) for c in r.sampling] + [
        ("beam4", r.beam), ("contrastive", r.contrastive), ("mcts", r.mcts)]
    for key, e in pairs:
        if e is None:
            continue
        if isinstance(e, Skipped):
            lines.append(f"{key:<34}skipped: {e.skipped}")
            continue
        a, b = e.first, e.second
        lines.append(f"{key:<34}{a.name[:11]:>11} {a.tokens_per_s:>8.1f} t/s"
                     f"{b.name[:13]:>14} {b.tokens_per_s:>8.1f} t/s{e.ratio:>10.2f}x")
    if r.dtype is not None:
        for name in r.dtype.names:
            row = r.dtype.row(name)
            lines.append(f"{'dtype ' + name:<34}{row.tokens_per_s:>11.1f} t/s  x{r.dtype.speedup(name):.2f}"
                         f" vs fp32, {row.weight_bytes / 1e6:.0f} MB, perplexity {row.perplexity:.3f}"
                         + (f", {100 * row.roofline_fraction:.0f}% of its roofline" if row.roofline_fraction else "")
                         + f", matmuls {1e3 * row.matmul_s:.1f} ms/token")
    if r.kv is not None:
        t = r.kv.total
        for n, c, nc, meas in zip(t.new_tokens, t.cached_s, t.naive_s, t.naive_measured):
            lines.append(f"{'kv cache vs none, ' + str(n) + ' tokens':<34}{c:>10.2f} s{'':>4}"
                         f"{nc:>13.2f} s{'' if meas else '*':<13}{nc / c:>8.1f}x")
        lines.append("  (* no-cache total summed from measured per-step costs)")
    if r.batch is not None:
        for row in r.batch.rows:
            lines.append(f"{'decode throughput, batch ' + str(row.batch):<34}{row.decode_tokens_per_s:>11.1f} t/s")
    if r.prefill is not None:
        for row in r.prefill.rows:
            lines.append(f"{'prefill ' + str(row.prompt) + ' tokens':<34}{row.prefill_tokens_per_s:>11.1f} t/s"
                         f"   decode at that context {row.decode_tokens_per_s:.1f} t/s")
        pm = r.prefill.peak_memory
        lines.append(f"peak memory added (batch {pm.batch}, {pm.new_tokens} tokens): infergen "
                     f"{pm.infergen_bytes / 1e6:.1f} MB, transformers {pm.transformers_bytes / 1e6:.1f} MB; "
                     f"KV cache {r.prefill.kv_bytes_per_token / 1e3:.1f} kB/token")
    if r.serving is not None:
        v = r.serving
        lines.append(f"{'serving ' + str(v.requests) + ' requests, batch ' + str(v.batch_size):<34}"
                     f"{'continuous':>11} {v.continuous.tokens_per_s:>8.1f} t/s{'static':>14} "
                     f"{v.static.tokens_per_s:>8.1f} t/s{v.speedup:>10.2f}x")
        occupancy = "" if v.continuous.occupancy is None else f"; row occupancy {100 * v.continuous.occupancy:.0f}%"
        lines.append(f"  mean latency: continuous {v.continuous.mean_latency_s:.2f} s, static "
                     f"{v.static.mean_latency_s:.2f} s{occupancy}; same tokens: {v.same_tokens}")
    found = ratios(r)
    if found:
        lines.append("")
        lines.append("comparisons (same-run ratios):")
        for x in found:
            lines.append(f"  {x.description:<72} {x.value:>7.2f}" + (f"  ({x.note})" if x.note else ""))
    return "\n".join(lines)


def write_report(out, result: dict, text: str):
    """Write a side-by-side benchmark's ``result`` (``results.json``) and its table ``text``
    (``results.md``) into the folder ``out`` (created if missing), print the table, return the folder."""
    import json
    from pathlib import Path

    dest = Path(out)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "results.json").write_text(json.dumps(result, indent=1))
    (dest / "results.md").write_text(text)
    print(text)
    return dest
