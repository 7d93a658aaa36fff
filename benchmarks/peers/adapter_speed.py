"""infergen's decoders on llama.cpp (LlamaCppModel) against llama.cpp's own loop, side by side in one run.

Batch 1, greedy, EOS off, the same prompt ids and threads. Per GGUF format (written from infergen's
converted float32 model by write_gguf.py): llama-cpp-python's ``Llama.generate`` (its own sampler, top-k 1)
against ``greedy_search`` on a :class:`~infergen.interop.llamacpp.LlamaCppModel` that shares the same loaded
weights and context settings; then beam search (4 beams) on llama.cpp against beam search on infergen's
native float32 model. The contenders alternate for ``--rounds`` rounds after a warm-up; medians are
reported, with the per-token time the Python side adds (adapter minus llama.cpp's own, over the same
prefill and tokens) and whether the tokens agree.

    .venv/bin/python benchmarks/peers/adapter_speed.py [--tokens 64] [--rounds 3] [--formats F32,Q8_0]

Needs llama-cpp-python in the running environment (``pip install "infergen[llamacpp]"``). Writes
benchmarks/results/peers/adapter.md and adapter.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import llama_cpp
import torch

import infergen
from infergen import bench, beam_search, greedy_search
from infergen.interop.llamacpp import LlamaCppModel
from infergen.models.loading import cache_dir

ROOT = Path(__file__).resolve().parents[2]


def llama_generate(llm, ids: list[int], n: int) -> list[int]:
    """llama.cpp's own greedy loop (as llama_worker.py runs it)."""
    out = []
    for tok in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
        out.append(int(tok))
        if len(out) == n:
            return out
    return out


