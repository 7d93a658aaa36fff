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
right-aligned at the current column (:meth:`~infergen.KVCache.write_row`); the columns before
its prompt are padding for that row, which the attention mask hides and the rotary positions skip
(a token's position counts the *real* tokens before it, so a request decodes exactly as if it were
alone). A finished request's slot is cleared (:meth:`~infergen.KVCache.clear_row`). When the
shared columns reach the end of the cache, padding is squeezed out and the freed columns reused
(:meth:`~infergen.KVCache.compact`). Production engines go further -- *paged* caches
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

from ._validation import check_input_ids, check_number
from .cache import require_ops
from .decoding.base import make_generator, special_ids
from .decoding.steps import Sampler, last_logits, prefill
from .models.hf import as_model
from .params import SETTINGS, SamplingParams, setting

__all__ = ["ContinuousBatcher", "Request", "compare_batching", "from_generation_config", "mixed_workload",
           "static_batching", "to_generation_config", "to_vllm_sampling_params"]


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
        prompt = self.prompt
        if not isinstance(prompt, torch.Tensor):
            if not isinstance(prompt, (list, tuple)) or not all(
                    isinstance(t, int) and not isinstance(t, bool) for t in prompt):
                raise TypeError(f"prompt must be a list of integer token ids or a 1-D tensor, got {prompt!r}")
            prompt = torch.tensor(list(prompt), dtype=torch.long)
        if prompt.dim() != 1:
            raise ValueError(f"prompt must be a 1-D sequence of token ids, got shape {tuple(prompt.shape)}")
        self.prompt = check_input_ids(prompt, "prompt")[0].tolist()
        check_number("max_new_tokens", self.max_new_tokens, low=1, integer=True)
        check_number("arrival", self.arrival, low=0, integer=True)
        setting("seed").check(self.seed)

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
                 pad_token_id=None, params: SamplingParams | None = None, temperature=None, **settings):
        self.model = as_model(model)
        check_number("max_batch", max_batch, low=1, integer=True)
        if max_len is not None:
            check_number("max_len", max_len, low=2, high=self.model.max_context, integer=True)
        self.max_batch, self.max_len = int(max_batch), max_len
        if params is None and temperature is None:
            temperature = 0.0  # serving defaults to greedy
        self.params = SamplingParams.resolve(params, temperature=temperature, **settings)
        if self.params.stop:
            raise ValueError("ContinuousBatcher serves token ids: stop strings need a tokenizer (use eos_token_id)")
        eos, self.pad = special_ids(self.model, eos_token_id, pad_token_id)
        self.eos = set(eos)
        self.stats = {}

    # -- choosing tokens ----------------------------------------------------------------------------
    def _choose(self, sampler: Sampler, logits: torch.Tensor, reqs: list, generators: dict) -> tuple[list, list]:
        """One token for each request of ``reqs`` from its row of ``logits`` [n, V] (the shared
        :class:`~infergen.decoding.steps.Sampler`, with each request's own history and generator)."""
        prompt_ids = generated_ids = None
        if sampler.uses_history:
            prompt_ids = _pad_rows([r.prompt for r in reqs], logits.device)
            generated_ids = _pad_rows([r.tokens for r in reqs], logits.device)
        tokens = sampler(logits, prompt_ids, generated_ids, generator=[generators.get(id(r)) for r in reqs])
        picked = torch.log_softmax(logits, -1).gather(-1, tokens[:, None]).squeeze(-1)
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
        sampler = Sampler(self.params)
        generators = {}  # each request draws from its own generator: its seed, or the params' seed
        for r in requests:
            seed = r.seed if r.seed is not None else self.params.seed
            if seed is not None:
                generators[id(r)] = make_generator(seed, device=device)
        pending = deque(sorted(requests, key=lambda r: r.arrival))
        slots: list[Request | None] = [None] * B
        last = torch.full((B,), self.pad, dtype=torch.long, device=device)
        cache = require_ops(model.new_cache(B, max_len), ("write_row",), "ContinuousBatcher")
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
                    tok, lp = self._choose(sampler, first, [req], generators)
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
                logits = last_logits(model(last[:, None], cache, attention_mask=active))
                stats["decode_steps"] += 1
                stats["row_steps"] += B
                stats["busy_row_steps"] += len(occupied)
                step += 1
                # 3. record each row's token; retire finished requests at once
                reqs = [slots[i] for i in occupied]
                tokens, lps = self._choose(sampler, logits[occupied], reqs, generators)
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

    def _admit(self, req: Request, row: int, cache, max_len: int):
        """Prefill ``req`` alone, copy its keys/values into slot ``row``; returns its next-token logits."""
        T = len(req.prompt)
        if cache.length < T:  # the prompt is longer than the shared columns: pad every row on the left
            if cache.length + (T - cache.length) > max_len:  # pragma: no cover  (T <= max_len is checked)
                raise ValueError("prompt does not fit the cache")
            cache.append_mask(torch.zeros(cache.batch_size, T - cache.length, dtype=torch.bool,
                                          device=cache.mask.device), T - cache.length)
        ids = torch.tensor([req.prompt], dtype=torch.long, device=self.model.device)
        alone = self.model.new_cache(1, T)
        logits = last_logits(prefill(self.model, ids, alone))
        cache.write_row(row, alone)
        return logits

    @staticmethod
    def _compact(cache, slots: list, stats: dict):
        """Free columns at the end of the shared cache (see :meth:`~infergen.KVCache.compact`)."""
        dropped = cache.compact()
        if dropped <= 0:  # pragma: no cover  (prevented: every request fits max_len)
            raise RuntimeError("the cache is full of real tokens; raise max_len")
        stats["dropped_columns"] += dropped


