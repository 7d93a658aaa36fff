"""Timing machinery: synchronised timers, alternating contenders, medians, peak memory.

Alternating matters on a shared machine: a background job that slows the machine for a minute slows
every contender alike, so their *ratio* stays honest even when the absolute numbers move.
"""
from __future__ import annotations

import statistics
import threading
import time
from contextlib import contextmanager

import torch


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
