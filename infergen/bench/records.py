"""The benchmark's results as typed records (dataclasses), and their JSON form.

Each section returns one record; :class:`Results` holds them all. ``to_json()`` / ``Results.from_json()``
write and read ``results.json``: the layout keeps each contender under its own name (``times_s`` lists
every timed run, ``<name>`` holds its median), as earlier runs wrote it, so committed results stay
readable. Unknown keys in a file are ignored.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Union

from .timing import median


# ------------------------------------------------------------------------------------------------
# Generic JSON conversion (dataclasses, lists, dicts, Optional/Union of records)
# ------------------------------------------------------------------------------------------------
def to_json(obj):
    """A JSON-ready copy of ``obj`` (records become dicts, dict keys strings)."""
    if hasattr(obj, "to_json") and dataclasses.is_dataclass(obj):
        return obj.to_json()
    if dataclasses.is_dataclass(obj):
        return {f.name: to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_json(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    return obj


def from_json(tp, data):
    """Rebuild a value of type ``tp`` from its JSON form."""
    if data is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(options) == 1:  # Optional[X]
            return from_json(options[0], data)
        for option in options:  # the first record whose required fields are all present
            if not dataclasses.is_dataclass(option) or _fits(option, data):
                return from_json(option, data)
        raise ValueError(f"cannot read {sorted(data)} as any of {options}")
    if origin is list:
        (item,) = typing.get_args(tp)
        return [from_json(item, x) for x in data]
    if origin is dict:
        key, value = typing.get_args(tp)
        return {(int(k) if key is int else k): from_json(value, v) for k, v in data.items()}
    if dataclasses.is_dataclass(tp):
        if hasattr(tp, "from_json"):
            return tp.from_json(data)
        hints = typing.get_type_hints(tp)
        known = {f.name for f in dataclasses.fields(tp) if f.init}
        return tp(**{k: from_json(hints[k], v) for k, v in data.items() if k in known})
    if tp is float and isinstance(data, int):
        return float(data)
    return data


def _fits(record, data) -> bool:
    if not isinstance(data, dict):
        return False
    if hasattr(record, "fits"):  # a record with its own JSON layout says what it needs
        return record.fits(data)
    required = {f.name for f in dataclasses.fields(record)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    return required <= set(data)


# ------------------------------------------------------------------------------------------------
# Side-by-side comparisons
# ------------------------------------------------------------------------------------------------
@dataclass
class Contender:
    """One contender of a comparison: every timed run, its median and the tokens/s at the median."""
    name: str
    times_s: list[float]
    new_tokens: int

    @property
    def median_s(self) -> float:
        return median(self.times_s)

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.median_s


@dataclass
class Comparison:
    """Contenders timed in turn on the same work; the first is the one the others are compared with.

    ``ratio`` is how many times faster the first contender is than the second (median time of the
    second / median time of the first). ``same_tokens``: whether the two produced the same tokens
    (None where not compared). ``settings``: the decoding settings both used.
    """
    new_tokens: int
    contenders: list[Contender]
    same_tokens: bool | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def contender(self, name: str) -> Contender:
        for c in self.contenders:
            if c.name == name:
                return c
        raise KeyError(f"no contender {name!r}; there are {[c.name for c in self.contenders]}")

    @property
    def first(self) -> Contender:
        return self.contenders[0]

    @property
    def second(self) -> Contender:
        return self.contenders[1]

    @property
    def ratio(self) -> float:
        return self.second.median_s / self.first.median_s

    def to_json(self) -> dict:
        out = {"new_tokens": self.new_tokens, "times_s": {c.name: c.times_s for c in self.contenders}}
        for c in self.contenders:
            out[c.name] = {"median_s": c.median_s, "tokens_per_s": c.tokens_per_s}
        if len(self.contenders) >= 2:
            out["ratio"] = self.ratio
        for f in dataclasses.fields(self):
            if f.name not in ("new_tokens", "contenders"):
                out[f.name] = to_json(getattr(self, f.name))
        return out

    @classmethod
    def fits(cls, data: dict) -> bool:
        return {"new_tokens", "times_s"} <= set(data)

    @classmethod
    def from_json(cls, data: dict):
        n = data["new_tokens"]
        contenders = [Contender(name, list(ts), n) for name, ts in data["times_s"].items()]
        hints = typing.get_type_hints(cls)
        extra = {f.name: from_json(hints[f.name], data[f.name]) for f in dataclasses.fields(cls)
                 if f.name not in ("new_tokens", "contenders") and f.name in data}
        if "batch" in data and "batch" not in extra and "settings" in extra:  # earlier files kept it apart
            extra["settings"] = dict(extra["settings"], batch=data["batch"])
        return cls(new_tokens=n, contenders=contenders, **extra)


@dataclass
class GreedyComparison(Comparison):
    """Greedy batch 1, infergen vs transformers, with infergen's matrix products timed alone beside them.

    ``matmul_share_of_step``: the part of a decode step the matrix products take; ``roofline_fraction``:
    infergen's tokens/s over the float32 memory bound (None without the roofline section);
    ``achieved_GBps``: the bytes per token it streams per second; ``matmul_roofline_fraction``: the
    fraction of the bound the matrix products alone would reach.
    """
    matmul_s_per_token: float = 0.0
    matmul_share_of_step: float = 0.0
    roofline_fraction: float | None = None
    achieved_GBps: float | None = None
    matmul_roofline_fraction: float | None = None


@dataclass
class Skipped:
    """A section that could not run here, and why."""
    skipped: str


# ------------------------------------------------------------------------------------------------
# The roofline
# ------------------------------------------------------------------------------------------------
@dataclass
class Bandwidth:
    """Memory bandwidth in GB/s: ``read_GBps`` the best streaming read (of ``read_samples``, one per
    buffer), ``copy_GBps`` a copy (read + write counted), ``bytes`` the size of one buffer."""
    read_GBps: float
    copy_GBps: float
    read_samples: list[float]
    bytes: int


@dataclass
class Bound:
    """The batch-1 decode bound: ``bytes_per_token`` read per token, ``tokens_per_s`` at the bandwidth."""
    bytes_per_token: float
    tokens_per_s: float


@dataclass
class RooflineResult:
    """The machine's bandwidth, the bytes a decode step reads, the float32 bound, and the time of one
    step's matrix products alone (``matmul_s``)."""
    bandwidth: Bandwidth
    weight_bytes: int
    kv_bytes_per_token: int
    mean_context: float
    fp32_bound_tokens_per_s: float
    bytes_per_token: float
    params: int
    matmul_s: float

    @property
    def matmul_GBps(self) -> float:
        return self.weight_bytes / self.matmul_s / 1e9