def timed(fn, ctx=None):
    """``(seconds, engine seconds, result)`` of one call; the engine seconds are the time llama.cpp's own
    counters (``llama_perf_context``) spent in ``llama_decode`` on context ``ctx`` (0 without one)."""
    if ctx is not None:
        llama_cpp.llama_perf_context_reset(ctx)
    t0 = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t0
    perf = llama_cpp.llama_perf_context(ctx) if ctx is not None else None
    return seconds, (perf.t_p_eval_ms + perf.t_eval_ms) / 1e3 if perf is not None else 0.0, result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--beams", type=int, default=4)
    ap.add_argument("--formats", default="F32,Q8_0")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "peers"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    n, nb = args.tokens, args.beams
    native, tok = infergen.load_model("smollm2-135m", device="cpu", dtype=torch.float32)
    ids = tok(bench.PROMPTS[0], return_tensors="pt").input_ids
    plain = ids[0].tolist()
    results, load_start = {}, os.getloadavg()[0]
    for fmt in args.formats.split(","):
        path = cache_dir() / "gguf" / f"smollm2-135m-{fmt}.gguf"
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=args.threads, n_batch=512, verbose=False)
        model = LlamaCppModel(llm, n_ctx=512, n_seq_max=2 * nb, n_threads=args.threads)
        contenders = {
            "llama.cpp generate": lambda: llama_generate(llm, plain, n),
            "infergen greedy on llama.cpp": lambda: greedy_search(model, ids, n, eos_token_id=[])[0, ids.shape[1]:].tolist(),
            f"infergen beam ({nb}) on llama.cpp": lambda: beam_search(model, ids, n, num_beams=nb, eos_token_id=[]),
        }
        if fmt == "F32":
            contenders[f"infergen beam ({nb}) native float32"] = lambda: beam_search(native, ids, n, num_beams=nb,
                                                                                   eos_token_id=[])
        ctxs = {"llama.cpp generate": llm.ctx, "infergen greedy on llama.cpp": model.ctx,
                f"infergen beam ({nb}) on llama.cpp": model.ctx}
        times: dict[str, list[float]] = {name: [] for name in contenders}
        engine: dict[str, list[float]] = {name: [] for name in contenders}
        outputs = {name: fn() for name, fn in contenders.items()}  # warm-up
        for _ in range(args.rounds):
            for name, fn in contenders.items():
                seconds, in_engine, _ = timed(fn, ctxs.get(name))
                times[name].append(seconds)
                engine[name].append(in_engine)
                print(f"{fmt} {name}: {seconds:.3f} s, {in_engine:.3f} s in llama_decode", flush=True)
        med = {name: statistics.median(ts) for name, ts in times.items()}
        best = {name: min(ts) for name, ts in times.items()}
        own, ours = best["llama.cpp generate"], best["infergen greedy on llama.cpp"]  # minima: the least disturbed
        # outside llama_decode, per token (median over the rounds): the host side of each loop
        host = {name: statistics.median((t - e) / n for t, e in zip(times[name], engine[name]))
                for name in ("llama.cpp generate", "infergen greedy on llama.cpp")}
        step = statistics.median(e / n for e in engine["llama.cpp generate"])
        beam_key = f"infergen beam ({nb}) native float32"
        results[fmt] = {
            "median_s": med, "min_s": best, "times_s": times, "engine_s": engine,
            "host_ms_per_token": {k: 1e3 * v for k, v in host.items()}, "engine_ms_per_token": 1e3 * step,
            "added_host_ms_per_token": 1e3 * (host["infergen greedy on llama.cpp"] - host["llama.cpp generate"]),
            "greedy_ratio_at_equal_engine": (step + host["llama.cpp generate"]) / (step + host["infergen greedy on llama.cpp"]),
            "greedy_tokens_equal": outputs["llama.cpp generate"] == outputs["infergen greedy on llama.cpp"],
            "greedy_ratio": own / ours, "overhead_ms_per_token": 1e3 * (ours - own) / n,
            "overhead_share": (ours - own) / ours,
            "beam_tokens_equal_native": (bool(torch.equal(outputs[f"infergen beam ({nb}) on llama.cpp"], outputs[beam_key]))
                                         if beam_key in outputs else None),
        }
        print(fmt, json.dumps({k: v for k, v in results[fmt].items() if k != "times_s" and k != "engine_s"}, indent=1))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"tokens": n, "rounds": args.rounds, "threads": args.threads, "beams": nb,
            "llama_cpp_python": llama_cpp.__version__, "torch": torch.__version__, "cpu": platform.processor(),
            "prompt_tokens": ids.shape[1], "load_average_start_end": [load_start, os.getloadavg()[0]]}
    (out / "adapter.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    lines = ["# infergen's decoders on llama.cpp (LlamaCppModel) vs llama.cpp's own loop", "",
             f"Batch 1, {n} new tokens, EOS off, {args.threads} thread(s), prompt of {ids.shape[1]} tokens; "
             f"{args.rounds} alternating rounds after a warm-up (one run of `benchmarks/peers/adapter_speed.py`, "
             f"llama-cpp-python {llama_cpp.__version__}, CPU {meta['cpu'] or platform.machine()}); load average "
             f"{meta['load_average_start_end'][0]:.1f} at the start, {meta['load_average_start_end'][1]:.1f} at the end "
             "(the machine is shared: the minimum of the rounds is the least disturbed, the ratios below use it).", "",
             "| format | contender | min s | median s | tokens/s (min) |", "|---|---|---:|---:|---:|"]
    for fmt, r in results.items():
        for name, s in r["median_s"].items():
            lines.append(f"| {fmt} | {name} | {r['min_s'][name]:.3f} | {s:.3f} | {n / r['min_s'][name]:.1f} |")
    lines += ["", "Greedy, per token: llama.cpp's own time in `llama_decode` (its perf counters) and the host time "
              "outside it (wall minus that), for llama.cpp's own loop and for infergen's loop on the adapter "
              "(logits copy, processors, commit); medians over the rounds. \"At equal engine time\" puts the host "
              "times on llama.cpp's own per-token engine time, taking the machine's load out of the ratio.", "",
              "| format | adapter / llama.cpp speed (min wall) | llama_decode per token | host per token, llama.cpp loop "
              "| host per token, infergen loop | added by infergen | adapter / llama.cpp at equal engine time "
              "| greedy tokens equal | beam tokens equal native |", "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for fmt, r in results.items():
        h = r["host_ms_per_token"]
        lines.append(f"| {fmt} | {r['greedy_ratio']:.2f}x | {r['engine_ms_per_token']:.2f} ms | "
                     f"{h['llama.cpp generate']:.2f} ms | {h['infergen greedy on llama.cpp']:.2f} ms | "
                     f"{r['added_host_ms_per_token']:.2f} ms | {r['greedy_ratio_at_equal_engine']:.2f}x | "
                     f"{r['greedy_tokens_equal']} | "
                     f"{'n/a' if r['beam_tokens_equal_native'] is None else r['beam_tokens_equal_native']} |")
    if "F32" in results:
        m = results["F32"]["min_s"]
        native_beam = m[f"infergen beam ({nb}) native float32"]
        lines += [""] + [f"infergen's beam search ({nb} beams) on llama.cpp {fmt}: "
                         f"{native_beam / r['min_s'][f'infergen beam ({nb}) on llama.cpp']:.2f}x the speed of the "
                         "same beam search on infergen's native float32 model." for fmt, r in results.items()]
    (out / "adapter.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
