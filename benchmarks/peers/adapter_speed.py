"""infergen's decoders on llama.cpp (LlamaCppModel) against llama.cpp's own loop, side by side in one run.

Batch 1, greedy, EOS off, the same prompt ids and threads. Per GGUF format (written from infergen's
converted float32 model by write_gguf.py): llama-cpp-python's ``Llama.generate`` (its own sampler, top-k 1)
against ``greedy_search`` on a :class:`~infergen.interop.llamacpp.LlamaCppModel` that shares the same loaded
weights and context settings; then beam search (4 beams) on llama.cpp against the same beam search on
infergen's native model in the matching precision (float32 for F32, bfloat16 for BF16, int8 from
``infergen.quant`` for Q8_0). The contenders alternate for ``--rounds`` rounds after a warm-up; the
minimum of the rounds (the least disturbed on a shared machine) gives the ratios. Each greedy step on the
adapter is split three ways: the time inside ``llama_decode`` (llama.cpp's own counters), the adapter's
Python around it (batch filling, the logits copy) and the decoder's (processors, choice, commit).

    .venv/bin/python benchmarks/peers/adapter_speed.py [--tokens 64] [--rounds 7] [--threads 1] [--formats F32,BF16,Q8_0]

Needs llama-cpp-python in the running environment (``pip install "infergen[llamacpp]"``). Writes
benchmarks/results/peers/adapter.md and adapter.json (``make bench-peers`` runs it after run_peers.py's
table, through run_peers.py, and also stores the result in that run's results.json under "adapter").
"""
from __future__ import annotations

import argparse
import copy
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
from infergen.quant import quantize_int8

ROOT = Path(__file__).resolve().parents[2]
NATIVE = {"F32": "float32", "BF16": "bfloat16", "Q8_0": "int8"}  # infergen's native model in the same precision
OWN, GREEDY = "llama.cpp generate", "infergen greedy on llama.cpp"