def _pad_rows(rows: list[list[int]], device) -> torch.Tensor:
    """Ragged id lists -> [n, max_len] with -1 padding (the processors' 'ignore me' id)."""
    width = max(1, max(len(r) for r in rows))
    return torch.tensor([r + [-1] * (width - len(r)) for r in rows], dtype=torch.long, device=device)


def static_batching(model, requests: list[Request], batch_size: int = 8, *, eos_token_id=None,
                    pad_token_id=None, params: SamplingParams | None = None, temperature=None,
                    **settings) -> list[Request]:
    """The baseline: serve ``requests`` in arrival order, ``batch_size`` at a time, each batch to the end.

    A batch runs until every row is finished or its *largest* ``max_new_tokens`` is reached; a row is
    then cut to its own limit. (Arrival times are ignored: all requests are taken as waiting.) Each row
    samples with its own generator (its request's seed), so a request's tokens do not depend on its
    batch.
    """
    from .decoding.sampling import generate_autoregressive

    check_number("batch_size", batch_size, low=1, integer=True)
    model = as_model(model)
    if params is None and temperature is None:
        temperature = 0.0  # serving defaults to greedy
    params = SamplingParams.resolve(params, temperature=temperature, **settings)
    eos_list, pad = special_ids(model, eos_token_id, pad_token_id)
    eos = set(eos_list)
    order = sorted(requests, key=lambda r: r.arrival)
    start = time.perf_counter()
    for i in range(0, len(order), batch_size):
        group = order[i:i + batch_size]
        width = max(len(r.prompt) for r in group)
        ids = torch.tensor([[pad] * (width - len(r.prompt)) + r.prompt for r in group], device=model.device)
        mask = torch.tensor([[0] * (width - len(r.prompt)) + [1] * len(r.prompt) for r in group], device=model.device)
        n = max(r.max_new_tokens for r in group)
        seeds = [r.seed if r.seed is not None else params.seed for r in group]
        generators = None if all(s is None for s in seeds) else [
            make_generator(s, device=model.device) or torch.Generator(device=model.device).manual_seed(
                int(torch.randint(0, 2**62, (1,)))) for s in seeds]
        out = generate_autoregressive(model, ids, n, attention_mask=mask, eos_token_id=eos_list, pad_token_id=pad,
                                      params=params.replace(seed=None), generator=generators, return_dict=True)
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
#: Generation settings that are not sampling settings (they belong to the call, not to SamplingParams).
CALL_SETTINGS = ("max_new_tokens", "min_new_tokens", "eos_token_id", "pad_token_id", "num_beams", "length_penalty",
                 "early_stopping", "num_return_sequences")
_SAMPLING_NAMES = tuple(s.name for s in SETTINGS)

#: infergen's sampling setting -> transformers' ``GenerationConfig`` field (None: transformers has none).
TRANSFORMERS_NAMES = {"logit_bias": "sequence_bias", "repetition_penalty": "repetition_penalty",
                      "frequency_penalty": None, "presence_penalty": None,
                      "no_repeat_ngram_size": "no_repeat_ngram_size", "temperature": "temperature",
                      "top_k": "top_k", "top_p": "top_p", "min_p": "min_p", "typical_p": "typical_p",
                      "epsilon": "epsilon_cutoff", "eta": "eta_cutoff", "seed": None, "stop": "stop_strings"}
#: infergen's sampling setting -> vLLM's ``SamplingParams`` field (None: vLLM has none).
VLLM_NAMES = {"logit_bias": "logit_bias", "repetition_penalty": "repetition_penalty",
              "frequency_penalty": "frequency_penalty", "presence_penalty": "presence_penalty",
              "no_repeat_ngram_size": None, "temperature": "temperature", "top_k": "top_k", "top_p": "top_p",
              "min_p": "min_p", "typical_p": None, "epsilon": None, "eta": None, "seed": "seed", "stop": "stop"}


def _split_settings(params) -> tuple[SamplingParams, dict]:
    """A dict of generation settings (or a SamplingParams) -> (SamplingParams, the call's other settings)."""
    if isinstance(params, SamplingParams):
        return params, {}
    if not isinstance(params, dict):
        raise TypeError(f"params must be a SamplingParams or a dict of generation settings, got "
                        f"{type(params).__name__}")
    unknown = set(params) - set(_SAMPLING_NAMES) - set(CALL_SETTINGS)
    if unknown:
        raise ValueError(f"unknown generation settings {sorted(unknown)}; known: "
                         f"{sorted(_SAMPLING_NAMES + CALL_SETTINGS)}")
    sampling = SamplingParams.from_kwargs(**{k: v for k, v in params.items() if k in _SAMPLING_NAMES})
    return sampling, {k: v for k, v in params.items() if k in CALL_SETTINGS and v is not None}


