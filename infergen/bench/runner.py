"""The runner: one (infergen model, tokenizer, transformers model) triple, the sizes of a run, and the
sections in order, each storing its record in :class:`Results`."""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch

from . import batching, dtypes, kv, roofline, serving, speed
from .records import Contender, Machine, Results
from .timing import alternate

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

PROMPTS = ["The future of AI is", "Once upon a time, in a small village by the sea,", "def fibonacci(n):",
           "The capital of France is", "Here is a recipe for pancakes:", "In 1969, the first humans",
           "The three laws of thermodynamics are", "My favourite book is"]


class Bench:
    """Runs the sections on one (infergen model, tokenizer, transformers model) triple.

    ``model`` and ``hf`` must hold the same weights; ``tokenizer`` pads on the left. Each section method
    returns its record and stores it in ``self.results`` (a :class:`Results`); ``self.size``
    holds the run's sizes (``FULL`` or ``QUICK``), which may be changed before a section runs.
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
        self.results = Results(machine=machine_info(), quick=quick, sizes=self.size)

    # -- what the sections share -------------------------------------------------------------------
    def batch(self, n: int):
        """``n`` prompts (the fixed set, cycled), left-padded: ``(input_ids, attention_mask)``."""
        texts = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
        enc = self.tok(texts, return_tensors="pt", padding=True)
        return enc.input_ids.to(self.device), enc.attention_mask.to(self.device)

    def bar(self, total: int, desc: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, disable=not self.progress, leave=False)

    def compare(self, contenders: dict, tokens: int, desc: str, repeats=None) -> list[Contender]:
        """Alternate ``contenders`` (name -> zero-argument callable); one :class:`Contender` each."""
        repeats = repeats or self.size["repeats"]
        with self.bar(repeats * len(contenders), desc) as bar:
            times = alternate(contenders, repeats=repeats, device=self.device, progress=bar)
        return [Contender(name, ts, tokens) for name, ts in times.items()]

    # -- the sections --------------------------------------------------------------------------------
    def roofline(self):
        self.results.roofline = roofline.measure(self)
        return self.results.roofline

    def greedy(self):
        self.results.greedy = speed.greedy(self, self.results.roofline)
        return self.results.greedy

    def sampling(self):
        self.results.sampling = speed.sampling(self)
        return self.results.sampling

    def beam(self):
        self.results.beam = speed.beam(self)
        return self.results.beam

    def search(self):
        self.results.contrastive = speed.contrastive(self)
        self.results.mcts = speed.mcts(self)
        return self.results.contrastive, self.results.mcts

    def kv(self):
        self.results.kv = kv.measure(self)
        return self.results.kv

    def batch_sizes(self):
        self.results.batch = batching.batch_sizes(self)
        return self.results.batch

    def prefill(self):
        self.results.prefill = batching.prefill(self)
        return self.results.prefill

    def dtype(self):
        roof = self.results.roofline
        self.results.dtype = dtypes.measure(self, roof.bandwidth.read_GBps if roof is not None else None)
        return self.results.dtype

    def serving(self):
        self.results.serving = serving.measure(self)
        return self.results.serving

    def run(self, sections=SECTIONS) -> Results:
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
        self.results.machine.load_average_end = _loadavg()
        self.results.seconds = time.perf_counter() - start
        return self.results


def _loadavg():
    try:
        return list(os.getloadavg())
    except (OSError, AttributeError):  # pragma: no cover  (Windows)
        return None


def machine_info() -> Machine:
    """What the numbers depend on: CPU/GPU, threads, versions, and how busy the machine was."""
    import transformers

    return Machine(torch=torch.__version__, transformers=transformers.__version__, python=platform.python_version(),
                   threads=torch.get_num_threads(), cpu_count=os.cpu_count(), processor=_cpu_name(),
                   load_average_start=_loadavg(),
                   gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