@dataclass
class PhaseTimes:
    """Seconds of the prefill and of ``new_tokens`` decode steps (:func:`~infergen.bench.prefill_decode_times`)."""
    prefill_s: float
    decode_s: float
    batch: int
    prompt: int
    new_tokens: int


# ------------------------------------------------------------------------------------------------
# KV cache, batch sizes, prefill
# ------------------------------------------------------------------------------------------------
@dataclass
class KVSteps:
    """One decode step with the cache and without, at each context length."""
    context: list[int]
    cached_s: list[float]
    naive_s: list[float]


@dataclass
class EstimateError:
    """Relative error of a summed per-step estimate against a measured whole generation."""
    cached: float
    naive: float


@dataclass
class KVTotals:
    """Whole generations of each length; ``naive_measured[i]`` False where the no-cache total is the sum
    of measured per-step costs; ``estimate_error`` checks that sum where both exist."""
    new_tokens: list[int]
    cached_s: list[float]
    naive_s: list[float]
    naive_measured: list[bool]
    estimate_error: dict[int, EstimateError] = field(default_factory=dict)


@dataclass
class KVResult:
    per_step: KVSteps
    total: KVTotals

    @property
    def ratio(self) -> dict[int, float]:
        """Without / with the cache, per number of new tokens."""
        t = self.total
        return {n: r / c for n, c, r in zip(t.new_tokens, t.cached_s, t.naive_s)}

    def to_json(self) -> dict:
        return {"per_step": to_json(self.per_step), "total": to_json(self.total), "ratio": to_json(self.ratio)}


