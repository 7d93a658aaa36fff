"""Serving at scale: continuous batching against static batching.

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
wasted -- but the scheduling idea is this one. As in such an engine, each :class:`Request` carries its
own settings (a :class:`~infergen.SamplingParams`: seed and stop strings included) and constraint, and
may be cancelled; whatever it is batched with, it decodes exactly the tokens it decodes alone.

:func:`infergen.bench.serving.static_batching` (a benchmark companion) is the baseline, and
:func:`infergen.bench.serving.compare_batching` measures both on the same mixed-length workload
(``python -m infergen.bench --sections serving``).

The same settings in transformers' and vLLM's terms: :mod:`infergen.interop.mappings` (a companion).
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import torch

from ._validation import check_input_ids, check_number
from .cache import RowCache, require
from .constraints.base import Constraint, RowConstraints, as_row_constraints
from .decoding.base import Setup, make_generator, special_ids
from .decoding.steps import FinishReason, Rows, Sampler, StopStrings, decode_one, last_logits, prefill
from .models.hf import as_model
from .params import SamplingParams, setting

__all__ = ["ContinuousBatcher", "Request"]


@dataclass
class Request:
    """One generation request and, after serving, its result.

    ``prompt``: token ids (a list or a 1-D tensor, no padding). ``max_new_tokens``: its own limit.
    ``arrival``: when it arrives, in decode steps of the batcher's clock (0 = at the start). ``seed``: makes
    its sampling reproducible whatever it is batched with (default: its params'). ``params``: its own
    :class:`~infergen.SamplingParams`, stop strings included, as vLLM takes one per request (default: the
    batcher's). ``constraint``: its own (:func:`infergen.constraints.make_constraint`). ``cancel_at``: the
    step at which its client cancels it (simulated, as ``arrival``; :meth:`ContinuousBatcher.cancel` is live).
    Filled by the batcher: ``tokens`` (generated ids, EOS included), ``logprobs`` (model log-probability
    of each), ``finish_reason`` (a :class:`~infergen.decoding.steps.FinishReason`: ``"eos"``, ``"length"``, ``"stop"`` (a stop
    string), ``"cancelled"`` (its tokens so far), or its constraint's ``"constraint"``, ``"closed"``, ``"budget"``,
    ``"no_valid_token"``), ``text`` (with the batcher's tokenizer, cut before a stop string as
    :func:`infergen.generate` cuts it), ``admitted_step``/``finished_step`` (clock), ``latency_s`` (wall
    seconds from the start of serving to its last token).
    """
    prompt: list
    max_new_tokens: int = 64
    arrival: int = 0
    seed: int | None = None
    id: object = None
    params: SamplingParams | None = None
    constraint: Constraint | None = None
    cancel_at: int | None = None
    tokens: list = field(default_factory=list)
    logprobs: list = field(default_factory=list)
    finish_reason: str | None = None
    text: str | None = None
    admitted_step: int | None = None
    finished_step: int | None = None
    latency_s: float | None = None

    def __post_init__(self):
        prompt = self.prompt
        if not isinstance(prompt, torch.Tensor):
            if not isinstance(prompt, (list, tuple)) or not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
                raise TypeError(f"prompt must be a list of integer token ids or a 1-D tensor, got {prompt!r}")
            prompt = torch.tensor(list(prompt), dtype=torch.long)
        if prompt.dim() != 1:
            raise ValueError(f"prompt must be a 1-D sequence of token ids, got shape {tuple(prompt.shape)}")
        self.prompt = check_input_ids(prompt, "prompt")[0].tolist()
        check_number("max_new_tokens", self.max_new_tokens, low=1, integer=True)
        check_number("arrival", self.arrival, low=0, integer=True)
        check_number("cancel_at", self.cancel_at, low=0, integer=True, allow_none=True)
        setting("seed").check(self.seed)
        _one_row(SamplingParams.resolve(self.params), "params")
        as_row_constraints(self.constraint, 1)  # checks it: a Constraint (make_constraint(...)) or None


def _one_row(params: SamplingParams, name: str) -> SamplingParams:
    """``params`` if every setting is one number: a request is one row, whatever rows it is batched with."""
    if tensors := [k for k, v in vars(params).items() if isinstance(v, torch.Tensor)]:
        raise TypeError(f"{name} must hold one value per setting (a request is one row), got a tensor for {tensors}")
    return params


class ContinuousBatcher:
    """Serve :class:`Request` objects with continuous batching (see the module docstring).

    ``model``: infergen's native model (its :class:`~infergen.cache.KVCache` provides the row slots).
    ``max_batch``: rows decoded together. ``max_len``: columns of the shared cache (default: twice
    the longest request, at most the model's context). The sampling settings (``params`` and/or keywords:
    ``temperature`` -- 0, the default, is greedy --, ``top_k``, ``top_p``, penalties, ``stop``, ...) are
    those of every request without ``params`` of its own; ``eos_token_id`` defaults to the model's.
    ``tokenizer`` (transformers') decodes each request's ``text`` and is needed for stop strings.
    """

    def __init__(self, model, max_batch: int = 8, max_len: int | None = None, *, eos_token_id=None,
                 pad_token_id=None, params: SamplingParams | None = None, temperature=None, tokenizer=None,
                 **settings):
        self.model = as_model(model)
        check_number("max_batch", max_batch, low=1, integer=True)
        check_number("max_len", max_len, low=2, high=self.model.max_context, integer=True, allow_none=True)
        self.max_batch, self.max_len = int(max_batch), max_len
        temperature = 0.0 if params is None and temperature is None else temperature  # serving defaults to greedy
        self.params = _one_row(SamplingParams.resolve(params, temperature=temperature, **settings), "params")
        if tokenizer is not None and not callable(getattr(tokenizer, "decode", None)):
            raise TypeError(f"tokenizer must be a transformers tokenizer (with decode), got {type(tokenizer).__name__}")
        self.eos, self.pad = special_ids(self.model, eos_token_id, pad_token_id)
        self.tokenizer, self.stats = tokenizer, dict[str, float]()
        self.serving: dict[object, Request] = {}  # the requests of the current run, by id (what cancel names)

    def cancel(self, request_id):
        """Cancel the request ``request_id`` of the current (or last) :meth:`run`, from another thread or
        between its steps: it finishes ``"cancelled"`` with its tokens so far, its slot free at the next step
        (a finished request is left as it is)."""
        if request_id not in self.serving:
            raise ValueError(f"request_id {request_id!r} names no request of the run (known: {list(self.serving)[:8]})")
        self.serving[request_id].cancel_at = 0

    def run(self, requests: list[Request]) -> list[Request]:
        """Serve every request; returns them (same objects, same order) with their results filled in.

        The loop is the decoders' own: :func:`~infergen.prefill` (each request alone),
        :func:`~infergen.decode_one` (every slot at once), each request's ``Sampler`` (the occupied slots
        grouped by their settings) and :meth:`Rows.commit <infergen.Rows.commit>` over the occupied slots.
        A request's constraint is its slot's in the ``Rows`` (:meth:`Rows.reset <infergen.Rows.reset>` at
        admission): :meth:`Rows.constrain <infergen.Rows.constrain>` masks the row and ``commit`` ends and
        advances it, as for every decoder; its stop strings end it, ``cancel_at`` retires it.
        """
        requests = list(requests)
        for r in requests:
            if not isinstance(r, Request):
                raise TypeError(f"requests must be infergen.serving.Request objects, got {type(r).__name__}")
            r.tokens, r.logprobs, r.finish_reason, r.text = [], [], None, None
        self.serving = {r.id: r for r in requests if r.id is not None}
        if len(self.serving) < len(named := [r.id for r in requests if r.id is not None]):
            raise ValueError(f"request ids must be unique (cancel names a request by its id), got {named}")
        if not requests:
            return requests
        model, B, device = self.model, self.max_batch, self.model.device
        vocab, context = model.config.vocab_size, model.max_context
        max_len = self.max_len or min(context, 2 * max(len(r.prompt) + r.max_new_tokens for r in requests))
        for r in requests:
            if len(r.prompt) + r.max_new_tokens > max_len:
                raise ValueError(f"request {r.id!r} needs {len(r.prompt) + r.max_new_tokens} columns (prompt "
                                 f"{len(r.prompt)} + max_new_tokens {r.max_new_tokens}) but max_len is {max_len} "
                                 f"(the model's context: {context} tokens)")
            if min(r.prompt) < 0 or max(r.prompt) >= vocab:
                raise ValueError(f"request {r.id!r} has token ids outside [0, {vocab - 1}]")
        # each request's Sampler (shared by equal settings), its generator (its seed, or its params'), its stops
        samplers: dict[str, Sampler] = {}
        plan = {id(r): self._plan(r, samplers, device) for r in requests}
        # one Rows row per slot, reset for each request it holds (room for the longest prompt; no token yet)
        free = torch.zeros(B, max(len(r.prompt) for r in requests), dtype=torch.long, device=device)
        setup = Setup(model, free, free.bool(), torch.tensor(self.eos, dtype=torch.long, device=device),
                      self.pad, max(r.max_new_tokens for r in requests))
        pending = deque(sorted(requests, key=lambda r: r.arrival))
        slots: list[Request | None] = [None] * B

        def stopping(generated: torch.Tensor) -> torch.Tensor:
            """Rows.commit's stopping criterion: the rows whose request's stop strings are in its text (on
            the host: commit moves it to the rows' device; ``generated[i, None]`` is row ``i`` as ``[1, n]``)."""
            stops = [None if req is None else plan[id(req)][2] for req in slots]
            return torch.tensor([s is not None and bool(s(generated[i, None])) for i, s in enumerate(stops)])

        # each slot's constraint is its request's, set at admission (Rows.reset)
        rows = Rows(setup, stopping=stopping if any(p[2] for p in plan.values()) else None,
                    constraint=RowConstraints([None] * B) if any(r.constraint for r in requests) else None)
        last = torch.full((B,), self.pad, dtype=torch.long, device=device)
        cache = require(model.new_cache(B, max_len), RowCache, "ContinuousBatcher")
        step, started = 0, time.perf_counter()
        self.stats = stats = dict[str, float](decode_steps=0, busy_row_steps=0, prefills=0, dropped_columns=0,
                                              max_len=max_len)  # (filled in as it runs)

        def retire(req, row: int | None, reason: FinishReason | None = None):
            """``req`` is finished (``reason``, else its row's): fill in its result, free its slot ``row``."""
            if row is not None:
                req.tokens, req.logprobs, got = rows.result(row)
                slots[row] = None
                cache.clear_row(row)
            req.finish_reason, req.finished_step, req.latency_s = reason or got, step, time.perf_counter() - started
            if self.tokenizer is not None:  # the text, cut before the first stop string (as generate cuts it)
                text = self.tokenizer.decode(req.tokens, skip_special_tokens=True)
                req.text = text if (stops := plan[id(req)][2]) is None else stops.cut(text)

        def choose_and_commit(logits: torch.Tensor, masked: torch.Tensor, occupied: list[int]):
            """Each request's Sampler on its row of the ``masked`` logits, Rows.commit for the slots
            ``occupied`` (their ``logits``: constraints end and advance there); retire the finished."""
            idx, groups = torch.tensor(occupied, device=device), dict[Sampler, list[int]]()
            for j, row in enumerate(occupied):
                groups.setdefault(plan[id(slots[row])][0], []).append(j)
            tokens = torch.empty(len(occupied), dtype=torch.long, device=device)
            for sampler, js in groups.items():  # penalties read each request's own prompt and tokens (-1 = padding)
                sel = slice(None) if len(groups) == 1 else torch.tensor(js, device=device)  # (one group: no copy)
                tokens[sel] = sampler(masked[sel], rows.prompt_ids[idx[sel]], rows.history[idx[sel]],
                                      generator=[plan[id(slots[occupied[j]])][1] for j in js])
            rows.commit(tokens, logits, rows=idx)
            last[idx] = tokens
            for row in [row for row, done in zip(occupied, rows.done[idx].tolist()) if done]:
                retire(slots[row], row)

        with torch.inference_mode():
            while pending or any(s is not None for s in slots):
                for row, req in enumerate(slots):  # 0. retire the requests their clients cancelled
                    if req is not None and req.cancel_at is not None and req.cancel_at <= step:
                        retire(req, row, FinishReason.CANCELLED)
                # 1. admit the requests that have arrived into free slots; each chooses its first token
                while pending and pending[0].arrival <= step and None in slots:
                    req, row = pending.popleft(), slots.index(None)
                    # the slot stays free until the request is admitted; cancelled before it ran, or with its
                    # constraint complete before any token, it finishes here, with no forward pass
                    rows.reset(row, req.prompt, req.max_new_tokens, req.constraint)
                    if (cancelled := req.cancel_at is not None and req.cancel_at <= step) or rows.done[row]:
                        retire(req, None, FinishReason.CANCELLED if cancelled else FinishReason.CONSTRAINT)
                        continue
                    first = self._admit(req, row, cache)
                    stats["prefills"] += 1
                    req.admitted_step, slots[row] = step, req
                    choose_and_commit(first, rows.constrain(first, row), [row])
                occupied = [i for i, s in enumerate(slots) if s is not None]
                if not occupied:  # every admitted request finished at its first token, or none has arrived yet
                    step = max(step, pending[0].arrival) if pending else step  # idle until the next arrival
                    continue
                # 2. one decode step for every row (free rows are padding: masked, their output ignored)
                if cache.length == max_len:  # free the columns that hold only padding (every request fits)
                    stats["dropped_columns"] += cache.compact()
                active = torch.tensor([[s is not None] for s in slots], device=device)
                logits = last_logits(decode_one(model, last, cache, active))
                stats["decode_steps"] += 1
                stats["busy_row_steps"] += len(occupied)
                step += 1
                # 3. choose and commit each row's token; retire finished requests at once
                choose_and_commit(logits[occupied], rows.constrain(logits)[occupied], occupied)
        stats.update(seconds=time.perf_counter() - started, row_steps=B * stats["decode_steps"],
                     tokens=sum(len(r.tokens) for r in requests))
        stats["occupancy"] = stats["busy_row_steps"] / max(stats["row_steps"], 1)
        return requests

    def _plan(self, req: Request, samplers: dict, device) -> tuple[Sampler, torch.Generator | None, StopStrings | None]:
        """The Sampler of ``req``'s settings without seed and stop strings (from ``samplers``: requests with
        equal settings share one), its generator (its seed, else its params'), its stop strings (or None)."""
        p = self.params if req.params is None else req.params
        if p.stop and self.tokenizer is None:
            raise ValueError(f"request {req.id!r} has stop strings {p.stop}: they need a tokenizer "
                             "(ContinuousBatcher(..., tokenizer=...))")
        settings = p.replace(seed=None, stop=())
        sampler = samplers.setdefault(repr(settings), Sampler(settings))
        stops = StopStrings(self.tokenizer, p.stop) if p.stop else None
        return sampler, make_generator(p.seed if req.seed is None else req.seed, device=device), stops

    def _admit(self, req: Request, row: int, cache):
        """Prefill ``req`` alone, copy its keys/values into slot ``row``; returns its next-token logits."""
        T = len(req.prompt)
        if (pad := T - cache.length) > 0:  # the prompt is longer than the shared columns: pad every row
            cache.append_mask(torch.zeros(cache.batch_size, pad, dtype=torch.bool), pad)  # on the left
        alone = self.model.new_cache(1, T)
        logits = last_logits(prefill(self.model, torch.tensor([req.prompt], device=self.model.device), alone))
        cache.write_row(row, alone)
        return logits
