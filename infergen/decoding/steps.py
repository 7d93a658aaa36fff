"""The steps every decoder shares, each in one place (the gpt-fast shape)::

    logits = prefill(model, input_ids, cache, mask)          # the whole prompt at once, fills the cache
    for step in range(max_new_tokens):
        tokens = sampler(rows.constrain(logits), *history)   # constraint, processors, argmax or a sample
        tokens, all_done = rows.commit(tokens, logits)       # log-prob, finished rows, history, streamer
        if all_done: break
        logits = decode_one(model, tokens, cache)            # one token per row, reusing the cache

* :func:`prefill` and :func:`decode_one` are the only two ways a decoder calls the model; ``decode_one``
  is the single decode step a compiled or otherwise faster model speeds up for every decoder at once.
* :class:`Sampler` chooses tokens from logits under one :class:`~infergen.params.SamplingParams`.
* :class:`Rows` is the per-row bookkeeping of a generation: which rows finished and why, the committed
  tokens and their log-probabilities under the model, the token history the penalties read, streaming.
  :meth:`Rows.commit` is the one function that commits a chosen column.

Greedy search and sampling are :func:`decode_n_tokens` over these; beam search, contrastive search,
speculative decoding, MCTS and the continuous batcher use the same pieces around their own algorithm.
"""
from __future__ import annotations

from enum import Enum
from typing import Callable, Iterator

import torch

from ..models.protocol import ModelOutput
from ..params import SamplingParams
from ..processors import LogitsPipeline, check_finite_row, sample_from_logits
from .base import GenerationOutput, Setup


class FinishReason(str, Enum):
    """Why a row stopped: one enum for every decoder (a str, so it compares equal to ``"eos"`` etc.)."""

    LENGTH = "length"                  #: ``max_new_tokens`` reached
    EOS = "eos"                        #: the row produced one of its end-of-sequence ids
    STOP = "stop"                      #: a stopping criterion (e.g. a stop string) said so
    CONSTRAINT = "constraint"          #: its constraint is complete: nothing but the end can follow
    NO_VALID_TOKEN = "no_valid_token"  #: its constraint allowed no token at all

    def __str__(self) -> str:
        return self.value


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[token]``: the model's log-probability of each chosen token (the one place
    that computes it). ``logits`` [..., V], ``tokens`` [...] -> [...] in float32."""
    return torch.log_softmax(logits.float(), -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def prefill(model, input_ids: torch.Tensor, cache, attention_mask: torch.Tensor | None = None, *,
            hidden: bool = False) -> ModelOutput:
    """Run the (left-padded) prompts [B, T] through ``model``, filling ``cache``; the last position's output."""
    return model(input_ids, cache, attention_mask=attention_mask, hidden=hidden)


def decode_one(model, tokens: torch.Tensor, cache, *, hidden: bool = False) -> ModelOutput:
    """One decode step: ``tokens`` [B] (one new token per row) or [B, 1] through ``model``, reusing ``cache``."""
    return model(tokens.reshape(-1, 1), cache, hidden=hidden)