@dataclass
class BatchRow:
    batch: int
    decode_s: float
    prefill_s: float
    decode_tokens_per_s: float
    total_tokens_per_s: float


@dataclass
class BatchResult:
    new_tokens: int
    rows: list[BatchRow]

    def tokens_per_s(self, batch: int) -> float:
        return next(r.decode_tokens_per_s for r in self.rows if r.batch == batch)


@dataclass
class PrefillRow:
    prompt: int
    prefill_s: float
    prefill_tokens_per_s: float
    decode_step_s: float
    decode_tokens_per_s: float


@dataclass
class PeakMemory:
    """Peak memory added by one greedy generation (``batch`` rows, ``new_tokens``) on each side."""
    batch: int
    new_tokens: int
    infergen_bytes: int
    transformers_bytes: int
    infergen_cache_bytes: int | None
    weight_bytes: int


@dataclass
class PrefillResult:
    rows: list[PrefillRow]
    kv_bytes_per_token: int
    kv_bytes: dict[int, int]
    peak_memory: PeakMemory


# ------------------------------------------------------------------------------------------------
# Weight dtypes
# ------------------------------------------------------------------------------------------------
@dataclass
class DtypeRow(Contender):
    """One weight format (a contender: its greedy runs), with its matrix products alone, its size and its
    quality on a fixed text against float32 (mean log-likelihood, perplexity, KL, top-1 agreement)."""
    matmul_times_s: list[float]
    weight_bytes: int
    mean_logprob: float
    perplexity: float
    delta_mean_logprob: float
    kl_vs_fp32: float
    top1_agreement_vs_fp32: float
    roofline_tokens_per_s: float | None = None

    @property
    def matmul_s(self) -> float:
        """One step's matrix products alone."""
        return median(self.matmul_times_s) / self.new_tokens

    @property
    def overhead_s_per_token(self) -> float:
        return self.median_s / self.new_tokens - self.matmul_s

    @property
    def roofline_fraction(self) -> float | None:
        return None if self.roofline_tokens_per_s is None else self.tokens_per_s / self.roofline_tokens_per_s


@dataclass
class DtypeResult:
    new_tokens: int
    rows: list[DtypeRow]
    notes: dict[str, str]
    text_tokens: int

    def row(self, name: str) -> DtypeRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no weight format {name!r}; there are {[r.name for r in self.rows]}")

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.rows]

    def speedup(self, name: str) -> float:
        """Tokens/s of ``name`` over float32's."""
        return self.row("float32").median_s / self.row(name).median_s

    def matmul_speedup(self, name: str) -> float:
        """The same ratio for the matrix products alone: the ratio with zero overhead."""
        return self.row("float32").matmul_s / self.row(name).matmul_s

    _ROW = ("weight_bytes", "mean_logprob", "perplexity", "delta_mean_logprob", "kl_vs_fp32",
            "top1_agreement_vs_fp32", "roofline_tokens_per_s")

    def to_json(self) -> dict:
        out = {"new_tokens": self.new_tokens, "times_s": {r.name: r.times_s for r in self.rows},
               "matmul_times_s": {r.name: r.matmul_times_s for r in self.rows}}
        for r in self.rows:
            e = {k: getattr(r, k) for k in self._ROW}
            e.update(median_s=r.median_s, tokens_per_s=r.tokens_per_s, matmul_s=r.matmul_s,
                     speedup_vs_fp32=self.speedup(r.name), matmul_speedup_vs_fp32=self.matmul_speedup(r.name),
                     overhead_s_per_token=r.overhead_s_per_token, roofline_fraction=r.roofline_fraction)
            out[r.name] = e
        out.update(notes=self.notes, text_tokens=self.text_tokens)
        return out

    @classmethod
    def from_json(cls, data: dict) -> "DtypeResult":
        n = data["new_tokens"]
        rows = [DtypeRow(name=name, times_s=list(ts), matmul_times_s=list(data["matmul_times_s"][name]),
                         new_tokens=n, **{k: data[name].get(k) for k in cls._ROW})
                for name, ts in data["times_s"].items()]
        return cls(new_tokens=n, rows=rows, notes=dict(data.get("notes", {})), text_tokens=data["text_tokens"])


