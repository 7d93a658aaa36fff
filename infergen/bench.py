"""Benchmarks, side by side: infergen against transformers' ``generate``, and against the roofline.

``python -m infergen bench`` (or ``make bench``) loads the bundled SmolLM2-135M twice -- infergen's
native model and transformers' ``LlamaForCausalLM`` on the same weights -- and runs both on the same
prompts with the same settings, in one process, **alternating** (A, B, A, B, ...) after a warm-up, and
reports the **median** of each. Alternating matters on a shared machine: a background job that slows
the machine for a minute slows both contenders, so their *ratio* stays honest even when the absolute
numbers move. Results go to a table on stdout, ``bench-results/results.json`` and plots
(``bench-results/*.png``) that the optimization chapter uses.

The roofline: why decoding at batch 1 is slow
---------------------------------------------
Generating one token at batch 1 multiplies a single vector by every weight matrix of the model: each
weight is read from memory once and used for exactly one multiply-add. A CPU or GPU does far more
arithmetic per second than it can fetch bytes, so the step waits on memory, and

    tokens/s  <=  memory bandwidth / bytes read per token,
    bytes read per token = weight bytes + KV-cache bytes of the context.

SmolLM2-135M holds 135 M parameters, 540 MB in float32: at 20 GB/s that is at most ~37 tokens/s, no
matter how clever the Python is. :func:`memory_bandwidth` measures the bandwidth of *this* machine (a
large tensor sum: a pure streaming read) and :func:`roofline` turns it into the bound. The bound
explains the three big levers the benchmark measures:

* **fewer bytes per weight**: bfloat16 halves the bytes, int8 (``infergen.quant``) quarters them;
* **more tokens per byte**: a batch of 16 rows reads the weights once for 16 tokens, so throughput
  grows almost linearly with the batch until the arithmetic, not the memory, is the limit;
* **no wasted reads**: without a KV cache every step re-reads (and re-computes) the whole sequence,
  so a generation costs O(n^2) instead of O(n).

Prefill (the prompt, many tokens at once) is the opposite regime: every weight read serves the whole
prompt, so prefill is bound by arithmetic and runs at thousands of tokens/s where decode runs at tens.

What is measured (each section can be run alone with ``--sections``)
--------------------------------------------------------------------
``roofline``   bandwidth of the machine, bytes per token, the bound for float32/bfloat16/int8.
``greedy``     greedy batch 1 (128 new tokens), infergen vs transformers, + % of the roofline.
``sampling``   sampling (temperature 0.8, top-k 50, top-p 0.95) at batch 1 and batch 8.
``beam``       beam search, 4 beams (when ``infergen.decoding.beam`` is importable).
``search``     contrastive search and MCTS with their cache against their ``use_cache=False``
               reference versions (when importable and they take ``use_cache``).
``kv``         KV cache vs none, from 64 to 1024 new tokens (:func:`naive_greedy` is the reference).
``batch``      throughput against batch size (1 ... 32).
``prefill``    prefill vs decode time against the prompt length; KV-cache bytes; peak memory.
``dtype``      bfloat16 and int8 weights against float32, with the quality cost (log-likelihood).
``serving``    continuous vs static batching on a mixed-length workload (``infergen.serving``).

Pitfalls a fair benchmark avoids: timing the first call (lazy initialisation, allocator warm-up), a
different number of generated tokens per contender (we switch EOS off so both run exactly ``n``
steps), timing a GPU without synchronising, and comparing numbers taken minutes apart on a busy
machine (hence alternation, medians, and the load average in the results).
"""
from __future__ import annotations

import argparse
import copy
import importlib
import inspect
import json
import os
import platform
import statistics
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

SECTIONS = ("roofline", "greedy", "sampling", "beam", "search", "kv", "batch", "prefill", "dtype", "serving")

# Sizes of the full run and of ``--quick`` (tests/CI: seconds, not minutes).
FULL = dict(repeats=5, greedy_tokens=128, sample_tokens=64, sample_batch=8, beam_tokens=32, beams=4,
            search_tokens=16, contrastive_k=4, mcts_tokens=4, mcts_simulations=16,
            kv_lengths=(64, 128, 256, 512, 1024), kv_measured_upto=256, batch_sizes=(1, 2, 4, 8, 16, 32),
            batch_tokens=32, prefill_lengths=(16, 64, 256, 512), dtype_tokens=64, bandwidth_mb=512,
            serving_requests=16, serving_batch=8, serving_tokens=(8, 128))
QUICK = dict(repeats=2, greedy_tokens=8, sample_tokens=8, sample_batch=4, beam_tokens=4, beams=4,
             search_tokens=3, contrastive_k=3, mcts_tokens=2, mcts_simulations=4,
             kv_lengths=(8, 16, 32), kv_measured_upto=16, batch_sizes=(1, 4), batch_tokens=4,
             prefill_lengths=(8, 32), dtype_tokens=8, bandwidth_mb=256,
             serving_requests=4, serving_batch=2, serving_tokens=(2, 8))

# The targets: (result key, minimum ratio, what the ratio compares).
TARGETS = {
    "greedy_b1": (1.25, "infergen / transformers tokens/s, greedy batch 1"),
    "greedy_b1_roofline": (0.80, "fraction of the fp32 memory roofline, greedy batch 1"),
    "beam4": (1.5, "infergen / transformers, beam search 4 beams"),
    "sample_b8": (1.25, "infergen / transformers tokens/s, sampling batch 8"),
    "bf16_vs_fp32": (1.6, "infergen bfloat16 / float32 tokens/s"),
    "int8_vs_fp32": (2.0, "infergen int8 / float32 tokens/s"),
    "kv_vs_none_512": (10.0, "with / without KV cache, 512 new tokens"),
    "batch16_vs_b1": (8.0, "tokens/s at batch 16 / batch 1"),
}

TEXT = ("The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
        "combined movable metal type, oil-based ink and a wooden press adapted from those used to make "
        "wine. Books, which had been copied by hand, became cheaper and more common, and ideas spread "
        "faster across Europe than ever before.")
"""The fixed text on which the quality cost of bfloat16/int8 weights is measured."""