class TimedLlamaCppModel(LlamaCppModel):
    """The adapter, adding up the wall time of its forward passes (``seconds``): the step minus it is the
    decoder's side (one ``perf_counter`` pair per step, well under a microsecond)."""

    seconds = 0.0

    def __call__(self, *args, **kwargs):
        """The adapter's forward pass, timed."""
        t0 = time.perf_counter()
        try:
            return super().__call__(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0


def llama_generate(llm, ids: list[int], n: int) -> list[int]:
    """llama.cpp's own greedy loop (as llama_worker.py runs it)."""
    out = []
    for tok in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
        out.append(int(tok))
        if len(out) == n:
            return out
    return out


def engine_seconds(ctx) -> float:
    """Seconds llama.cpp's counters spent in ``llama_decode`` on ``ctx`` since the last reset."""
    perf = llama_cpp.llama_perf_context(ctx)
    return (perf.t_p_eval_ms + perf.t_eval_ms) / 1e3


def native_models(threads: int) -> tuple[dict, object]:
    """infergen's native model in float32, bfloat16 and int8 (as run_peers.py makes them), and the tokenizer."""
    model, tok = infergen.load_model("smollm2-135m", device="cpu", dtype=torch.float32)
    ours = {"float32": model, "bfloat16": copy.deepcopy(model).to(torch.bfloat16)}
    ours["int8"] = quantize_int8(copy.deepcopy(ours["bfloat16"]))
    return ours, tok


def paired(times: dict, slow: str, fast: str) -> float:
    """The median over the rounds of ``times[slow] / times[fast]`` taken within each round: the two ran one
    after the other, so a burst of load on the shared machine slows both (the minima of each contender,
    taken separately, may come from different rounds)."""
    return statistics.median(a / b for a, b in zip(times[slow], times[fast]))


def derived(times: dict, nb: int, native: str) -> dict:
    """The ratios read off the rounds' ``times``: greedy on the adapter against llama.cpp's own loop, beam
    search on llama.cpp against the native model's, each from the minima and paired within rounds."""
    beam_lc, beam_native = f"infergen beam ({nb}) on llama.cpp", f"infergen beam ({nb}) native {native}"
    return {"greedy_ratio": min(times[OWN]) / min(times[GREEDY]),  # the target: >= 0.9
            "beam_ratio": min(times[beam_native]) / min(times[beam_lc]),  # the target: > 1
            "greedy_ratio_paired": paired(times, OWN, GREEDY), "beam_ratio_paired": paired(times, beam_native, beam_lc)}


def run_format(fmt: str, ids: torch.Tensor, native, n: int, nb: int, rounds: int, threads: int) -> dict:
    """Time the contenders of one GGUF format, alternating; returns the format's results."""
    plain = ids[0].tolist()
    path = cache_dir() / "gguf" / f"smollm2-135m-{fmt}.gguf"
    if not path.is_file():
        raise SystemExit(f"missing {path}: run benchmarks/peers/write_gguf.py first")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=threads, n_batch=512, verbose=False)
    model = TimedLlamaCppModel(llm, n_ctx=512, n_seq_max=2 * nb, n_threads=threads)
    beam_lc, beam_native = f"infergen beam ({nb}) on llama.cpp", f"infergen beam ({nb}) native {NATIVE[fmt]}"
    contenders = {
        OWN: (lambda: llama_generate(llm, plain, n), llm.ctx),
        GREEDY: (lambda: greedy_search(model, ids, n, eos_token_id=[])[0, ids.shape[1]:].tolist(), model.ctx),
        beam_lc: (lambda: beam_search(model, ids, n, num_beams=nb, eos_token_id=[]), model.ctx),
        beam_native: (lambda: beam_search(native, ids, n, num_beams=nb, eos_token_id=[]), None),
    }
    outputs = {name: fn() for name, (fn, _) in contenders.items()}  # warm-up
    times: dict[str, list[float]] = {name: [] for name in contenders}
    engine: dict[str, list[float]] = {name: [] for name in contenders}
    adapter: dict[str, list[float]] = {name: [] for name in contenders}
    loads = []
    for _ in range(rounds):
        loads.append(os.getloadavg()[0])
        for name, (fn, ctx) in contenders.items():
            if ctx is not None:
                llama_cpp.llama_perf_context_reset(ctx)
            model.seconds = 0.0
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            engine[name].append(engine_seconds(ctx) if ctx is not None else 0.0)
            adapter[name].append(model.seconds)
            print(f"{fmt} {name}: {times[name][-1]:.3f} s, {engine[name][-1]:.3f} s in llama_decode "
                  f"(load {loads[-1]:.1f})", flush=True)
    best = {name: min(ts) for name, ts in times.items()}
    i = min(range(rounds), key=times[GREEDY].__getitem__)  # the adapter's least disturbed greedy round
    step, in_engine, in_adapter = times[GREEDY][i] / n, engine[GREEDY][i] / n, adapter[GREEDY][i] / n
    j = min(range(rounds), key=times[OWN].__getitem__)
    own_step, own_engine = times[OWN][j] / n, engine[OWN][j] / n
    return {
        "native": NATIVE[fmt], "min_s": best, "times_s": times, "engine_s": engine, "adapter_s": adapter,
        "load_average_per_round": loads,
        **derived(times, nb, NATIVE[fmt]),
        # per greedy token, in the least disturbed round of each loop
        "step_ms": 1e3 * step, "engine_ms": 1e3 * in_engine, "adapter_python_ms": 1e3 * (in_adapter - in_engine),
        "decoder_python_ms": 1e3 * (step - in_adapter), "python_share": (step - in_engine) / step,
        "own_step_ms": 1e3 * own_step, "own_engine_ms": 1e3 * own_engine, "own_host_ms": 1e3 * (own_step - own_engine),
        # llama.cpp's loop with infergen's host time in place of its own: the ratio with the engine time held equal
        "greedy_ratio_at_equal_engine": own_step / (own_engine + step - in_engine),
        "greedy_tokens_equal": outputs[OWN] == outputs[GREEDY],
        "beam_tokens_equal_native": bool(torch.equal(outputs[beam_lc], outputs[beam_native])),
    }


