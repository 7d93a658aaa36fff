"""infergen against llama.cpp on the CPU, side by side in one run (``make bench-peers``).

Two tables. First infergen's native model against llama.cpp: the same weights in each precision (F32 /
BF16 / Q8_0 GGUF files written from infergen's converted float32 model by write_gguf.py, against infergen
float32 / bfloat16 / int8), the same prompt ids, greedy, EOS off, the same number of threads; the
contenders alternate (infergen, llama.cpp, ...) after a warm-up and the medians are reported, with each
one's share of the memory-bandwidth roofline measured in the same run and whether llama.cpp's greedy
tokens equal infergen's. Then infergen's decoders on llama.cpp (``LlamaCppModel``) against llama.cpp's
own loop and against infergen's native beam search (adapter_speed.py, 1 thread by default).

    .venv/bin/python benchmarks/peers/run_peers.py [--tokens 128] [--rounds 5] [--threads 2] [--tables peers,adapter]

llama.cpp's own loop runs in a worker process (llama_worker.py, by default under the running Python,
which needs llama-cpp-python: ``pip install "infergen[llamacpp]"``). Results go to
benchmarks/results/peers/: results.json and results.md (the first table; results.json also holds the
adapter's run under "adapter"), adapter.json and adapter.md. The book reads a copy of results.json
shipped in the package (infergen/bench/results/peers.json).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import gguf
import torch

import infergen
from infergen import bench
from infergen.models.loading import cache_dir
from infergen.quant import quantize_int8

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PAIRS = [("float32", "F32"), ("bfloat16", "BF16"), ("int8", "Q8_0")]


class LlamaCpp:
    """The worker process, one JSON line per command."""

    def __init__(self, python: Path):
        self.proc = subprocess.Popen([str(python), str(HERE / "llama_worker.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the llama.cpp worker stopped (is llama-cpp-python installed in --python's "
                               "environment? `make bench-peers` installs it)")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def gguf_bytes(path: Path) -> int:
    return sum(int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--python", default=sys.executable, help="the Python that runs llama_worker.py")
    ap.add_argument("--tables", default="peers,adapter", help="which tables: peers (native vs llama.cpp), "
                    "adapter (infergen's decoders on llama.cpp)")
    ap.add_argument("--adapter-args", default="--threads 1 --rounds 7 --tokens 64",
                    help="arguments for adapter_speed.py")
    ap.add_argument("--gguf", default=str(cache_dir() / "gguf"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "peers"))
    args = ap.parse_args(argv)
    tables = set(args.tables.split(","))
    if not tables or tables - {"peers", "adapter"}:
        raise SystemExit(f"--tables must name peers and/or adapter, got {args.tables!r}")
    if "adapter" in tables:
        try:
            import llama_cpp  # noqa: F401  (adapter_speed runs infergen's decoders on it, in this process)
        except ImportError:
            raise SystemExit(f"{sys.executable} has no llama-cpp-python: pip install \"infergen[llamacpp]\" "
                             "(`make bench-peers` installs it)") from None
    if "peers" in tables:
        peers_table(args)
    if "adapter" in tables:
        sys.path.insert(0, str(HERE))
        import adapter_speed

        adapter = adapter_speed.main(shlex.split(args.adapter_args) + ["--out", args.out])
        results = Path(args.out) / "results.json"
        if results.exists():  # the book reads both tables from one file (infergen/bench/results/peers.json)
            peers = json.loads(results.read_text())
            peers["adapter"] = adapter
            results.write_text(json.dumps(peers, indent=1))


def peers_table(args):
    """The first table: infergen's native model beside llama.cpp's own loop."""
    torch.set_num_threads(args.threads)
    n = args.tokens
    model, tok = infergen.load_model("smollm2-135m", device="cpu", dtype=torch.float32)
    ours = {"float32": model, "bfloat16": copy.deepcopy(model).to(torch.bfloat16)}
    ours["int8"] = quantize_int8(copy.deepcopy(ours["bfloat16"]))
    ids = tok(bench.PROMPTS[0], return_tensors="pt").input_ids
    files = {fmt: Path(args.gguf) / f"smollm2-135m-{fmt}.gguf" for _, fmt in PAIRS}
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise SystemExit(f"missing GGUF files {missing}: run benchmarks/peers/write_gguf.py first")
    if not Path(args.python).exists():
        raise SystemExit(f"no {args.python} (the Python with llama-cpp-python that runs llama_worker.py)")
    peer = LlamaCpp(Path(args.python))
    try:
        version = None
        for fmt, path in files.items():
            version = peer.ask(cmd="load", name=fmt, path=str(path), threads=args.threads,
                               n_ctx=ids.shape[1] + n + 8)["version"]
        out = {}
        contenders = {}
        for name, fmt in PAIRS:
            m = ours[name]
            contenders[f"infergen {name}"] = (lambda m=m, name=name: out.__setitem__(
                name, infergen.greedy_search(m, ids, n, eos_token_id=[])[0, ids.shape[1]:].tolist()))
            contenders[f"llama.cpp {fmt}"] = (lambda fmt=fmt: out.__setitem__(
                fmt, peer.ask(cmd="run", name=fmt, ids=ids[0].tolist(), n=n)["tokens"]))
            # the matrix products of the same n steps alone: infergen's ceiling whatever the Python around them
            contenders[f"infergen {name} matmuls"] = bench.decode_matmuls(m, n)
        load_start = os.getloadavg()
        bandwidth = bench.memory_bandwidth(512)
        times = bench.alternate(contenders, repeats=args.rounds, warmup=1)
        load_end = os.getloadavg()
    finally:
        peer.close()
    context = ids.shape[1] + n / 2
    cfg = model.config
    kv_f16 = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 2  # llama.cpp's default f16 cache
    rows = []
    for name, fmt in PAIRS:
        ig_s, lc_s = bench.median(times[f"infergen {name}"]), bench.median(times[f"llama.cpp {fmt}"])
        mm_s = bench.median(times[f"infergen {name} matmuls"])
        ig_bound = bench.roofline(bandwidth.read_GBps, bench.weight_bytes(ours[name]),
                                  bench.kv_bytes_per_token(ours[name]), context).tokens_per_s
        lc_bound = bench.roofline(bandwidth.read_GBps, gguf_bytes(files[fmt]), kv_f16, context).tokens_per_s
        same = 0
        for a, b in zip(out[name], out[fmt]):
            if a != b:
                break
            same += 1
        rows.append(dict(infergen=name, llama_cpp=fmt, infergen_tokens_per_s=n / ig_s, llama_cpp_tokens_per_s=n / lc_s,
                         llama_cpp_over_infergen=ig_s / lc_s, infergen_roofline_fraction=n / ig_s / ig_bound,
                         llama_cpp_roofline_fraction=n / lc_s / lc_bound, same_greedy_prefix=same,
                         infergen_matmuls_tokens_per_s=n / mm_s, llama_cpp_over_infergen_matmuls=mm_s / lc_s))
    result = dict(llama_cpp_python=version, torch=torch.__version__, threads=args.threads, new_tokens=n,
                  rounds=args.rounds, prompt_tokens=int(ids.shape[1]), read_GBps=bandwidth.read_GBps,
                  load_average_start=list(load_start), load_average_end=list(load_end), times_s=times, rows=rows)
    lines = [f"infergen and llama.cpp (llama-cpp-python {version}) on the CPU, batch 1, greedy, {n} new tokens after "
             f"a {ids.shape[1]}-token prompt, {args.threads} threads, {args.rounds} alternating rounds (medians); "
             f"read bandwidth {bandwidth.read_GBps:.1f} GB/s measured in the same run; load average "
             f"{load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end. \"Matmuls alone\": the matrix "
             f"products of the same {n} decode steps and nothing else (bench.decode_matmuls), timed in the same "
             f"rounds: a ceiling for infergen whatever the Python around them.", "",
             "| weights | infergen tokens/s | llama.cpp tokens/s | llama.cpp / infergen | infergen, share of its "
             "roofline | llama.cpp, share of its roofline | first greedy tokens that agree "
             "| infergen's matmuls alone, tokens/s | llama.cpp / infergen's matmuls alone |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| infergen {r['infergen']} / {r['llama_cpp']} | {r['infergen_tokens_per_s']:.1f} "
                     f"| {r['llama_cpp_tokens_per_s']:.1f} | {r['llama_cpp_over_infergen']:.2f}x "
                     f"| {100 * r['infergen_roofline_fraction']:.0f}% | {100 * r['llama_cpp_roofline_fraction']:.0f}% "
                     f"| {r['same_greedy_prefix']} of {n} | {r['infergen_matmuls_tokens_per_s']:.1f} "
                     f"| {r['llama_cpp_over_infergen_matmuls']:.2f}x |")
    bench.write_report(args.out, result, "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