PROMPTS = ["The future of AI is", "Once upon a time, in a small village by the sea,", "def fibonacci(n):",
           "The capital of France is", "Here is a recipe for pancakes:", "In 1969, the first humans",
           "The three laws of thermodynamics are", "My favourite book is"]


# ------------------------------------------------------------------------------------------------
# Timing machinery
# ------------------------------------------------------------------------------------------------
def synchronize(device) -> None:
    """Wait for queued GPU work: without it a GPU timer measures the launch, not the work."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_call(fn, device="cpu") -> float:
    """Seconds one call of ``fn()`` takes (synchronised before and after)."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def alternate(contenders: dict, repeats: int = 5, warmup: int = 1, device="cpu", progress=None) -> dict:
    """Time each of ``contenders`` (name -> zero-argument callable) ``repeats`` times, interleaved.

    Every contender first runs ``warmup`` untimed calls. Then round ``r`` times each contender once,
    in turn, so slow phases of a shared machine hit all of them alike. Returns ``name -> list of
    seconds`` (use :func:`median`). ``progress`` (a tqdm bar) advances once per timed call.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            times[name].append(time_call(fn, device))
            if progress is not None:
                progress.update(1)
    return times


def median(values) -> float:
    return float(statistics.median(values))


def _heap_in_use():
    """A function returning the bytes the C heap has handed out (glibc's ``mallinfo2``), or None.

    Resident memory (RSS) is a poor gauge of a peak: memory freed earlier is reused without the RSS
    moving. The allocator's own count of bytes in use moves with every tensor allocated or freed.
    """
    import ctypes
    import ctypes.util

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                     "fordblks", "keepcost")]

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError, TypeError):
        return None
    fn.restype = MallInfo2

    def in_use():
        info = fn()
        return info.uordblks + info.hblkhd  # heap chunks in use + memory-mapped chunks
    return in_use


@contextmanager
def peak_memory(device="cpu", interval: float = 0.002):
    """Peak memory *added* while the block runs, in bytes: ``with peak_memory() as peak: ...; peak[0]``.

    On CUDA it is the allocator's exact peak. On the CPU a background thread samples the bytes the C
    heap has in use (glibc), else the resident set size, every ``interval`` seconds, so a spike
    shorter than that may be missed.
    """
    device = torch.device(device)
    result = [0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        torch.cuda.synchronize(device)
        result[0] = torch.cuda.max_memory_allocated(device) - base
        return
    measure = _heap_in_use()
    if measure is None:
        import psutil

        proc = psutil.Process()
        measure = lambda: proc.memory_info().rss  # noqa: E731
    base = measure()
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], measure())
            stop.wait(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        peak[0] = max(peak[0], measure())
        result[0] = peak[0] - base


# ------------------------------------------------------------------------------------------------
# The roofline
# ------------------------------------------------------------------------------------------------
def memory_bandwidth(megabytes: int = 512, repeats: int = 5, buffers: int = 3, device="cpu") -> dict:
    """Measure the machine's memory bandwidth in GB/s (1 GB = 1e9 bytes).

    ``read``: ``x.sum()`` over a ``megabytes`` float32 tensor (far larger than the caches) streams
    every byte once and does one add per 4 bytes -- nothing but reading. ``copy``: ``y.copy_(x)``
    reads and writes each byte (counted twice). The best of ``repeats`` runs is kept: the bound is
    what the hardware *can* do. Decoding reads weights, so the roofline uses ``read``.

    The measurement is repeated on ``buffers`` separately allocated tensors, and ``read_GBps`` is the
    best of them (``read_samples`` lists each): on virtual machines with tiered or remote memory,
    where a buffer lands changes its bandwidth (we have seen 45 vs 80 GB/s for two buffers of one
    process), and the roofline must be the *highest* bandwidth the machine showed, never a low draw.
    """
    n = megabytes * 1024 * 1024 // 4
    reads, copies = [], []
    for _ in range(buffers):
        x = torch.ones(n, device=device)
        y = torch.empty_like(x)
        reads.append(4 * n / min(time_call(lambda: x.sum(), device) for _ in range(repeats + 1)) / 1e9)
        copies.append(2 * 4 * n / min(time_call(lambda: y.copy_(x), device) for _ in range(repeats + 1)) / 1e9)
        del x, y
    return {"read_GBps": max(reads), "copy_GBps": max(copies), "read_samples": reads, "bytes": 4 * n}


def decode_matmuls(model, steps: int = 1):
    """A zero-argument function that runs the matrix products of ``steps`` batch-1 decode steps *alone*.

    Each step runs every linear layer of ``model`` once, in order, on one input row -- the same
    kernels and weights a decode step uses, without the ~300 other small operations and their Python
    dispatch. Timed side by side with real decoding (:func:`alternate`), it splits a step into the
    matrix products and everything else; ``weight bytes / its time per step`` is the bandwidth the
    kernels reach: the ceiling for a decode step whatever the Python around it does.
    """
    from torch import nn

    from .models import llama

    layers = [m for m in model.modules() if not isinstance(m, nn.Embedding)
              and isinstance(getattr(m, "in_features", None), int) and isinstance(getattr(m, "out_features", None), int)]
    if not layers:
        raise ValueError("model has no linear layers")
    device, dtype = model.device, model.dtype
    inputs = {n: torch.randn(1, n, device=device, dtype=dtype) for n in {m.in_features for m in layers}}

    # the native model's layers take the decode-step hint (packed weights on the CPU); others do not
    hint = (model.prepack,) if isinstance(model, llama.LlamaModel) else ()

    def run():
        with torch.inference_mode():
            for _ in range(steps):
                for m in layers:
                    m(inputs[m.in_features], *hint)

    return run


def decode_matmul_time(model, repeats: int = 5) -> float:
    """Seconds the matrix products of one batch-1 decode step take alone (median of ``repeats``,
    after one untimed run); see :func:`decode_matmuls`."""
    run = decode_matmuls(model)
    run()
    return median([time_call(run, model.device) for _ in range(repeats)])


def weight_bytes(model) -> int:
    """Bytes of weights one decode step reads: every parameter and buffer, shared ones counted once,
    except embedding tables that are only looked up.

    A lookup reads one row of the embedding per token, not the table. With *tied* embeddings the
    output head is the same matrix and multiplies it in full every step, so a tied table counts.
    Quantized weights (``infergen.quant``) are buffers, hence buffers count too.
    """
    from torch import nn

    lookups = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    used = {}
    for m in model.modules():
        for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)):
            if t is None or (isinstance(m, nn.Embedding) and id(t) in lookups):
                continue
            used[t.data_ptr()] = t.numel() * t.element_size()
    return sum(used.values())


def kv_bytes_per_token(model, dtype=None) -> int:
    """KV-cache bytes one token occupies: ``2 (K and V) * layers * kv_heads * head_dim * bytes``."""
    c = model.config
    heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    dtype = dtype or model.dtype
    return 2 * c.num_hidden_layers * heads * head_dim * torch.empty(0, dtype=dtype).element_size()


def roofline(bandwidth_GBps: float, weights: int, kv_per_token: int, context: float) -> dict:
    """The batch-1 decode bound: ``bandwidth / (weights + kv_per_token * context)`` tokens/s."""
    per_token = weights + kv_per_token * context
    return {"bytes_per_token": per_token, "tokens_per_s": bandwidth_GBps * 1e9 / per_token}


# ------------------------------------------------------------------------------------------------
# Reference loops
# ------------------------------------------------------------------------------------------------
def naive_greedy(model, input_ids, max_new_tokens, attention_mask=None):
    """Greedy decoding **without a KV cache**: every step re-runs the whole sequence (the document's loop).

    Step ``i`` runs a forward pass over ``T + i`` tokens to obtain one new token, so ``n`` new tokens
    cost ``sum_i (T + i) = O(n^2)`` token-passes instead of ``T + n`` with a cache. No EOS handling:
    it is the benchmark's reference and runs exactly ``max_new_tokens`` steps. Returns [B, T + n].
    """
    from .models.hf import as_model

    model = as_model(model)
    ids = input_ids.to(model.device)
    mask = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.to(ids.device).bool()
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            cache = model.new_cache(ids.shape[0], ids.shape[1])  # a fresh, throw-away cache each step
            logits = model(ids, cache, attention_mask=mask).logits[:, -1]
            nxt = logits.argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
            mask = torch.cat([mask, torch.ones_like(nxt, dtype=torch.bool)], 1)
    return ids


def naive_contrastive(model, input_ids, max_new_tokens, top_k=5, alpha=0.6):
    """Contrastive search **without cache reuse**, one prompt ([1, T]): the reference for its speed.

    Each step re-runs the whole sequence for the context's hidden states and next-token distribution,
    then re-runs ``sequence + v`` for each of the ``top_k`` candidates ``v`` to get ``h_v``:
    ``top_k + 1`` full forward passes per token, against one ``top_k``-row single-token pass with the
    cache (``infergen.decoding.contrastive``). Same scoring: ``(1 - alpha) p(v) - alpha max_j cos(h_v, h_j)``,
    ties to the more probable candidate. No EOS handling (runs ``max_new_tokens`` steps).
    """
    import torch.nn.functional as F

    from .models.hf import as_model

    model = as_model(model)
    ids = input_ids.to(model.device)
    if ids.shape[0] != 1:
        raise ValueError(f"naive_contrastive takes one prompt ([1, T]), got batch {ids.shape[0]}")

    def run(seq):
        out = model(seq, model.new_cache(1, seq.shape[1]), hidden=True)
        return out.logits[0, -1].float(), F.normalize(out.hidden[0].float(), dim=-1)

    with torch.inference_mode():
        for _ in range(max_new_tokens):
            logits, context = run(ids)
            probs, cands = logits.softmax(-1).topk(top_k)
            h = torch.stack([run(torch.cat([ids, c.view(1, 1)], 1))[1][-1] for c in cands])  # [k, D]
            penalty = (h @ context.T).amax(-1)
            choice = ((1 - alpha) * probs - alpha * penalty).argmax()
            ids = torch.cat([ids, cands[choice].view(1, 1)], 1)
    return ids


def prefill_decode_times(model, input_ids, new_tokens: int, attention_mask=None) -> dict:
    """Time the two phases of generation separately: the prefill, and ``new_tokens`` decode steps.

    Uses the model protocol directly (greedy argmax, no processors) so the numbers are the model's.
    """
    from .models.hf import as_model

    model = as_model(model)
    device = model.device
    ids = input_ids.to(device)
    B, T = ids.shape
    cache = model.new_cache(B, T + new_tokens + 1)
    with torch.inference_mode():
        synchronize(device)
        t0 = time.perf_counter()
        logits = model(ids, cache, attention_mask=attention_mask).logits[:, -1]
        tok = logits.argmax(-1, keepdim=True)
        synchronize(device)
        t1 = time.perf_counter()
        for _ in range(new_tokens):
            tok = model(tok, cache).logits[:, -1].argmax(-1, keepdim=True)
        synchronize(device)
        t2 = time.perf_counter()
    return {"prefill_s": t1 - t0, "decode_s": t2 - t1, "batch": B, "prompt": T, "new_tokens": new_tokens}


# ------------------------------------------------------------------------------------------------
# The runner
# ------------------------------------------------------------------------------------------------
def load_reference(name_or_path: str = "smollm2-135m", device="cpu", dtype=torch.float32):
    """transformers' own model on the same weights as ``infergen.load_model(name_or_path)``."""
    from transformers import AutoModelForCausalLM

    from .models.loading import _locate

    hf = AutoModelForCausalLM.from_pretrained(_locate(name_or_path), dtype=dtype).to(device).eval()
    return hf


class Bench:
    """Runs the sections on one (infergen model, tokenizer, transformers model) triple.

    ``model`` and ``hf`` must hold the same weights; ``tokenizer`` pads on the left. The results
    accumulate in ``self.results`` (a JSON-ready dict).
    """

    def __init__(self, model, tokenizer, hf, quick: bool = False, repeats: int | None = None,
                 progress: bool = True, model_name: str = "smollm2-135m"):
        self.model, self.tok, self.hf = model, tokenizer, hf
        self.size = dict(QUICK if quick else FULL)
        if repeats is not None:
            if repeats < 1:
                raise ValueError(f"repeats must be >= 1, got {repeats}")
            self.size["repeats"] = repeats
        self.quick = quick
        self.device = model.device
        self.model_name = model_name
        self.progress = progress
        self.vocab_hi = min(1000, model.config.vocab_size)  # random test sequences use ids in [3, vocab_hi)
        # EOS off on both sides so every contender runs exactly n steps.
        self.hf.generation_config.eos_token_id = None
        self.hf.generation_config.pad_token_id = tokenizer.pad_token_id
        self.results = {"machine": machine_info(), "quick": quick, "sizes": self.size, "sections": {},
                        "targets": {}}

    # -- helpers -----------------------------------------------------------------------------------
    def batch(self, n: int):
        """``n`` prompts (the fixed set, cycled), left-padded: ``(input_ids, attention_mask)``."""
        texts = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
        enc = self.tok(texts, return_tensors="pt", padding=True)
        return enc.input_ids.to(self.device), enc.attention_mask.to(self.device)

    def _bar(self, total: int, desc: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, disable=not self.progress, leave=False)

    def compare(self, key: str, contenders: dict, tokens: int, desc: str, repeats=None) -> dict:
        """Alternate the contenders; store medians, tokens/s and the ratio first / second."""
        repeats = repeats or self.size["repeats"]
        with self._bar(repeats * len(contenders), desc) as bar:
            times = alternate(contenders, repeats=repeats, device=self.device, progress=bar)
        entry = {"new_tokens": tokens, "times_s": times}
        for name, ts in times.items():
            entry[name] = {"median_s": median(ts), "tokens_per_s": tokens / median(ts)}
        names = list(contenders)
        if len(names) >= 2:
            entry["ratio"] = median(times[names[1]]) / median(times[names[0]])
        return entry

    def target(self, key: str, value: float | None, note: str = ""):
        low, what = TARGETS[key]
        self.results["targets"][key] = {"value": value, "target": low, "what": what,
                                        "met": None if value is None else bool(value >= low), "note": note}

    # -- sections ----------------------------------------------------------------------------------
    def roofline(self):
        bw = memory_bandwidth(self.size["bandwidth_mb"], device=self.device)
        w = weight_bytes(self.model)
        kv = kv_bytes_per_token(self.model)
        ctx = 8 + self.size["greedy_tokens"] / 2  # the mean context of the greedy benchmark
        bound = roofline(bw["read_GBps"], w, kv, ctx)
        kernels = decode_matmul_time(self.model, self.size["repeats"])
        self.results["sections"]["roofline"] = {
            "bandwidth": bw, "weight_bytes": w, "kv_bytes_per_token": kv, "mean_context": ctx,
            "fp32_bound_tokens_per_s": bound["tokens_per_s"], "bytes_per_token": bound["bytes_per_token"],
            "params": sum(p.numel() for p in {id(p): p for p in self.model.parameters()}.values()),
            "matmul_s": kernels,  # one step's matrix products alone (see decode_matmuls)
        }

    def greedy(self):
        from .decoding.sampling import greedy_search

        n = self.size["greedy_tokens"]
        ids, mask = self.batch(1)
        out = {}
        entry = self.compare("greedy_b1", {
            "infergen": lambda: out.__setitem__("ig", greedy_search(self.model, ids, n, eos_token_id=[])),
            "transformers": lambda: out.__setitem__("hf", self.hf.generate(
                ids, attention_mask=mask, max_new_tokens=n, do_sample=False)),
            "matmuls only": decode_matmuls(self.model, n),  # infergen's matrix products alone, side by side
        }, n, "greedy b1")
        matmul_s = entry["matmuls only"]["median_s"] / n
        entry["matmul_s_per_token"] = matmul_s
        entry["matmul_share_of_step"] = matmul_s / (entry["infergen"]["median_s"] / n)
        entry["same_tokens"] = bool(torch.equal(out["ig"].cpu(), out["hf"].cpu()))
        self.results["sections"]["greedy_b1"] = entry
        self.target("greedy_b1", entry["ratio"])
        roof = self.results["sections"].get("roofline")
        if roof:
            frac = entry["infergen"]["tokens_per_s"] / roof["fp32_bound_tokens_per_s"]
            entry["roofline_fraction"] = frac
            entry["achieved_GBps"] = entry["infergen"]["tokens_per_s"] * roof["bytes_per_token"] / 1e9
            entry["matmul_roofline_fraction"] = 1 / matmul_s / roof["fp32_bound_tokens_per_s"]
            self.target("greedy_b1_roofline", frac,
                        f"bound {roof['fp32_bound_tokens_per_s']:.1f} tok/s at "
                        f"{roof['bandwidth']['read_GBps']:.1f} GB/s; the matmuls alone, timed side by side, "
                        f"would reach {100 * entry['matmul_roofline_fraction']:.0f}% of it")

    def sampling(self):
        from .decoding.sampling import generate_autoregressive

        n = self.size["sample_tokens"]
        settings = dict(temperature=0.8, top_k=50, top_p=0.95)
        for B in (1, self.size["sample_batch"]):
            ids, mask = self.batch(B)

            def hf_run():
                torch.manual_seed(0)
                self.hf.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=True, **settings)

            key = f"sample_b{B}"
            entry = self.compare(key, {
                "infergen": lambda: generate_autoregressive(self.model, ids, n, attention_mask=mask,
                                                            eos_token_id=[], seed=0, **settings),
                "transformers": hf_run,
            }, n * B, f"sampling b{B}")
            entry["settings"] = settings
            entry["batch"] = B
            self.results["sections"][key] = entry
        big = self.results["sections"].get("sample_b8")
        if big is not None:
            self.target("sample_b8", big["ratio"])

    def beam(self):
        try:
            from .decoding.beam import beam_search
        except ImportError as err:
            self.results["sections"]["beam4"] = {"skipped": f"infergen.decoding.beam not importable: {err}"}
            return
        n, k = self.size["beam_tokens"], self.size["beams"]
        ids, mask = self.batch(1)
        out = {}
        entry = self.compare("beam4", {
            "infergen": lambda: out.__setitem__("ig", beam_search(self.model, ids, n, num_beams=k,
                                                                  eos_token_id=[])),
            "transformers": lambda: out.__setitem__("hf", self.hf.generate(
                ids, attention_mask=mask, max_new_tokens=n, num_beams=k, do_sample=False,
                early_stopping=False, length_penalty=1.0)),
        }, n, "beam 4")
        entry["same_tokens"] = bool(torch.equal(out["ig"].cpu(), out["hf"].cpu()))
        entry["num_beams"] = k
        self.results["sections"]["beam4"] = entry
        self.target("beam4", entry["ratio"])

    def search(self):
        """Cached contrastive search / MCTS against their own ``use_cache=False`` reference versions."""
        ids, _ = self.batch(1)
        plans = [("contrastive", "infergen.decoding.contrastive", "contrastive_search",
                  dict(top_k=self.size["contrastive_k"], alpha=0.6), self.size["search_tokens"]),
                 ("mcts", "infergen.decoding.mcts", "mcts_decode",
                  dict(num_simulations=self.size["mcts_simulations"], seed=0), self.size["mcts_tokens"])]
        for key, module, fn_name, params, n in plans:
            try:
                fn = getattr(importlib.import_module(module), fn_name)
            except (ImportError, AttributeError) as err:
                self.results["sections"][key] = {"skipped": f"{module}.{fn_name} not importable: {err}"}
                continue
            if "use_cache" in inspect.signature(fn).parameters:
                reference, ref_name = (lambda: fn(self.model, ids, n, eos_token_id=[], use_cache=False, **params),
                                       "reference (use_cache=False)")
            elif key == "contrastive":  # no switch in the decoder: the plain loop written here
                reference, ref_name = (lambda: naive_contrastive(self.model, ids, n, **params),
                                       "reference (naive_contrastive)")
            else:
                self.results["sections"][key] = {"skipped": f"{fn_name} has no use_cache=False reference"}
                continue
            out = {}
            entry = self.compare(key, {
                "cached": lambda: out.__setitem__("c", fn(self.model, ids, n, eos_token_id=[], **params)),
                ref_name: lambda: out.__setitem__("r", reference()),
            }, n, key, repeats=max(1, self.size["repeats"] // 2))
            entry["same_tokens"] = bool(torch.equal(out["c"].cpu(), out["r"].cpu()))
            entry["params"] = params
            self.results["sections"][key] = entry

    def kv(self):
        """KV cache vs none. Per-step cost at each context length, plus whole generations.

        A whole no-cache generation of ``n`` tokens takes minutes for large ``n`` (it is quadratic), so
        whole generations are *measured* up to ``kv_measured_upto`` new tokens; beyond, the total is the
        sum of the measured per-step costs (interpolated between the measured lengths), and the JSON
        says which is which. The measured points validate the sum (``estimate_error``).
        """
        from .decoding.sampling import greedy_search

        ids, _ = self.batch(1)
        T = ids.shape[1]
        lengths = list(self.size["kv_lengths"])
        reps = self.size["repeats"]
        step = {"context": lengths, "cached_s": [], "naive_s": []}
        with self._bar(len(lengths) * reps * 2, "kv per step") as bar:
            for L in lengths:
                seq = torch.randint(3, self.vocab_hi, (1, L), device=self.device,
                                    generator=torch.Generator(device=self.device).manual_seed(L))
                cache = self.model.new_cache(1, L + reps + 2)
                with torch.inference_mode():
                    self.model(seq[:, :-1], cache)
                    last = seq[:, -1:]

                    def cached():
                        self.model(last, cache)
                        cache.crop(L - 1)  # the same context length every time

                    def naive():
                        self.model(seq, self.model.new_cache(1, L))

                    times = alternate({"cached": cached, "naive": naive}, repeats=reps, device=self.device,
                                      progress=bar)
                step["cached_s"].append(median(times["cached"]))
                step["naive_s"].append(median(times["naive"]))

        def per_step(kind, L):
            import numpy as np
            return float(np.interp(L, lengths, step[kind]))

        total = {"new_tokens": [], "cached_s": [], "naive_s": [], "naive_measured": [], "estimate_error": {}}
        measured = [n for n in lengths if n <= self.size["kv_measured_upto"]]
        with self._bar(len(measured), "kv whole runs") as bar:
            for n in lengths:
                est_cached = sum(per_step("cached_s", T + i) for i in range(n))
                est_naive = sum(per_step("naive_s", T + i + 1) for i in range(n))
                if n in measured:
                    c = time_call(lambda: greedy_search(self.model, ids, n, eos_token_id=[]), self.device)
                    r = time_call(lambda: naive_greedy(self.model, ids, n), self.device)
                    total["estimate_error"][n] = {"cached": est_cached / c - 1, "naive": est_naive / r - 1}
                    bar.update(1)
                else:
                    c, r = est_cached, est_naive
                total["new_tokens"].append(n)
                total["cached_s"].append(c)
                total["naive_s"].append(r)
                total["naive_measured"].append(n in measured)
        # The target is at 512 new tokens; the quick run reports its largest length instead.
        ratios = {n: r / c for n, c, r in zip(total["new_tokens"], total["cached_s"], total["naive_s"])}
        self.results["sections"]["kv_cache"] = {"per_step": step, "total": total, "ratio": ratios}
        key = 512 if 512 in ratios else max(ratios)
        self.target("kv_vs_none_512", ratios[key], f"at {key} new tokens"
                    + ("" if total["naive_measured"][total["new_tokens"].index(key)] else
                       " (no-cache total summed from measured per-step times)"))

    def batch_sizes(self):
        n = self.size["batch_tokens"]
        rows = []
        with self._bar(len(self.size["batch_sizes"]) * self.size["repeats"], "batch sizes") as bar:
            for B in self.size["batch_sizes"]:
                ids, mask = self.batch(B)
                prefill_decode_times(self.model, ids, 2, attention_mask=mask)  # warm-up
                runs = []
                for _ in range(self.size["repeats"]):
                    runs.append(prefill_decode_times(self.model, ids, n, attention_mask=mask))
                    bar.update(1)
                decode = median([r["decode_s"] for r in runs])
                prefill = median([r["prefill_s"] for r in runs])
                rows.append({"batch": B, "decode_s": decode, "prefill_s": prefill,
                             "decode_tokens_per_s": B * n / decode,
                             "total_tokens_per_s": B * n / (decode + prefill)})
        self.results["sections"]["batch"] = {"new_tokens": n, "rows": rows}
        by = {r["batch"]: r["decode_tokens_per_s"] for r in rows}
        if 1 in by:
            top = 16 if 16 in by else max(by)
            self.target("batch16_vs_b1", by[top] / by[1], f"batch {top}")

    def prefill(self):
        rows = []
        gen = torch.Generator(device=self.device).manual_seed(0)
        with self._bar(len(self.size["prefill_lengths"]) * self.size["repeats"], "prefill/decode") as bar:
            for T in self.size["prefill_lengths"]:
                ids = torch.randint(3, self.vocab_hi, (1, T), device=self.device, generator=gen)
                prefill_decode_times(self.model, ids, 1)
                runs = []
                for _ in range(self.size["repeats"]):
                    runs.append(prefill_decode_times(self.model, ids, 8))
                    bar.update(1)
                p = median([r["prefill_s"] for r in runs])
                d = median([r["decode_s"] for r in runs]) / 8
                rows.append({"prompt": T, "prefill_s": p, "prefill_tokens_per_s": T / p, "decode_step_s": d,
                             "decode_tokens_per_s": 1 / d})
        kv = kv_bytes_per_token(self.model)
        ids, mask = self.batch(self.size["sample_batch"])
        from .decoding.sampling import greedy_search

        n = self.size["sample_tokens"]
        with peak_memory(self.device) as ig_peak:
            greedy_search(self.model, ids, n, attention_mask=mask, eos_token_id=[])
        with peak_memory(self.device) as hf_peak:
            self.hf.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False)
        B, T = ids.shape
        self.results["sections"]["prefill"] = {
            "rows": rows,
            "kv_bytes_per_token": kv,
            "kv_bytes": {L: kv * L for L in (128, 512, 2048, self.model.max_context)},
            "peak_memory": {"batch": B, "new_tokens": n, "infergen_bytes": ig_peak[0],
                            "transformers_bytes": hf_peak[0],
                            "infergen_cache_bytes": self.model.new_cache(B, T + n).nbytes
                            if hasattr(self.model.new_cache(1, 1), "nbytes") else None,
                            "weight_bytes": weight_bytes(self.model)},
        }

    def dtype(self):
        """bfloat16 and int8 weights against float32: speed (alternating) and quality on :data:`TEXT`."""
        from .decoding.sampling import greedy_search

        n = self.size["dtype_tokens"]
        ids, _ = self.batch(1)
        models = {"float32": self.model, "bfloat16": copy.deepcopy(self.model).to(torch.bfloat16)}
        notes = {}
        try:
            from .quant import quantize_int8

            models["int8"] = quantize_int8(copy.deepcopy(models["bfloat16"]))
            notes["int8"] = "int8 weights, bfloat16 activations"
        except (ImportError, RuntimeError, NotImplementedError) as err:
            notes["int8"] = f"skipped: {err}"
        contenders = {}
        for name, m in models.items():
            contenders[name] = lambda m=m: greedy_search(m, ids, n, eos_token_id=[])
            contenders[name + " matmuls"] = decode_matmuls(m, n)  # its matrix products alone, side by side
        entry = self.compare("dtype", contenders, n, "dtypes")
        entry.pop("ratio", None)
        matmuls = {name: entry.pop(name + " matmuls")["median_s"] / n for name in models}
        entry["matmul_times_s"] = {name: entry["times_s"].pop(name + " matmuls") for name in models}
        text_ids = self.tok(TEXT, return_tensors="pt").input_ids.to(self.device)
        from .quant import compare_quality

        bw = self.results["sections"].get("roofline", {}).get("bandwidth", {}).get("read_GBps")
        for name, m in models.items():
            q = compare_quality(self.model, m, text_ids)
            e = entry[name]
            e["weight_bytes"] = weight_bytes(m)
            e["mean_logprob"] = q["candidate"]["mean_logprob"]
            e["perplexity"] = q["candidate"]["perplexity"]
            e["delta_mean_logprob"] = q["delta_mean_logprob"]
            e["kl_vs_fp32"] = q["kl"]
            e["top1_agreement_vs_fp32"] = q["top1_agreement"]
            e["speedup_vs_fp32"] = entry["float32"]["median_s"] / e["median_s"]
            e["matmul_s"] = matmuls[name]
            e["matmul_speedup_vs_fp32"] = entry["float32"]["matmul_s"] / e["matmul_s"]  # zero-overhead ratio
            e["overhead_s_per_token"] = e["median_s"] / n - e["matmul_s"]
            if bw:
                bound = roofline(bw, weight_bytes(m), kv_bytes_per_token(m), 8 + n / 2)["tokens_per_s"]
                e["roofline_tokens_per_s"] = bound
                e["roofline_fraction"] = e["tokens_per_s"] / bound
        entry["notes"] = notes
        entry["text_tokens"] = int(text_ids.shape[1])
        self.results["sections"]["dtype"] = entry

        def kernels(name):
            # The ratio of the matrix products alone is the ratio with zero overhead; the same amount of
            # other work added to both sides can only pull it towards 1.
            e = entry[name]
            return (f"matmuls alone {e['matmul_speedup_vs_fp32']:.2f}x = the ratio with zero overhead; other work "
                    f"{1e3 * e['overhead_s_per_token']:.1f} vs {1e3 * entry['float32']['overhead_s_per_token']:.1f}"
                    f" ms/token in float32")

        if "bfloat16" in models:
            self.target("bf16_vs_fp32", entry["bfloat16"]["speedup_vs_fp32"], kernels("bfloat16"))
        if "int8" in models:
            self.target("int8_vs_fp32", entry["int8"]["speedup_vs_fp32"],
                        f"perplexity {entry['int8']['perplexity']:.3f} vs {entry['float32']['perplexity']:.3f}; "
                        + kernels("int8"))

    def serving(self):
        """Continuous vs static batching: the same mixed-length requests, the same batch size, greedy."""
        from .serving import compare_batching, mixed_workload

        reqs = mixed_workload(self.size["serving_requests"], new_tokens=self.size["serving_tokens"],
                              vocab=self.vocab_hi)
        with self._bar(1, "serving") as bar:
            res = compare_batching(self.model, reqs, batch_size=self.size["serving_batch"])
            bar.update(1)
        res["max_new_tokens"] = [r.max_new_tokens for r in reqs]
        self.results["sections"]["serving"] = res

    def run(self, sections=SECTIONS) -> dict:
        methods = {"roofline": self.roofline, "greedy": self.greedy, "sampling": self.sampling,
                   "beam": self.beam, "search": self.search, "kv": self.kv, "batch": self.batch_sizes,
                   "prefill": self.prefill, "dtype": self.dtype, "serving": self.serving}
        for s in sections:
            if s not in methods:
                raise ValueError(f"unknown section {s!r}; choose from {', '.join(SECTIONS)}")
        start = time.perf_counter()
        from tqdm.auto import tqdm

        for s in tqdm(list(sections), desc="bench", disable=not self.progress):
            methods[s]()
        self.results["machine"]["load_average_end"] = _loadavg()
        self.results["seconds"] = time.perf_counter() - start
        return self.results


def _loadavg():
    try:
        return list(os.getloadavg())
    except (OSError, AttributeError):  # pragma: no cover  (Windows)
        return None


def machine_info() -> dict:
    """What the numbers depend on: CPU/GPU, threads, versions, and how busy the machine was."""
    import transformers

    info = {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "processor": _cpu_name(),
            "load_average_start": _loadavg()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ------------------------------------------------------------------------------------------------
# Reporting
# ------------------------------------------------------------------------------------------------
def format_table(results: dict) -> str:
    """A plain-text report: one line per comparison, then the targets."""
    lines = []
    s = results["sections"]
    m = results["machine"]
    lines.append(f"machine: {m['processor']}, {m['threads']} threads, torch {m['torch']}, "
                 f"transformers {m['transformers']}, load {m.get('load_average_start')}")
    if "roofline" in s:
        r = s["roofline"]
        samples = ", ".join(f"{x:.0f}" for x in r["bandwidth"].get("read_samples", []))
        lines.append(f"roofline: read bandwidth {r['bandwidth']['read_GBps']:.1f} GB/s (buffers: {samples}; "
                     f"copy {r['bandwidth']['copy_GBps']:.1f}), weights {r['weight_bytes'] / 1e6:.0f} MB, "
                     f"KV {r['kv_bytes_per_token'] / 1e3:.1f} kB/token -> fp32 bound "
                     f"{r['fp32_bound_tokens_per_s']:.1f} tokens/s at batch 1")
        matmul_GBps = r["weight_bytes"] / r["matmul_s"] / 1e9
        lines.append(f"          decode matmuls alone: {1e3 * r['matmul_s']:.1f} ms = {matmul_GBps:.1f} GB/s "
                     f"({100 * matmul_GBps / r['bandwidth']['read_GBps']:.0f}% of the bandwidth) -> "
                     f"{1 / r['matmul_s']:.1f} tokens/s with zero overhead")
    lines.append("")
    lines.append(f"{'benchmark':<34}{'contender A':>22}{'contender B':>26}{'A/B speed':>11}")
    for key, e in s.items():
        if "skipped" in e:
            lines.append(f"{key:<34}skipped: {e['skipped']}")
            continue
        if "times_s" not in e or key == "dtype":
            continue
        a, b = list(e["times_s"])[:2]
        lines.append(f"{key:<34}{a[:11]:>11} {e[a]['tokens_per_s']:>8.1f} t/s"
                     f"{b[:13]:>14} {e[b]['tokens_per_s']:>8.1f} t/s{e[b]['median_s'] / e[a]['median_s']:>10.2f}x")
    if "dtype" in s:
        e = s["dtype"]
        for name in e["times_s"]:
            lines.append(f"{'dtype ' + name:<34}{e[name]['tokens_per_s']:>11.1f} t/s  x{e[name]['speedup_vs_fp32']:.2f}"
                         f" vs fp32, {e[name]['weight_bytes'] / 1e6:.0f} MB, perplexity {e[name]['perplexity']:.3f}"
                         + (f", {100 * e[name]['roofline_fraction']:.0f}% of its roofline"
                            if "roofline_fraction" in e[name] else "")
                         + (f", matmuls {1e3 * e[name]['matmul_s']:.1f} ms/token" if "matmul_s" in e[name] else ""))
    if "kv_cache" in s:
        t = s["kv_cache"]["total"]
        for n, c, r, meas in zip(t["new_tokens"], t["cached_s"], t["naive_s"], t["naive_measured"]):
            lines.append(f"{'kv cache vs none, ' + str(n) + ' tokens':<34}{c:>10.2f} s{'':>4}"
                         f"{r:>13.2f} s{'' if meas else '*':<13}{r / c:>8.1f}x")
        lines.append("  (* no-cache total summed from measured per-step costs)")
    if "batch" in s:
        for row in s["batch"]["rows"]:
            lines.append(f"{'decode throughput, batch ' + str(row['batch']):<34}{row['decode_tokens_per_s']:>11.1f} t/s")
    if "prefill" in s:
        for row in s["prefill"]["rows"]:
            lines.append(f"{'prefill ' + str(row['prompt']) + ' tokens':<34}{row['prefill_tokens_per_s']:>11.1f} t/s"
                         f"   decode at that context {row['decode_tokens_per_s']:.1f} t/s")
        pm = s["prefill"]["peak_memory"]
        lines.append(f"peak memory added (batch {pm['batch']}, {pm['new_tokens']} tokens): infergen "
                     f"{pm['infergen_bytes'] / 1e6:.1f} MB, transformers {pm['transformers_bytes'] / 1e6:.1f} MB; "
                     f"KV cache {s['prefill']['kv_bytes_per_token'] / 1e3:.1f} kB/token")
    if "serving" in s:
        v = s["serving"]
        lines.append(f"{'serving ' + str(v['requests']) + ' requests, batch ' + str(v['batch_size']):<34}"
                     f"{'continuous':>11} {v['continuous']['tokens_per_s']:>8.1f} t/s{'static':>14} "
                     f"{v['static']['tokens_per_s']:>8.1f} t/s{v['speedup']:>10.2f}x")
        lines.append(f"  mean latency: continuous {v['continuous']['mean_latency_s']:.2f} s, static "
                     f"{v['static']['mean_latency_s']:.2f} s; row occupancy {100 * v['continuous']['occupancy']:.0f}%;"
                     f" same tokens: {v['same_tokens']}")
    lines.append("")
    lines.append("targets:")
    for key, t in results["targets"].items():
        flag = {True: "met", False: "NOT met", None: "n/a"}[t["met"]]
        value = "-" if t["value"] is None else f"{t['value']:.2f}"
        lines.append(f"  {t['what']:<58} {value:>7} (target >= {t['target']}) {flag}"
                     + (f"  [{t['note']}]" if t["note"] else ""))
    return "\n".join(lines)


def plot(results: dict, out: Path) -> list[Path]:
    """Write the plots the book uses; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    s = results["sections"]
    paths = []

    def save(fig, name):
        fig.tight_layout()
        path = out / name
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)

    pairs = [(k, e) for k, e in s.items() if "times_s" in e and k != "dtype" and "infergen" in e]
    if pairs:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        xs = range(len(pairs))
        ax.bar([x - 0.2 for x in xs], [e["infergen"]["tokens_per_s"] for _, e in pairs], 0.4, label="infergen")
        ax.bar([x + 0.2 for x in xs], [e["transformers"]["tokens_per_s"] for _, e in pairs], 0.4,
               label="transformers")
        ax.set_xticks(list(xs), [k for k, _ in pairs])
        ax.set_ylabel("new tokens / s")
        ax.set_title("infergen vs transformers generate (median, alternating)")
        ax.legend()
        save(fig, "speed.png")
    if "kv_cache" in s:
        k = s["kv_cache"]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
        a1.plot(k["per_step"]["context"], [1e3 * x for x in k["per_step"]["cached_s"]], "o-", label="KV cache")
        a1.plot(k["per_step"]["context"], [1e3 * x for x in k["per_step"]["naive_s"]], "s-", label="no cache")
        a1.set_xlabel("context length (tokens)")
        a1.set_ylabel("ms per new token")
        a1.set_title("one step")
        a1.legend()
        t = k["total"]
        a2.plot(t["new_tokens"], t["cached_s"], "o-", label="KV cache: O(n)")
        a2.plot(t["new_tokens"], t["naive_s"], "s-", label="no cache: O(n^2)")
        a2.set_xlabel("new tokens")
        a2.set_ylabel("seconds")
        a2.set_title("whole generation")
        a2.legend()
        save(fig, "kv_cache.png")
    if "batch" in s:
        rows = s["batch"]["rows"]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot([r["batch"] for r in rows], [r["decode_tokens_per_s"] for r in rows], "o-")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("decode tokens / s")
        ax.set_title("throughput grows with the batch (one weight read, B tokens)")
        save(fig, "batch.png")
    if "prefill" in s:
        rows = s["prefill"]["rows"]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot([r["prompt"] for r in rows], [r["prefill_tokens_per_s"] for r in rows], "o-", label="prefill")
        ax.plot([r["prompt"] for r in rows], [r["decode_tokens_per_s"] for r in rows], "s-", label="decode")
        ax.set_xlabel("prompt length")
        ax.set_ylabel("tokens / s")
        ax.set_yscale("log")
        ax.set_title("prefill is compute-bound, decode memory-bound")
        ax.legend()
        save(fig, "prefill_decode.png")
    if "dtype" in s:
        e = s["dtype"]
        names = list(e["times_s"])
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.bar(names, [e[n]["tokens_per_s"] for n in names], 0.5, label="measured")
        if all("matmul_s" in e[n] for n in names):
            ax.bar(names, [1 / e[n]["matmul_s"] for n in names], 0.5, fill=False, hatch="//",
                   label="matrix products alone")
        if all("roofline_tokens_per_s" in e[n] for n in names):
            ax.scatter(names, [e[n]["roofline_tokens_per_s"] for n in names], marker="_", s=900, color="red",
                       label="memory roofline", zorder=3)
        ax.set_ylabel("greedy tokens / s, batch 1")
        ax.set_title("fewer bytes per weight, more tokens")
        ax.legend()
        save(fig, "roofline.png")
    return paths


def save(results: dict, out) -> list[Path]:
    """Write ``results.json`` and the plots into ``out``; returns the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    path.write_text(json.dumps(results, indent=1, default=str))
    return [path] + plot(results, out)


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------
def add_parser(sub):
    """Register ``bench`` on the ``python -m infergen`` sub-command parser."""
    p = sub.add_parser("bench", help="benchmark infergen against transformers generate (table, JSON, plots)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes for tests/CI (well under a minute)")
    p.add_argument("--out", default="bench-results", help="directory for results.json and the plots")
    p.add_argument("--model", default="smollm2-135m", help="model name or directory (Llama family)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated subset of: {', '.join(SECTIONS)}")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per contender (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=main)
    return p


def main(args) -> dict:
    """Run the benchmark described by parsed ``args`` (see :func:`add_parser`)."""
    from transformers.utils import logging as hf_logging

    from .models.loading import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    for s in sections:
        if s not in SECTIONS:
            raise SystemExit(f"error: unknown section {s!r}; choose from {', '.join(SECTIONS)}")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    model, tokenizer = load_model(args.model, device=args.device, dtype=torch.float32)
    hf = load_reference(args.model, device=model.device)
    bench = Bench(model, tokenizer, hf, quick=args.quick, repeats=args.repeats,
                  progress=not args.no_progress, model_name=args.model)
    results = bench.run(sections)
    print(format_table(results))
    paths = save(results, args.out)
    print(f"\nwrote {', '.join(str(p) for p in paths)}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m infergen.bench")
    main(add_parser(parser.add_subparsers(dest="command")).parse_args())
