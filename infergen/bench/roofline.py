"""The roofline: why decoding at batch 1 is slow, and the section that measures it.

Generating one token at batch 1 multiplies a single vector by every weight matrix of the model: each
weight is read from memory once and used for exactly one multiply-add. A CPU or GPU does far more
arithmetic per second than it can fetch bytes, so the step waits on memory, and

    tokens/s  <=  memory bandwidth / bytes read per token,
    bytes read per token = weight bytes + KV-cache bytes of the context.

:func:`memory_bandwidth` measures the bandwidth of *this* machine (a large tensor sum: a pure streaming
read) and :func:`roofline` turns it into the bound. :func:`decode_matmuls` runs a decode step's matrix
products alone, which splits a step into those products and everything else.
"""
from __future__ import annotations

import torch

from .records import Bandwidth, Bound, RooflineResult
from .timing import median, time_call


def memory_bandwidth(megabytes: int = 512, repeats: int = 5, buffers: int = 3, device="cpu") -> Bandwidth:
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
    return Bandwidth(read_GBps=max(reads), copy_GBps=max(copies), read_samples=reads, bytes=4 * n)


def decode_matmuls(model, steps: int = 1):
    """A zero-argument function that runs the matrix products of ``steps`` batch-1 decode steps *alone*.

    Each step runs every linear layer of ``model`` once, in order, on one input row -- the same
    kernels and weights a decode step uses, without the ~300 other small operations and their Python
    dispatch. Timed side by side with real decoding (:func:`alternate`), it splits a step into the
    matrix products and everything else; ``weight bytes / its time per step`` is the bandwidth the
    kernels reach: the ceiling for a decode step whatever the Python around it does.
    """
    from torch import nn

    layers = [m for m in model.modules() if not isinstance(m, nn.Embedding)
              and isinstance(getattr(m, "in_features", None), int) and isinstance(getattr(m, "out_features", None), int)]
    if not layers:
        raise ValueError("model has no linear layers")
    device, dtype = model.device, model.dtype
    inputs = {n: torch.randn(1, n, device=device, dtype=dtype) for n in {m.in_features for m in layers}}

    def run():  # each layer as a decode step calls it (a prepacked layer uses its packed weight at one row)
        with torch.inference_mode():
            for _ in range(steps):
                for m in layers:
                    m(inputs[m.in_features])

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


def roofline(bandwidth_GBps: float, weights: int, kv_per_token: int, context: float) -> Bound:
    """The batch-1 decode bound: ``bandwidth / (weights + kv_per_token * context)`` tokens/s."""
    per_token = weights + kv_per_token * context
    return Bound(bytes_per_token=per_token, tokens_per_s=bandwidth_GBps * 1e9 / per_token)


def measure(bench) -> RooflineResult:
    """The section: bandwidth, bytes per token, the float32 bound at the greedy run's mean context, and
    one step's matrix products alone."""
    size = bench.size
    bw = memory_bandwidth(size["bandwidth_mb"], device=bench.device)
    w = weight_bytes(bench.model)
    kv = kv_bytes_per_token(bench.model)
    ctx = 8 + size["greedy_tokens"] / 2  # the mean context of the greedy benchmark
    bound = roofline(bw.read_GBps, w, kv, ctx)
    return RooflineResult(
        bandwidth=bw, weight_bytes=w, kv_bytes_per_token=kv, mean_context=ctx,
        fp32_bound_tokens_per_s=bound.tokens_per_s, bytes_per_token=bound.bytes_per_token,
        params=sum(p.numel() for p in {id(p): p for p in bench.model.parameters()}.values()),
        matmul_s=decode_matmul_time(bench.model, size["repeats"]))
