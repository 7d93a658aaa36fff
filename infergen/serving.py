"""Serving at scale: continuous batching, and the same settings in transformers and vLLM terms.

Static batching and its waste
-----------------------------
A batch of requests decodes in lockstep: one forward pass produces one token for every row, reading
the weights once for all of them (this is why batch 16 is ~10x the throughput of batch 1). With
*static* batching the batch is formed once and runs until its *longest* request is done: a request
that wanted 8 tokens in a batch with one that wants 256 sits finished (padding) for 248 steps, its
row still computed, and the requests waiting in the queue wait for the whole batch.

Continuous batching
-------------------
The fix (Orca, 2022; vLLM, TGI, every serving engine since) is to schedule *between decode steps*:

    repeat:
        admit waiting requests into free rows      (prefill each prompt, place its keys/values)
        one decode step for every occupied row     (one token per row, weights read once)
        retire rows that produced EOS or hit their limit (their row is free at once)

:class:`ContinuousBatcher` does this on infergen's static :class:`~infergen.cache.KVCache`: the
cache has ``max_batch`` rows (*slots*), and all rows share the column of their newest token. A new
request is prefilled alone on a small cache and its keys/values are copied into its slot,
right-aligned at the current column (:meth:`~infergen.cache.KVCache.write_row`); the columns before
its prompt are padding for that row, which the attention mask hides and the rotary positions skip
(a token's position counts the *real* tokens before it, so a request decodes exactly as if it were
alone). A finished request's slot is cleared (:meth:`~infergen.cache.KVCache.clear_row`). When the
shared columns reach the end of the cache, padding is squeezed out and the freed columns reused
(:meth:`~infergen.cache.KVCache.compact`). Production engines go further -- *paged* caches
(vLLM's PagedAttention) give every request its own list of fixed-size blocks so no column is ever
wasted -- but the scheduling idea is this one.

:func:`static_batching` is the baseline and :func:`compare_batching` measures both on the same
mixed-length workload (see ``python -m infergen bench --sections serving``).

Speaking the peers' language
----------------------------
:func:`to_generation_config` turns infergen's sampling settings into a transformers
``GenerationConfig`` and :func:`to_vllm_sampling_params` into the fields of vLLM's
``SamplingParams``. Settings a peer does not have raise ``ValueError`` instead of being dropped
silently (transformers has no frequency/presence penalty; vLLM has no typical/epsilon/eta sampling
and runs beam search through a separate entry point).
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import torch

from ._validation import check_number
from .cache import KVCache
from .decoding.base import eos_ids
from .models.hf import as_model
from .processors import LogitsPipeline, sample_from_logits

__all__ = ["Request", "ContinuousBatcher", "static_batching", "compare_batching", "mixed_workload",
           "to_generation_config", "to_vllm_sampling_params"]


@dataclass
class Request:
    """One generation request and, after serving, its result.

    ``prompt``: token ids (a list or a 1-D tensor, no padding). ``max_new_tokens``: its own limit.
    ``arrival``: when it arrives, in decode steps of the batcher's clock (0 = at the start).
    ``seed``: makes this request's sampling reproducible whatever it is batched with.
    Filled by the batcher: ``tokens`` (generated ids, EOS included), ``logprobs`` (model log-probability
    of each), ``finish_reason`` (``"eos"`` or ``"length"``), ``admitted_step``/``finished_step`` (clock),
    ``latency_s`` (wall seconds from the start of serving to its last token).
    """
    prompt: list
    max_new_tokens: int = 64
    arrival: int = 0
    seed: int | None = None
    id: object = None
    tokens: list = field(default_factory=list)
    logprobs: list = field(default_factory=list)
    finish_reason: str | None = None
    admitted_step: int | None = None
    finished_step: int | None = None
    latency_s: float | None = None

    def __post_init__(self):
        if isinstance(self.prompt, torch.Tensor):
            if self.prompt.dim() != 1:
                raise ValueError(f"prompt must be a 1-D sequence of token ids, got shape {tuple(self.prompt.shape)}")
            self.prompt = self.prompt.tolist()
        self.prompt = [int(t) for t in self.prompt]
        if not self.prompt:
            raise ValueError("prompt must hold at least one token id")
        check_number("max_new_tokens", self.max_new_tokens, low=1, integer=True)
        check_number("arrival", self.arrival, low=0, integer=True)
        if self.seed is not None:
            check_number("seed", self.seed, low=0, integer=True)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


class ContinuousBatcher:
    """Serve :class:`Request` objects with continuous batching (see the module docstring).

    ``model``: infergen's native model (its :class:`~infergen.cache.KVCache` provides the row slots).
    ``max_batch``: rows decoded together. ``max_len``: columns of the shared cache (default: twice
    the longest request, at most the model's context). Sampling settings (``temperature`` -- 0, the
    default, is greedy --, ``top_k``, ``top_p``, ``min_p``, penalties, ...) apply to every request;
    ``eos_token_id`` defaults to the model's.
    """

    def __init__(self, model, max_batch: int = 8, max_len: int | None = None, *, eos_token_id=None,
                 pad_token_id=None, temperature=0.0, **params):
        self.model = as_model(model)
        check_number("max_batch", max_batch, low=1, integer=True)
        if max_len is not None:
            check_number("max_len", max_len, low=2, high=self.model.max_context, integer=True)
        probe = self.model.new_cache(1, 1)
        if not isinstance(probe, KVCache):
            raise TypeError("continuous batching needs infergen's KVCache (the native model); "
                            f"{type(self.model).__name__} provides {type(probe).__name__}")
        self.max_batch, self.max_len = int(max_batch), max_len
        self.pipeline = LogitsPipeline.from_params(temperature=temperature, **params)
        self.uses_history = any(name in ("repetition_penalty", "frequency_penalty", "no_repeat_ngram")
                                for name, _ in self.pipeline.steps)
        self.eos = set(eos_ids(self.model, eos_token_id))
        if pad_token_id is None:
            pad_token_id = getattr(self.model.config, "pad_token_id", None)
            pad_token_id = pad_token_id if pad_token_id is not None else (min(self.eos) if self.eos else 0)
        self.pad = int(pad_token_id)
        self.stats = {}

    # -- choosing tokens ----------------------------------------------------------------------------
    def _choose(self, logits: torch.Tensor, rows: list, reqs: list, generators: dict) -> tuple[list, list]:
        """Pick one token for each of ``rows`` (indices into ``logits`` [n, V]) for its request."""
        prompt_ids = generated_ids = None
        if self.uses_history:
            prompt_ids = _pad_rows([r.prompt for r in reqs], logits.device)
            generated_ids = _pad_rows([r.tokens for r in reqs], logits.device)
        logprobs = torch.log_softmax(logits, -1)
        if self.pipeline.is_greedy and not self.uses_history:
            tokens = logits.argmax(-1)
        else:
            processed = self.pipeline(logits, prompt_ids=prompt_ids, generated_ids=generated_ids)
            tokens = torch.stack([sample_from_logits(processed[i], generator=generators.get(id(r)))
                                  for i, r in enumerate(reqs)])
        picked = logprobs.gather(-1, tokens[:, None]).squeeze(-1)
        return tokens.tolist(), picked.tolist()

    def _record(self, req: Request, token: int, logprob: float, step: int, start: float):
        req.tokens.append(int(token))
        req.logprobs.append(float(logprob))
        if token in self.eos:
            req.finish_reason = "eos"
        elif len(req.tokens) >= req.max_new_tokens:
            req.finish_reason = "length"
        if req.done:
            req.finished_step = step
            req.latency_s = time.perf_counter() - start

    # -- the loop -----------------------------------------------------------------------------------
    def run(self, requests: list[Request]) -> list[Request]:
        """Serve every request; returns them (same objects, same order) with their results filled in."""
        requests = list(requests)
        if not requests:
            return requests
        for r in requests:
            if not isinstance(r, Request):
                raise TypeError(f"requests must be infergen.serving.Request objects, got {type(r).__name__}")
            r.tokens, r.logprobs, r.finish_reason = [], [], None
        longest = max(len(r.prompt) + r.max_new_tokens for r in requests)
        max_len = self.max_len or min(self.model.max_context, 2 * longest)
        if longest > max_len:
            raise ValueError(f"a request needs {longest} columns (prompt + max_new_tokens) but max_len is {max_len}")
        vocab = self.model.config.vocab_size
        for r in requests:
            if min(r.prompt) < 0 or max(r.prompt) >= vocab:
                raise ValueError(f"request {r.id!r} has token ids outside [0, {vocab - 1}]")
        model, B, device = self.model, self.max_batch, self.model.device
        generators = {}
        for r in requests:
            if r.seed is not None:
                generators[id(r)] = torch.Generator(device=device).manual_seed(r.seed)
        pending = deque(sorted(requests, key=lambda r: r.arrival))
        slots: list[Request | None] = [None] * B
        last = torch.full((B,), self.pad, dtype=torch.long, device=device)
        cache = model.new_cache(B, max_len)
        step, start = 0, time.perf_counter()
        stats = dict(decode_steps=0, row_steps=0, busy_row_steps=0, prefills=0, dropped_columns=0, max_len=max_len)
        with torch.inference_mode():
            while pending or any(s is not None for s in slots):
                # 1. admit the requests that have arrived into free slots
                while pending and pending[0].arrival <= step and None in slots:
                    req, row = pending.popleft(), slots.index(None)
                    first = self._admit(req, row, cache, max_len)
                    stats["prefills"] += 1
                    req.admitted_step = step
                    tok, lp = self._choose(first, [0], [req], generators)
                    self._record(req, tok[0], lp[0], step, start)
                    if req.done:
                        cache.clear_row(row)
                    else:
                        slots[row] = req
                        last[row] = tok[0]
                occupied = [i for i, s in enumerate(slots) if s is not None]
                if not occupied:
                    if pending:
                        step = max(step, pending[0].arrival)  # idle until the next arrival
                    continue
                # 2. one decode step for every row (free rows are padding: masked, their output ignored)
                if cache.length == max_len:
                    self._compact(cache, slots, stats)
                active = torch.zeros(B, 1, dtype=torch.bool, device=device)
                active[occupied] = True
                logits = model(last[:, None], cache, attention_mask=active).logits[:, -1].float()
                stats["decode_steps"] += 1
                stats["row_steps"] += B
                stats["busy_row_steps"] += len(occupied)
                step += 1
                # 3. record each row's token; retire finished requests at once
                reqs = [slots[i] for i in occupied]
                tokens, lps = self._choose(logits[occupied], occupied, reqs, generators)
                for row, req, tok, lp in zip(occupied, reqs, tokens, lps):
                    self._record(req, tok, lp, step, start)
                    last[row] = tok
                    if req.done:
                        slots[row] = None
                        cache.clear_row(row)
        stats["seconds"] = time.perf_counter() - start
        stats["tokens"] = sum(len(r.tokens) for r in requests)
        stats["occupancy"] = stats["busy_row_steps"] / max(stats["row_steps"], 1)
        self.stats = stats
        return requests

    def _admit(self, req: Request, row: int, cache: KVCache, max_len: int):
        """Prefill ``req`` alone, copy its keys/values into slot ``row``; returns its next-token logits."""
        T = len(req.prompt)
        if cache.length < T:  # the prompt is longer than the shared columns: pad every row on the left
            if cache.length + (T - cache.length) > max_len:  # pragma: no cover  (T <= max_len is checked)
                raise ValueError("prompt does not fit the cache")
            cache.append_mask(torch.zeros(cache.batch_size, T - cache.length, dtype=torch.bool,
                                          device=cache.mask.device), T - cache.length)
        ids = torch.tensor([req.prompt], dtype=torch.long, device=self.model.device)
        alone = self.model.new_cache(1, T)
        logits = self.model(ids, alone).logits[:, -1].float()
        cache.write_row(row, alone)
        return logits

    @staticmethod
    def _compact(cache: KVCache, slots: list, stats: dict):
        """Free columns at the end of the shared cache (see :meth:`~infergen.cache.KVCache.compact`)."""
        dropped = cache.compact()
        if dropped <= 0:  # pragma: no cover  (prevented: every request fits max_len)
            raise RuntimeError("the cache is full of real tokens; raise max_len")
        stats["dropped_columns"] += dropped


def _pad_rows(rows: list[list[int]], device) -> torch.Tensor:
    """Ragged id lists -> [n, max_len] with -1 padding (the processors' 'ignore me' id)."""
    width = max(1, max(len(r) for r in rows))
    return torch.tensor([r + [-1] * (width - len(r)) for r in rows], dtype=torch.long, device=device)


def static_batching(model, requests: list[Request], batch_size: int = 8, *, eos_token_id=None,
                    pad_token_id=None, temperature=0.0, **params) -> list[Request]:
    """The baseline: serve ``requests`` in arrival order, ``batch_size`` at a time, each batch to the end.

    A batch runs until every row is finished or its *largest* ``max_new_tokens`` is reached; a row is
    then cut to its own limit. (Arrival times are ignored: all requests are taken as waiting.)
    """
    from .decoding.sampling import generate_autoregressive

    check_number("batch_size", batch_size, low=1, integer=True)
    model = as_model(model)
    eos = set(eos_ids(model, eos_token_id))
    pad = pad_token_id if pad_token_id is not None else getattr(model.config, "pad_token_id", None)
    pad = pad if pad is not None else (min(eos) if eos else 0)
    order = sorted(requests, key=lambda r: r.arrival)
    start = time.perf_counter()
    steps = 0
    for i in range(0, len(order), batch_size):
        group = order[i:i + batch_size]
        width = max(len(r.prompt) for r in group)
        ids = torch.tensor([[pad] * (width - len(r.prompt)) + r.prompt for r in group], device=model.device)
        mask = torch.tensor([[0] * (width - len(r.prompt)) + [1] * len(r.prompt) for r in group], device=model.device)
        n = max(r.max_new_tokens for r in group)
        seed = group[0].seed
        out = generate_autoregressive(model, ids, n, temperature=temperature, attention_mask=mask,
                                      eos_token_id=sorted(eos), pad_token_id=pad, seed=seed,
                                      return_dict=True, **params)
        steps += out.new_tokens.shape[1]
        now = time.perf_counter() - start
        for j, r in enumerate(group):
            k = min(out.lengths[j], r.max_new_tokens)
            r.tokens = out.new_tokens[j, :k].tolist()
            r.logprobs = out.logprobs[j, :k].tolist()
            r.finish_reason = "eos" if (r.tokens and r.tokens[-1] in eos) else "length"
            r.latency_s = now
    return requests


def mixed_workload(n: int = 16, prompt_lengths=(4, 32), new_tokens=(8, 128), vocab: int = 1000,
                   seed: int = 0) -> list[Request]:
    """``n`` requests with random prompts and *different* lengths (the case continuous batching wins).

    Prompt lengths are uniform in ``prompt_lengths``, ``max_new_tokens`` log-uniform in ``new_tokens``
    (many short answers, a few long ones, as in real traffic). Token ids are drawn from ``[3, vocab)``.
    """
    g = torch.Generator().manual_seed(seed)
    reqs = []
    lo, hi = new_tokens
    for i in range(n):
        T = int(torch.randint(prompt_lengths[0], prompt_lengths[1] + 1, (1,), generator=g))
        u = float(torch.rand(1, generator=g))
        m = int(round(lo * (hi / lo) ** u))
        prompt = torch.randint(3, vocab, (T,), generator=g).tolist()
        reqs.append(Request(prompt=prompt, max_new_tokens=m, id=i))
    return reqs


def compare_batching(model, requests: list[Request], batch_size: int = 8, **params) -> dict:
    """Serve the same workload with static and with continuous batching; tokens/s, latency, agreement.

    EOS is ignored (``eos_token_id=[]``) so both serve exactly ``max_new_tokens`` per request and the
    comparison measures scheduling, not luck. With greedy settings the tokens must agree (``same_tokens``).
    """
    def clone():
        return [Request(prompt=list(r.prompt), max_new_tokens=r.max_new_tokens, arrival=r.arrival, seed=r.seed,
                        id=r.id) for r in requests]

    static_reqs = static_batching(model, clone(), batch_size, eos_token_id=[], **params)
    batcher = ContinuousBatcher(model, max_batch=batch_size, eos_token_id=[], **params)
    start = time.perf_counter()
    cont_reqs = batcher.run(clone())
    cont_time = time.perf_counter() - start
    static_reqs_time = max(r.latency_s for r in static_reqs)
    tokens = sum(len(r.tokens) for r in cont_reqs)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {
        "requests": len(requests), "batch_size": batch_size, "tokens": tokens,
        "static": {"seconds": static_reqs_time, "tokens_per_s": tokens / static_reqs_time,
                   "mean_latency_s": mean([r.latency_s for r in static_reqs])},
        "continuous": {"seconds": cont_time, "tokens_per_s": tokens / cont_time,
                       "mean_latency_s": mean([r.latency_s for r in cont_reqs]), **batcher.stats},
        "speedup": static_reqs_time / cont_time,
        "same_tokens": all(a.tokens == b.tokens for a, b in zip(static_reqs, cont_reqs)),
    }


# ------------------------------------------------------------------------------------------------
# The same settings in the peers' terms
# ------------------------------------------------------------------------------------------------
_KNOWN = {"temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon", "eta", "repetition_penalty",
          "frequency_penalty", "presence_penalty", "no_repeat_ngram_size", "logit_bias", "max_new_tokens",
          "min_new_tokens", "eos_token_id", "pad_token_id", "num_beams", "length_penalty", "early_stopping",
          "num_return_sequences", "seed", "stop"}


def _check_params(params: dict) -> dict:
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of generation settings, got {type(params).__name__}")
    unknown = set(params) - _KNOWN
    if unknown:
        raise ValueError(f"unknown generation settings {sorted(unknown)}; known: {sorted(_KNOWN)}")
    LogitsPipeline.from_params(**{k: v for k, v in params.items() if k in (
        "temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon", "eta", "repetition_penalty",
        "frequency_penalty", "presence_penalty", "no_repeat_ngram_size", "logit_bias")})  # validates ranges
    return {k: v for k, v in params.items() if v is not None}


def to_generation_config(params: dict):
    """infergen settings -> a transformers ``GenerationConfig`` that decodes the same way.

    ``temperature`` 0 (or absent sampling) means greedy (``do_sample=False``); any other temperature
    samples. ``logit_bias`` {id: bias} becomes ``sequence_bias`` {(id,): bias}. ``seed`` is not part
    of a ``GenerationConfig`` (call ``torch.manual_seed`` before ``generate``); ``stop`` strings become
    ``stop_strings`` (``generate`` then also needs ``tokenizer=``). transformers has no frequency or
    presence penalty: asking for one raises ``ValueError``.
    """
    from transformers import GenerationConfig

    p = _check_params(params)
    for name in ("frequency_penalty", "presence_penalty"):
        if p.get(name, 0) != 0:
            raise ValueError(f"transformers has no {name} (OpenAI/vLLM semantics); use repetition_penalty or "
                             "infergen/vLLM")
    temperature = p.get("temperature", 1.0)
    beams = p.get("num_beams", 1)
    do_sample = temperature != 0
    kw = {"do_sample": do_sample, "num_beams": beams}
    if do_sample:
        kw.update(temperature=float(temperature), top_k=p.get("top_k") or 0, top_p=float(p.get("top_p", 1.0)))
        for name in ("min_p", "typical_p"):
            if name in p:
                kw[name] = float(p[name])
        if p.get("epsilon"):
            kw["epsilon_cutoff"] = float(p["epsilon"])
        if p.get("eta"):
            kw["eta_cutoff"] = float(p["eta"])
    if p.get("repetition_penalty", 1.0) != 1.0:
        kw["repetition_penalty"] = float(p["repetition_penalty"])
    if p.get("no_repeat_ngram_size"):
        kw["no_repeat_ngram_size"] = int(p["no_repeat_ngram_size"])
    if p.get("logit_bias"):
        kw["sequence_bias"] = {(int(t),): float(b) for t, b in p["logit_bias"].items()}
    for name in ("max_new_tokens", "min_new_tokens", "pad_token_id", "num_return_sequences", "length_penalty",
                 "early_stopping"):
        if name in p:
            kw[name] = p[name]
    if "eos_token_id" in p:
        kw["eos_token_id"] = p["eos_token_id"]
    if p.get("stop"):
        kw["stop_strings"] = [p["stop"]] if isinstance(p["stop"], str) else list(p["stop"])
    return GenerationConfig(**kw)


def to_vllm_sampling_params(params: dict) -> dict:
    """infergen settings -> keyword arguments for vLLM's ``SamplingParams`` (a plain dict: no vLLM needed).

    ``vllm.SamplingParams(**to_vllm_sampling_params(p))``. Greedy is ``temperature=0`` in both.
    ``max_new_tokens`` -> ``max_tokens``, ``eos_token_id`` -> ``stop_token_ids``, ``stop`` -> ``stop``,
    ``top_k`` None -> 0 (vLLM: 0 or -1 means "all tokens"). vLLM has no typical/epsilon/eta sampling nor
    n-gram bans, and beam search has its own entry point (``LLM.beam_search``): those raise ``ValueError``.
    """
    p = _check_params(params)
    for name, unit in (("typical_p", 1.0), ("epsilon", 0.0), ("eta", 0.0), ("no_repeat_ngram_size", 0)):
        if p.get(name, unit) != unit:
            raise ValueError(f"vLLM's SamplingParams has no {name}")
    if p.get("num_beams", 1) != 1:
        raise ValueError("vLLM runs beam search through LLM.beam_search(BeamSearchParams(beam_width=...)), "
                         "not SamplingParams")
    out = {"temperature": float(p.get("temperature", 1.0)), "top_p": float(p.get("top_p", 1.0)),
           "top_k": int(p.get("top_k") or 0), "min_p": float(p.get("min_p", 0.0)),
           "repetition_penalty": float(p.get("repetition_penalty", 1.0)),
           "frequency_penalty": float(p.get("frequency_penalty", 0.0)),
           "presence_penalty": float(p.get("presence_penalty", 0.0)),
           "n": int(p.get("num_return_sequences", 1))}
    if "max_new_tokens" in p:
        out["max_tokens"] = int(p["max_new_tokens"])
    if "min_new_tokens" in p:
        out["min_tokens"] = int(p["min_new_tokens"])
    if "seed" in p:
        out["seed"] = int(p["seed"])
    if "eos_token_id" in p:
        eos = p["eos_token_id"]
        out["stop_token_ids"] = [int(e) for e in (eos if isinstance(eos, (list, tuple, set)) else [eos])]
    if p.get("stop"):
        out["stop"] = [p["stop"]] if isinstance(p["stop"], str) else list(p["stop"])
    if p.get("logit_bias"):
        out["logit_bias"] = {int(t): float(b) for t, b in p["logit_bias"].items()}
    return out