def to_generation_config(params):
    """infergen settings (a :class:`~infergen.params.SamplingParams` or a dict that may also hold
    :data:`CALL_SETTINGS`) -> a transformers ``GenerationConfig`` that decodes the same way.

    ``temperature`` 0 means greedy (``do_sample=False``); any other temperature samples. ``logit_bias``
    {id: bias} becomes ``sequence_bias`` {(id,): bias}. ``seed`` is not part of a ``GenerationConfig``
    (call ``torch.manual_seed`` before ``generate``); ``stop`` strings become ``stop_strings``
    (``generate`` then also needs ``tokenizer=``). Settings transformers lacks (frequency and presence
    penalties, :data:`TRANSFORMERS_NAMES`) raise ``ValueError``.
    """
    from transformers import GenerationConfig

    sampling, call = _split_settings(params)
    active = sampling.active()
    for name in active:
        if TRANSFORMERS_NAMES[name] is None and name != "seed":
            raise ValueError(f"transformers has no {name} (OpenAI/vLLM semantics); use repetition_penalty or "
                             "infergen/vLLM")
    do_sample = not sampling.is_greedy
    kw = {"do_sample": do_sample, "num_beams": call.get("num_beams", 1)}
    for name, value in active.items():
        target = TRANSFORMERS_NAMES[name]
        if target is None or (setting(name).sampling_only and not do_sample):
            continue
        if name == "logit_bias":
            value = {(int(t),): float(b) for t, b in value.items()}
        elif name == "stop":
            value = list(value)
        kw[target] = value
    if do_sample:
        kw.setdefault("temperature", float(sampling.temperature))
        kw.setdefault("top_k", 0)  # transformers' default is 50; infergen's is "off"
        kw.setdefault("top_p", 1.0)
    kw.update({k: v for k, v in call.items() if k != "num_beams"})
    return GenerationConfig(**kw)


def from_generation_config(config) -> SamplingParams:
    """A transformers ``GenerationConfig`` -> the :class:`~infergen.params.SamplingParams` that decodes the
    same way (the inverse of :func:`to_generation_config` for the settings both know)."""
    settings = {}
    for name, target in TRANSFORMERS_NAMES.items():
        value = getattr(config, target, None) if target else None
        if value is None:
            continue
        if name == "logit_bias":
            value = {int(k[0]): float(b) for k, b in value.items() if len(k) == 1}
        elif name == "top_k" and value == 0:
            continue  # 0 = off in both
        settings[name] = value
    if not getattr(config, "do_sample", False):
        settings = {k: v for k, v in settings.items() if not setting(k).sampling_only}
        settings["temperature"] = 0.0
    return SamplingParams.from_kwargs(**settings)


def to_vllm_sampling_params(params) -> dict:
    """infergen settings -> keyword arguments for vLLM's ``SamplingParams`` (a plain dict: no vLLM needed).

    ``vllm.SamplingParams(**to_vllm_sampling_params(p))``. Greedy is ``temperature=0`` in both.
    ``max_new_tokens`` -> ``max_tokens``, ``eos_token_id`` -> ``stop_token_ids``, ``top_k`` None -> 0
    (vLLM: 0 or -1 means "all tokens"). vLLM has no typical/epsilon/eta sampling nor n-gram bans
    (:data:`VLLM_NAMES`), and beam search has its own entry point (``LLM.beam_search``): those raise
    ``ValueError``.
    """
    sampling, call = _split_settings(params)
    active = sampling.active()
    for name in active:
        if VLLM_NAMES[name] is None:
            raise ValueError(f"vLLM's SamplingParams has no {name}")
    if call.get("num_beams", 1) != 1:
        raise ValueError("vLLM runs beam search through LLM.beam_search(BeamSearchParams(beam_width=...)), "
                         "not SamplingParams")
    out = {"temperature": float(sampling.temperature), "top_p": float(sampling.top_p),
           "top_k": int(sampling.top_k or 0), "min_p": float(sampling.min_p),
           "repetition_penalty": float(sampling.repetition_penalty),
           "frequency_penalty": float(sampling.frequency_penalty),
           "presence_penalty": float(sampling.presence_penalty), "n": int(call.get("num_return_sequences", 1))}
    if sampling.seed is not None:
        out["seed"] = int(sampling.seed)
    if sampling.stop:
        out["stop"] = list(sampling.stop)
    if sampling.logit_bias:
        out["logit_bias"] = {int(t): float(b) for t, b in sampling.logit_bias.items()}
    if "max_new_tokens" in call:
        out["max_tokens"] = int(call["max_new_tokens"])
    if "min_new_tokens" in call:
        out["min_tokens"] = int(call["min_new_tokens"])
    if "eos_token_id" in call:
        eos = call["eos_token_id"]
        out["stop_token_ids"] = [int(e) for e in (eos if isinstance(eos, (list, tuple, set)) else [eos])]
    return out
