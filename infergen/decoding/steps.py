"""The steps every decoder shares, each in one place (the gpt-fast shape)::

    logits = prefill(model, input_ids, cache, mask)          # the whole prompt at once, fills the cache
    for step in range(max_new_tokens):
        tokens = sampler(rows.constrain(logits), *history)   # constraint, processors, argmax or a sample
        tokens, all_done = rows.commit(tokens, logits)       # log-prob, finished rows, history, streamer
        if all_done: break
        logits = decode_one(model, tokens, cache)            # one token per row, reusing the cache

* :func:`prefill`, :func:`decode_one` and :func:`decode_many` are the only ways a decoder calls the model;
  ``decode_one`` is the single decode step a compiled or otherwise faster model speeds up for every
  decoder at once; ``decode_many`` feeds several tokens per row (speculative verification, MCTS paths).
* :class:`Sampler` chooses tokens from logits under one :class:`~infergen.params.SamplingParams`.
* :class:`Rows` is the per-row bookkeeping of a generation: which rows finished and why
  (:class:`FinishReason`), the committed tokens and their log-probabilities under the model
  (:func:`token_logprobs`), the token history the penalties read, stop criteria, constraints, streaming.
  :meth:`Rows.commit` is the one function that commits chosen tokens, for every decoder and the batcher.

Greedy search and sampling are :func:`decode_n_tokens` over these; beam search, contrastive search,
speculative decoding, MCTS and the continuous batcher use the same pieces around their own algorithm.
"""
from __future__ import annotations

from enum import Enum
from typing import Callable, Iterator

import torch

from ..constraints.base import as_row_constraints
from ..models.protocol import ModelOutput
from ..params import SamplingParams
from ..pipeline import LogitsPipeline
from ..processors import check_finite_row, safe_probs, sample_from_logits
from .base import GenerationOutput, Setup


class FinishReason(str, Enum):
    """Why a row stopped: one enum for every decoder (a str, so it compares equal to ``"eos"`` etc.)."""

    LENGTH = "length"                  #: ``max_new_tokens`` reached
    EOS = "eos"                        #: the row produced one of its end-of-sequence ids
    STOP = "stop"                      #: a stopping criterion (e.g. a stop string) said so
    CONSTRAINT = "constraint"          #: its constraint is complete: nothing but the end can follow
    NO_VALID_TOKEN = "no_valid_token"  #: its constraint allowed no token at all
    CLOSED = "closed"                  #: complete, after budget closing refused the model's choice
    BUDGET = "budget"                  #: no completion of its constraint fits in the tokens left
    CANCELLED = "cancelled"            #: the client cancelled the request (the batcher)

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:  # lists of reasons print as ['eos', 'length'], as plain strings would
        return repr(self.value)


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)`` [..., V] in float32: the model's log-probabilities (what beams score)."""
    return torch.log_softmax(logits.float(), -1)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[token]``: the model's log-probability of each chosen token (the one place
    that computes it). ``logits`` [..., V], ``tokens`` [...] -> [...] in float32."""
    return log_probs(logits).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def prefill(model, input_ids: torch.Tensor, cache, attention_mask: torch.Tensor | None = None, *,
            hidden: bool = False) -> ModelOutput:
    """Run the (left-padded) prompts [B, T] through ``model``, filling ``cache``; the last position's output."""
    return model(input_ids, cache, attention_mask=attention_mask, hidden=hidden)


def decode_one(model, tokens: torch.Tensor, cache, attention_mask: torch.Tensor | None = None, *,
               hidden: bool = False) -> ModelOutput:
    """One decode step: ``tokens`` [B] (one new token per row) or [B, 1] through ``model``, reusing ``cache``.
    ``attention_mask`` [B, 1] False marks rows whose token is padding (a batcher's free slots)."""
    return model(tokens.reshape(-1, 1), cache, attention_mask=attention_mask, hidden=hidden)


def decode_many(model, tokens: torch.Tensor, cache) -> ModelOutput:
    """Several new tokens per row at once, ``tokens`` [B, t], reusing ``cache``; the logits of every
    position ([B, t, V]): verifying speculative drafts, expanding a tree path (MCTS)."""
    return model(tokens, cache, logits="all")


def last_logits(out: ModelOutput) -> torch.Tensor:
    """The next-token logits [B, V] of a forward pass, in float32 (the dtype processors compute in)."""
    return out.logits[:, -1].float()