def report(result: dict) -> str:
    """The markdown table of an adapter run (``result`` as :func:`main` returns it)."""
    meta, results = result["meta"], result["results"]
    n, nb = meta["tokens"], meta["beams"]
    loads = [x for r in results.values() for x in r["load_average_per_round"]]
    lines = ["# infergen's decoders on llama.cpp (LlamaCppModel) vs llama.cpp's own loop", "",
             f"Batch 1, {n} new tokens, EOS off, {meta['threads']} thread(s), prompt of {meta['prompt_tokens']} tokens; "
             f"{meta['rounds']} alternating rounds after a warm-up (`{meta['command']}`, llama-cpp-python "
             f"{meta['llama_cpp_python']}, torch {meta['torch']}, CPU {meta['cpu']}). The machine is shared: load "
             f"average (1 min) {min(loads):.1f} to {max(loads):.1f} over the rounds, so the minimum of the rounds "
             "(the least disturbed) and the ratios within each round give the ratios.", "",
             "| format | contender | min s | tokens/s (min) |", "|---|---|---:|---:|"]
    for fmt, r in results.items():
        for name, s in r["min_s"].items():
            lines.append(f"| {fmt} | {name} | {s:.3f} | {n / s:.1f} |")
    lines += ["", "Targets (issue 22): infergen's greedy on llama.cpp at least 0.9x llama.cpp's own `generate`; "
              f"beam search ({nb} beams) on llama.cpp faster than the same beam search on infergen's native model "
              "in the same precision (float32 / bfloat16 / int8 from `infergen.quant`).", "",
              "Each ratio twice: from the minima of the rounds, and as the median over the rounds of the ratio "
              "within a round (the two ran one after the other, so a burst of load hits both: steadier under load). "
              "\"At equal engine time\": llama.cpp's own loop with infergen's host time per token in place of its own.",
              "", "| format | greedy on llama.cpp / llama.cpp `generate`: minima | paired | target 0.9x (minima / paired) "
              f"| at equal engine time | beam ({nb}): llama.cpp / native: minima | paired | native "
              "| target > 1 (minima / paired) | greedy tokens equal | beam tokens equal native |",
              "|---|---:|---:|---|---:|---:|---:|---|---|---|---|"]
    for fmt, r in results.items():
        greedy_met = "/".join("met" if r[k] >= 0.9 else "missed" for k in ("greedy_ratio", "greedy_ratio_paired"))
        beam_met = "/".join("met" if r[k] > 1 else "missed" for k in ("beam_ratio", "beam_ratio_paired"))
        lines.append(f"| {fmt} | {r['greedy_ratio']:.2f}x | {r['greedy_ratio_paired']:.2f}x | {greedy_met} "
                     f"| {r['greedy_ratio_at_equal_engine']:.2f}x | {r['beam_ratio']:.2f}x | {r['beam_ratio_paired']:.2f}x "
                     f"| {r['native']} | {beam_met} | {r['greedy_tokens_equal']} | {r['beam_tokens_equal_native']} |")
    lines += ["", "One greedy token on the adapter, split (its least disturbed round): inside `llama_decode` "
              "(llama.cpp's counters), the adapter's Python around it (the batch, the logits copy), the decoder's "
              "Python (processors, choice, commit); llama.cpp's own loop beside it.", "",
              "| format | step | llama_decode | adapter Python | decoder Python | Python share of the step "
              "| llama.cpp loop: step | its llama_decode | its host side |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for fmt, r in results.items():
        lines.append(f"| {fmt} | {r['step_ms']:.2f} ms | {r['engine_ms']:.2f} ms | {r['adapter_python_ms']:.2f} ms "
                     f"| {r['decoder_python_ms']:.2f} ms | {100 * r['python_share']:.1f}% | {r['own_step_ms']:.2f} ms "
                     f"| {r['own_engine_ms']:.2f} ms | {r['own_host_ms']:.2f} ms |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    """Run the benchmark, write adapter.json and adapter.md into ``--out``, return the result."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--beams", type=int, default=4)
    ap.add_argument("--formats", default="F32,BF16,Q8_0")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "peers"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    natives, tok = native_models(args.threads)
    ids = tok(bench.PROMPTS[0], return_tensors="pt").input_ids
    load_start, t0 = list(os.getloadavg()), time.perf_counter()
    results = {fmt: run_format(fmt, ids, natives[NATIVE[fmt]], args.tokens, args.beams, args.rounds, args.threads)
               for fmt in args.formats.split(",")}
    command = ("python benchmarks/peers/adapter_speed.py " + " ".join(
        f"--{k} {getattr(args, k)}" for k in ("tokens", "rounds", "threads", "beams", "formats")))
    meta = {"tokens": args.tokens, "rounds": args.rounds, "threads": args.threads, "beams": args.beams,
            "command": command, "llama_cpp_python": llama_cpp.__version__, "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "prompt_tokens": int(ids.shape[1]),
            "prompt_ids": ids[0].tolist(), "load_average_start": load_start,
            "load_average_end": list(os.getloadavg()), "wall_s": time.perf_counter() - t0}
    result = {"meta": meta, "results": results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapter.json").write_text(json.dumps(result, indent=1) + "\n")
    text = report(result)
    (out / "adapter.md").write_text(text)
    print(text)
    return result


if __name__ == "__main__":
    main()