# ------------------------------------------------------------------------------------------------
# Serving
# ------------------------------------------------------------------------------------------------
@dataclass
class ServingSide:
    """One way of serving the workload: wall time, tokens/s, mean request latency; the continuous
    batcher also counts decode steps and the share of row-steps that did work (``occupancy``)."""
    seconds: float
    tokens_per_s: float
    mean_latency_s: float
    decode_steps: int | None = None
    occupancy: float | None = None


@dataclass
class ServingResult:
    requests: int
    batch_size: int
    tokens: int
    static: ServingSide
    continuous: ServingSide
    speedup: float
    same_tokens: bool
    max_new_tokens: list[int]


# ------------------------------------------------------------------------------------------------
# Everything
# ------------------------------------------------------------------------------------------------
@dataclass
class Machine:
    """What the numbers depend on: processor, threads, versions, and how busy the machine was."""
    torch: str
    transformers: str
    python: str
    threads: int
    cpu_count: int | None
    processor: str
    load_average_start: list[float] | None = None
    load_average_end: list[float] | None = None
    gpu: str | None = None


SearchResult = Union[Comparison, Skipped]


@dataclass
class Results:
    """Every section's record (None where the section did not run)."""
    machine: Machine
    quick: bool
    sizes: dict[str, Any]
    seconds: float | None = None
    roofline: RooflineResult | None = None
    greedy: GreedyComparison | None = None
    sampling: list[Comparison] = field(default_factory=list)
    beam: SearchResult | None = None
    contrastive: SearchResult | None = None
    mcts: SearchResult | None = None
    kv: KVResult | None = None
    batch: BatchResult | None = None
    prefill: PrefillResult | None = None
    dtype: DtypeResult | None = None
    serving: ServingResult | None = None

    # the names of the sections in results.json
    _KEYS = {"roofline": "roofline", "greedy": "greedy_b1", "beam": "beam4", "contrastive": "contrastive",
             "mcts": "mcts", "kv": "kv_cache", "batch": "batch", "prefill": "prefill", "dtype": "dtype",
             "serving": "serving"}

    def to_json(self) -> dict:
        sections = {}
        for attr, key in self._KEYS.items():
            value = getattr(self, attr)
            if value is not None:
                sections[key] = to_json(value)
            if attr == "greedy":  # the file's order: greedy, then sampling
                for c in self.sampling:
                    sections[f"sample_b{c.settings.get('batch', 1)}"] = to_json(c)
        return {"machine": to_json(self.machine), "quick": self.quick, "sizes": to_json(self.sizes),
                "sections": sections, "seconds": self.seconds}

    def __getitem__(self, key: str):
        """The results.json view of the records (``results["sections"]["greedy_b1"]["ratio"]``): the same
        layout a saved run is read back in, so code that reads a run works on a fresh one too."""
        return self.to_json()[key]

    @classmethod
    def from_json(cls, data: dict) -> "Results":
        hints = typing.get_type_hints(cls)
        s = data.get("sections", {})
        fields = {attr: from_json(hints[attr], s[key]) for attr, key in cls._KEYS.items() if key in s}
        fields["sampling"] = [Comparison.from_json(v) for k, v in s.items() if k.startswith("sample_b")]
        return cls(machine=from_json(Machine, data["machine"]), quick=bool(data.get("quick")),
                   sizes=dict(data.get("sizes", {})), seconds=data.get("seconds"), **fields)