def draw(logits: torch.Tensor, generator=None) -> torch.Tensor:
    """One token per row from ``softmax(logits)`` [B, V]. ``generator`` is None, a ``torch.Generator``,
    or a list of them, one per row (each row then draws from its own, whatever it is batched with)."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != logits.shape[0]:
            raise ValueError(f"generator holds {len(generator)} generators for {logits.shape[0]} rows")
        return torch.cat([sample_from_logits(logits[i:i + 1], generator=g) for i, g in enumerate(generator)])
    return sample_from_logits(logits, generator=generator)


class Sampler:
    """Chooses the next token of every row from the model's logits under one :class:`SamplingParams`.

    ``pipeline`` defaults to ``LogitsPipeline.from_params(params)``; ``generator`` as in :func:`draw`. Whether it is greedy
    is the pipeline's answer (``pipeline.is_greedy``, by the one rule of :func:`infergen.params.is_greedy`);
    greedy settings with nothing else to apply take the argmax directly (``pipeline.is_plain_argmax``:
    no pipeline step, no random numbers).
    """

    def __init__(self, params: SamplingParams, pipeline: LogitsPipeline | None = None, generator=None):
        self.params, self.generator = params, generator
        self.pipeline = pipeline if pipeline is not None else LogitsPipeline.from_params(params)
        self.greedy = self.pipeline.is_greedy

    def process(self, logits: torch.Tensor, prompt_ids: torch.Tensor | None = None,
                generated_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The logits [..., V] after the pipeline (the history as in :meth:`__call__`)."""
        return logits if self.pipeline.is_plain_argmax else self.pipeline(
            logits.reshape(-1, logits.shape[-1]), prompt_ids, generated_ids).view(logits.shape)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """The distribution [..., V] tokens are drawn from (float32): softmax of :meth:`process`."""
        return safe_probs(self.process(logits).reshape(-1, logits.shape[-1])).view(logits.shape)

    def choose(self, processed: torch.Tensor, generator=None) -> torch.Tensor:
        """Tokens [...] from already processed logits [..., V]: the argmax, or one draw per row."""
        flat = processed.reshape(-1, processed.shape[-1])
        tokens = check_finite_row(flat).argmax(-1) if self.pipeline.is_plain_argmax else draw(
            flat, self.generator if generator is None else generator)
        return tokens.view(processed.shape[:-1])

    def __call__(self, logits: torch.Tensor, prompt_ids: torch.Tensor | None = None,
                 generated_ids: torch.Tensor | None = None, generator=None) -> torch.Tensor:
        """Tokens [B] for logits [B, V]; ``prompt_ids`` / ``generated_ids`` (``[B, n]``, -1 = padding) are
        the history the penalties read; ``generator`` (as in :func:`draw`) replaces the sampler's own for
        this call (a batcher whose rows change from step to step passes one per current row)."""
        return self.choose(self.process(logits, prompt_ids, generated_ids), generator)


def emit(streamer, tokens: torch.Tensor):
    """Send newly chosen tokens [B] to a streamer: a callable, or an object with ``put`` (transformers'
    ``TextStreamer`` style)."""
    if hasattr(streamer, "put"):
        streamer.put(tokens.detach().cpu())
    elif streamer is not None:
        streamer(tokens.detach())


def end_stream(streamer):
    """Tell a streamer with an ``end`` method that no more tokens will come."""
    if hasattr(streamer, "end"):
        streamer.end()


#: Finish reasons by code: tensors hold the code (``REASONS.index(reason)``), outputs the enum.
REASONS: tuple[FinishReason, ...] = tuple(FinishReason)


class StopStrings:
    """Stopping criterion: a row stops once its decoded new text contains any of ``stops``."""

    def __init__(self, tokenizer, stops):
        self.tokenizer, self.stops = tokenizer, list(SamplingParams(stop=stops).stop)

    def __call__(self, new_tokens: torch.Tensor) -> torch.Tensor:
        """BoolTensor [B]: which rows' decoded text (of ``new_tokens`` [B, n], -1 ignored) holds a stop string."""
        texts = [self.tokenizer.decode([t for t in row if t >= 0], skip_special_tokens=True)
                 for row in new_tokens.tolist()]
        return torch.tensor([any(s in text for s in self.stops) for text in texts], dtype=torch.bool)

    def cut(self, text: str) -> str:
        """The text up to (not including) the first stop string."""
        return text[:min([text.find(s) for s in self.stops if s in text], default=len(text))]

    def safe_prefix(self, text: str) -> str:
        """The part of a still-growing ``text`` that no later token can change: cut at a stop string, and
        without a tail that could be the start of one (it may yet become a stop string)."""
        text = self.cut(text)
        hold = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        return text[:len(text) - hold]


