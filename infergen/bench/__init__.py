"""Benchmarks, side by side: infergen against transformers' ``generate``, and against the roofline.

``python -m infergen.bench`` (or ``make bench``) loads the bundled SmolLM2-135M twice -- infergen's
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
* ``roofline``: bandwidth of the machine, bytes per token, the bound for float32/bfloat16/int8.
* ``greedy``: greedy batch 1 (128 new tokens), infergen vs transformers, + % of the roofline.
* ``sampling``: sampling (temperature 0.8, top-k 50, top-p 0.95) at batch 1 and batch 8.
* ``beam``: beam search, 4 beams (when ``infergen.decoding.beam`` is importable).
* ``search``: contrastive search and MCTS against their no-cache references (for MCTS, ``infergen.bench.mcts_nocache``).
* ``kv``: KV cache vs none, from 64 to 1024 new tokens (:func:`naive_greedy` is the reference).
* ``batch``: throughput against batch size (1 ... 32).
* ``prefill``: prefill vs decode time against the prompt length; KV-cache bytes; peak memory.
* ``dtype``: bfloat16 and int8 weights against float32, with the quality cost (log-likelihood).
* ``serving``: continuous vs static batching on a mixed-length workload (``infergen.serving``).

The package: ``timing`` (timers, alternation, medians, peak memory), ``roofline``,
``reference`` (the loops without a cache), one module per kind of section (``speed``,
``kv``, ``batching``, ``dtypes``, ``serving``), ``records`` (each section's result
as a dataclass, and the JSON form), ``runner`` (:class:`Bench`), and the reporting apart from the
measuring: ``report`` (the table and the ratios) and ``plots``.
Beside them, ``constraints_backends`` times the structured-generation backends (chapter 12 runs it;
``python -m infergen.bench.constraints_backends`` prints its tables).

Pitfalls a fair benchmark avoids: timing the first call (lazy initialisation, allocator warm-up), a
different number of generated tokens per contender (we switch EOS off so both run exactly ``n``
steps), timing a GPU without synchronising, and comparing numbers taken minutes apart on a busy
machine (hence alternation, medians, and the load average in the results).
"""
from __future__ import annotations

from .cli import build_parser, main
from .dtypes import TEXT
from .plots import plot, save
from .records import (Bandwidth, BatchResult, Bound, Comparison, Contender, DtypeResult, GreedyComparison,
                      KVResult, Machine, PhaseTimes, PrefillResult, Results, RooflineResult, ServingResult,
                      Skipped)
from .reference import load_reference, naive_contrastive, naive_greedy, prefill_decode_times
from .report import Ratio, format_table, ratios, write_report
from .roofline import decode_matmul_time, decode_matmuls, kv_bytes_per_token, memory_bandwidth, roofline, weight_bytes
from .runner import FULL, PROMPTS, QUICK, SECTIONS, Bench, machine_info
from .timing import alternate, median, peak_memory, synchronize, time_call

__all__ = [
    # running
    "Bench", "SECTIONS", "FULL", "QUICK", "PROMPTS", "TEXT", "build_parser", "main", "machine_info",
    # timing
    "alternate", "median", "peak_memory", "synchronize", "time_call",
    # the roofline
    "decode_matmul_time", "decode_matmuls", "kv_bytes_per_token", "memory_bandwidth", "roofline", "weight_bytes",
    # reference loops
    "load_reference", "naive_contrastive", "naive_greedy", "prefill_decode_times",
    # records
    "Bandwidth", "BatchResult", "Bound", "Comparison", "Contender", "DtypeResult", "GreedyComparison", "KVResult",
    "Machine", "PhaseTimes", "PrefillResult", "Results", "RooflineResult", "ServingResult", "Skipped",
    # reporting
    "Ratio", "format_table", "plot", "ratios", "save", "write_report",
]