def decode_many(model, tokens: torch.Tensor, cache, *, hidden: bool = False) -> ModelOutput:
    """Several new tokens per row at once, ``tokens`` [B, t], reusing ``cache``; the logits of every
    position ([B, t, V]): verifying speculative drafts, expanding a tree path (MCTS)."""
    return model(tokens, cache, logits="all", hidden=hidden)


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

    ``pipeline`` defaults to ``params.pipeline()``; ``generator`` as in :func:`draw`. Greedy settings
    with nothing else to apply take the argmax directly (no pipeline, no random numbers).
    """

    def __init__(self, params: SamplingParams, pipeline: LogitsPipeline | None = None, generator=None):
        self.params = params
        self.pipeline = pipeline if pipeline is not None else params.pipeline()
        self.generator = generator

    @property
    def uses_history(self) -> bool:
        return self.pipeline.uses_history

    def __call__(self, logits: torch.Tensor, prompt_ids: torch.Tensor | None = None,
                 generated_ids: torch.Tensor | None = None, generator=None) -> torch.Tensor:
        """Tokens [B] for logits [B, V]; ``prompt_ids`` / ``generated_ids`` (``[B, n]``, -1 = padding) are
        the history the penalties read; ``generator`` (as in :func:`draw`) replaces the sampler's own for
        this call (a batcher whose rows change from step to step passes one per current row)."""
        if self.pipeline.is_plain_argmax:
            check_finite_row(logits)
            return logits.argmax(-1)
        processed = self.pipeline(logits, prompt_ids=prompt_ids, generated_ids=generated_ids)
        return draw(processed, self.generator if generator is None else generator)


def emit(streamer, tokens: torch.Tensor):
    """Send newly chosen tokens [B] to a streamer: a callable, or an object with ``put`` (transformers'
    ``TextStreamer`` style)."""
    if streamer is None:
        return
    if hasattr(streamer, "put"):
        streamer.put(tokens.detach().cpu())
    else:
        streamer(tokens.detach())


def end_stream(streamer):
    if streamer is not None and hasattr(streamer, "end"):
        streamer.end()


class Rows:
    """Per-row state of a generation over ``setup``'s batch, and :meth:`commit`, which advances it.

    A row is finished at its own EOS (``"eos"``), when ``stopping(generated_ids) -> BoolTensor [B]`` says
    so (``"stop"``), or when its constraint is complete (``"constraint"``) or allows no token at all
    (``"no_valid_token"``); every later token of that row is ``setup.pad_token_id`` with log-probability
    0. ``keep_history`` keeps the generated ids for the penalties (kept anyway when there is a
    ``stopping`` criterion). ``constraint`` (see :mod:`infergen.constraints`: one constraint, one per
    row, or None) is per-row state that :meth:`constrain` applies to the logits and :meth:`commit`
    advances.
    """

    def __init__(self, setup: Setup, *, stopping: Callable | None = None, streamer=None,
                 keep_history: bool = False, constraint=None):
        B = setup.input_ids.shape[0]
        self.setup, self.stopping, self.streamer = setup, stopping, streamer
        self.constraint = None
        if constraint is not None:
            from ..constraints import as_row_constraints

            self.constraint = as_row_constraints(constraint, B)
        self.keep_history = keep_history or stopping is not None
        self.prompt_ids = setup.prompt_ids_for_penalties
        self.done = torch.zeros(B, dtype=torch.bool, device=setup.input_ids.device)
        self.reason: list[FinishReason] = [FinishReason.LENGTH] * B
        self.lengths: list[int | None] = [None] * B  # set when a row finishes
        self.tokens: list[torch.Tensor] = []         # committed columns [B]
        self.logprobs: list[torch.Tensor] = []
        self._history: list[torch.Tensor] = []       # columns with -1 where a row had already finished

    @property
    def steps(self) -> int:
        return len(self.tokens)

    def generated_ids(self) -> torch.Tensor | None:
        """[B, n] generated ids, -1 after a row finished (the processors ignore -1); None before any."""
        return torch.stack(self._history, 1) if self._history else None

    def constrain(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits with every token the rows' constraints forbid set to ``-inf`` (the first processor,
        so that truncation rules choose among allowed tokens); unchanged without a constraint."""
        return logits if self.constraint is None else self.constraint.mask(logits)

    def commit(self, tokens: torch.Tensor, logits: torch.Tensor | None = None,
               logprobs: torch.Tensor | None = None) -> tuple[torch.Tensor, bool]:
        """Commit one chosen column ``tokens`` [B], chosen from the model's ``logits`` [B, V] (or give the
        model's ``logprobs`` [B] of the tokens directly).

        Returns the committed column (padding for rows that had finished) and whether every row is done.
        """
        if self.constraint is not None:  # a row whose constraint allows nothing ends before this token
            self.finish(self.constraint.dead(self.done.device), FinishReason.NO_VALID_TOKEN)
        running = ~self.done
        logprob = token_logprobs(logits, tokens) if logprobs is None else logprobs
        self.logprobs.append(logprob.masked_fill(self.done, 0.0))
        if self.keep_history:
            self._history.append(tokens.masked_fill(self.done, -1))
        tokens = tokens.masked_fill(self.done, self.setup.pad_token_id)
        self.tokens.append(tokens)
        self.finish(torch.isin(tokens, self.setup.eos), FinishReason.EOS)
        if self.stopping is not None:
            self.finish(self.stopping(self.generated_ids()).to(self.done.device), FinishReason.STOP)
        if self.constraint is not None:
            self.constraint.advance(tokens, active=running)
            self.finish(self.constraint.complete(self.done.device), FinishReason.CONSTRAINT)
        emit(self.streamer, tokens)
        return tokens, bool(self.done.all())

    def finish(self, rows: torch.Tensor, reason: FinishReason):
        """Mark ``rows`` (BoolTensor [B]) that are not finished yet as finished now, for ``reason``."""
        rows = rows & ~self.done
        for i in rows.nonzero().flatten().tolist():
            self.reason[i], self.lengths[i] = reason, self.steps
        self.done |= rows

    def output(self, return_dict: bool, **extra):
        """The decoder's return value: sequences [B, T + n], or a :class:`GenerationOutput`."""
        end_stream(self.streamer)
        setup = self.setup
        B, dev = setup.input_ids.shape[0], setup.input_ids.device
        new = torch.stack(self.tokens, 1) if self.tokens else torch.empty(B, 0, dtype=torch.long, device=dev)
        lp = torch.stack(self.logprobs, 1) if self.logprobs else torch.empty(B, 0, device=dev)
        sequences = torch.cat([setup.input_ids, new], 1)
        if not return_dict:
            return sequences
        lengths = [n if n is not None else new.shape[1] for n in self.lengths]
        return GenerationOutput(sequences=sequences, logprobs=lp, finish_reason=list(self.reason),
                                prompt_length=setup.input_ids.shape[1], lengths=lengths, **extra)


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
            yield tokens, rows.logprobs[-1]
            if all_done or step == n - 1:
                return
            logits = last_logits(decode_one(model, tokens, cache))