class Rows:
    """Per-row state of a generation over ``setup``'s batch, and :meth:`commit`, which advances it.

    A row is finished at its own EOS (``"eos"``), when ``stopping(generated_ids) -> BoolTensor [B]`` says
    so (``"stop"``), when its constraint is complete (``"constraint"``; ``"closed"`` if budget closing had
    to steer it there) or allows no token at all (``"no_valid_token"``; ``"budget"`` when no completion fits
    in the tokens left), or after its limit of tokens (``"length"``: ``setup.max_new_tokens``, or the one
    :meth:`reset` gives it); every later token of that row is ``setup.pad_token_id`` with
    log-probability 0. The generated ids (the history the penalties and ``stopping`` read) are always
    kept, in a device buffer. ``constraint`` (see :mod:`infergen.constraints`: one constraint, one per
    row, or None) is per-row state that :meth:`constrain` applies to the logits and :meth:`commit` advances.

    Everything lives in tensors on the rows' device (buffers of ``setup.max_new_tokens`` columns), so a
    commit never synchronises with the host; a batcher reuses a row for a new request with :meth:`reset`
    and commits only the rows that hold requests (``commit(..., rows=index)``).
    """

    def __init__(self, setup: Setup, *, stopping: Callable | None = None, streamer=None, constraint=None):
        B, dev, n = setup.input_ids.shape[0], setup.input_ids.device, setup.max_new_tokens
        self.setup, self.stopping, self.streamer = setup, stopping, streamer
        # budget closing (infergen.constraints.budget): a constrained row finishes complete within its
        # limit n; a RowConstraints of the caller's keeps its own budget (as_row_constraints ignores n)
        self.constraint = as_row_constraints(constraint, B, n)
        self.prompt_ids = setup.prompt_ids_for_penalties
        self.limit = torch.full((B,), n, device=dev)                       # tokens each row may commit
        self.ids = torch.full((B, n), setup.pad_token_id, dtype=torch.long, device=dev)  # committed tokens
        self.lp = torch.zeros(B, n, device=dev)                                            # and their log-probs
        self.history = torch.full((B, n), -1, dtype=torch.long, device=dev)  # -1 once a row has finished
        self.count = torch.zeros(B, dtype=torch.long, device=dev)            # tokens committed per row
        self.done = torch.zeros(B, dtype=torch.bool, device=dev)
        self.reason = torch.zeros(B, dtype=torch.long, device=dev)           # REASONS codes (0 = length)
        self.length = torch.zeros(B, dtype=torch.long, device=dev)           # real new tokens, when done
        self.steps = 0                                                        # columns committed (fixed batch)
        if self.constraint is not None:  # a pattern complete before any token (regex="") ends at once
            self.finish(self.constraint.complete(dev), FinishReason.CONSTRAINT)

    def generated_ids(self) -> torch.Tensor | None:
        """[B, n] generated ids, -1 after a row finished (the processors ignore -1); None before any."""
        return self.history[:, :self.steps] if self.steps else None

    def constrain(self, logits: torch.Tensor, row: int | None = None) -> torch.Tensor:
        """The logits with every token the rows' constraints forbid set to ``-inf`` (the first processor,
        so that truncation rules choose among allowed tokens); unchanged without a constraint. ``row``:
        the one row that ``logits`` [1, V] belong to, when they are not every row's (a batcher's admission)."""
        return logits if self.constraint is None else self.constraint.mask(logits, row)

    def commit(self, tokens: torch.Tensor, logits: torch.Tensor | None = None, logprobs: torch.Tensor | None = None,
               *, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, bool]:
        """Commit the chosen ``tokens`` [n], chosen from the model's ``logits`` [n, V] (or give the model's
        ``logprobs`` [n] of the tokens directly), one for each row of ``rows`` (default: every row).

        Records each token's log-probability, finishes rows (EOS, stop criterion, constraint, limit),
        keeps the history, advances the constraints and streams the tokens. Returns the committed tokens
        (padding for rows that had finished) and whether every row is done.
        """
        if self.constraint is not None:  # a row whose constraint allows nothing ends before this token
            dead, dev = self.constraint.dead(self.done.device), self.done.device
            self.finish(dead & self.constraint.no_fit(dev), FinishReason.BUDGET)
            self.finish(dead, FinishReason.NO_VALID_TOKEN)
        idx = torch.arange(len(self.done), device=self.done.device) if rows is None else rows
        done, at = self.done[idx], self.count[idx]
        if logprobs is None:
            assert logits is not None, "commit needs the logits or the logprobs of the chosen tokens"
            logprobs = token_logprobs(logits, tokens)
        tokens = tokens.masked_fill(done, self.setup.pad_token_id)
        self.ids[idx, at], self.lp[idx, at] = tokens, logprobs.float().masked_fill(done, 0.0)
        self.history[idx, at] = tokens.masked_fill(done, -1)
        self.count[idx] += 1
        self.steps = self.steps + 1 if rows is None else self.ids.shape[1]
        # the step over every row: which rows hit EOS, which moved, and their tokens (padding where none)
        hit, moved = torch.zeros_like(self.done), torch.zeros_like(self.done)
        every = torch.full_like(self.count, self.setup.pad_token_id)
        hit[idx], moved[idx], every[idx] = torch.isin(tokens, self.setup.eos), ~done, tokens
        self.finish(hit, FinishReason.EOS, closing=True)  # closed: budget closing forced the EOS
        if self.stopping is not None:
            self.finish(self.stopping(self.generated_ids()).to(self.done.device), FinishReason.STOP)
        if self.constraint is not None:
            self.constraint.advance(every, active=moved)
            self.finish(self.constraint.complete(self.done.device), FinishReason.CONSTRAINT, closing=True)
        self.finish(self.count >= self.limit, FinishReason.LENGTH)
        emit(self.streamer, tokens)
        return tokens, bool(self.done.all())

    def finish(self, rows: torch.Tensor, reason: FinishReason, closing: bool = False):
        """Mark ``rows`` (BoolTensor [B]) that are not finished yet as finished now, for ``reason``.
        ``closing=True``: those among them that budget closing steered there (the constraint's ``closed``:
        the model wanted to go on) finish ``"closed"`` instead -- the one place that decides it."""
        if closing and self.constraint is not None:
            self.finish(rows & self.constraint.closed(self.done.device), FinishReason.CLOSED)
        rows = rows & ~self.done
        self.reason = torch.where(rows, REASONS.index(reason), self.reason)
        self.length = torch.where(rows, self.count, self.length)
        self.done = self.done | rows

    def reset(self, row: int, prompt: list[int], limit: int, constraint=None):
        """Make ``row`` hold a new request (a batcher's admission): ``prompt`` ids, at most ``limit`` tokens,
        its own ``constraint`` (a Constraint or None; the batcher's Rows is made with
        ``constraint=RowConstraints([None] * B)``), which finishes the row at once if it is complete."""
        self.prompt_ids[row] = -1
        self.prompt_ids[row, :len(prompt)] = torch.tensor(prompt, device=self.prompt_ids.device)
        self.ids[row], self.lp[row], self.history[row] = self.setup.pad_token_id, 0.0, -1
        self.count[row], self.done[row], self.reason[row], self.limit[row] = 0, False, 0, limit
        if self.constraint is not None:  # its own state and budget; complete before any token: done at once
            self.constraint.reset(row, None if constraint is None else constraint.start(), limit)
            self.finish(self.constraint.complete(self.done.device), FinishReason.CONSTRAINT)

    def result(self, row: int) -> tuple[list[int], list[float], FinishReason]:
        """Row ``row``'s real tokens, their log-probabilities and its finish reason (host values)."""
        n = int(self.length[row] if self.done[row] else self.count[row])
        return self.ids[row, :n].tolist(), self.lp[row, :n].tolist(), REASONS[int(self.reason[row])]

    def output(self, return_dict: bool, **extra):
        """The decoder's return value: sequences [B, T + n], or a :class:`GenerationOutput`."""
        end_stream(self.streamer)
        setup, n = self.setup, self.steps
        sequences = torch.cat([setup.input_ids, self.ids[:, :n]], 1)
        if not return_dict:
            return sequences
        return GenerationOutput(sequences=sequences, logprobs=self.lp[:, :n], prompt_length=setup.input_ids.shape[1],
                                finish_reason=[REASONS[r] for r in self.reason.tolist()],
                                lengths=torch.where(self.done, self.length, n).tolist(), **extra)


def decode_n_tokens(model, cache, logits: torch.Tensor, n: int, sampler: Sampler,
                    rows: Rows) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The autoregressive loop: choose, commit, decode one; yields ``(tokens [B], logprobs [B])`` per step.

    ``logits`` [B, V] are the prefill's next-token logits; the loop ends after ``n`` tokens or when every
    row is finished (no forward pass is spent after the last token).
    """
    with torch.inference_mode():
        for step in range(n):
            chosen = sampler(rows.constrain(logits), rows.prompt_ids, rows.generated_ids())
            tokens, all_done = rows.commit(chosen, logits)
            yield tokens, rows.lp[:, rows.steps - 1]
            if all_done or step == n - 1:
                return
            logits = last_logits(decode_one(model, tokens, cache))
