"""What every decoder shares: checking inputs, setting up the cache, finishing rows, the output.

The decoder protocol (greedy, sampling, beam, contrastive, MCTS, speculative and any you register):

* takes ``model`` (an infergen model or any transformers causal LM), ``input_ids`` [B, T] (left-padded,
  with ``attention_mask`` [B, T] marking real tokens) and ``max_new_tokens``;
* stops each row at its own end-of-sequence token and pads the row after it with ``pad_token_id``;
* returns the sequences [B, T + new] -- or, with ``return_dict=True``, a :class:`GenerationOutput`
  holding the sequences, the log-probability the model gave each generated token, and why each row
  finished (``"eos"``, ``"length"`` or ``"stop"``).

:func:`prepare` does the common set-up (validation, a KV cache of the right size, EOS ids) and
:class:`RowTracker` the per-row finishing, so each strategy file contains only its algorithm.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .._validation import check_input_ids, check_number
from ..models.hf import as_model


@dataclass
class GenerationOutput:
    """The result of a decoder called with ``return_dict=True``.

    ``sequences``: [B, T + n] prompt and generated tokens (padding after a row's EOS).
    ``logprobs``: [B, n] log p(token | prefix) under the *model* (before any processor), 0 for padding.
    ``finish_reason``: one of ``"eos"``, ``"length"``, ``"stop"`` per row.
    ``lengths``: how many new tokens of each row are real (its EOS included; padding after it not).
    ``scores``: a per-row sequence score where the strategy has one (beam search), else None.
    ``info``: strategy-specific extras (e.g. the MCTS tree, speculative acceptance counts).
    """
    sequences: torch.Tensor
    logprobs: torch.Tensor
    finish_reason: list[str]
    prompt_length: int
    lengths: list[int] | None = None
    scores: torch.Tensor | None = None
    info: dict = field(default_factory=dict)

    @property
    def new_tokens(self) -> torch.Tensor:
        return self.sequences[:, self.prompt_length:]


@dataclass
class Setup:
    model: object
    input_ids: torch.Tensor  # [B, T] on the model's device
    attention_mask: torch.Tensor  # [B, T] bool
    eos: torch.Tensor  # [n_eos] ids that end a row
    pad_token_id: int
    max_new_tokens: int

    @property
    def prompt_ids_for_penalties(self) -> torch.Tensor:
        """The prompt with padding replaced by -1 (the processors' 'ignore me' id)."""
        return self.input_ids.masked_fill(~self.attention_mask, -1)


def eos_ids(model, eos_token_id) -> list[int]:
    """Normalise ``eos_token_id`` (int, list, or None = the model's own) to a list of ids."""
    if eos_token_id is None:
        eos_token_id = getattr(model, "eos_token_id", None)
        if eos_token_id is None:
            eos_token_id = getattr(model.config, "eos_token_id", None)
    if eos_token_id is None:
        return []
    ids = list(eos_token_id) if isinstance(eos_token_id, (list, tuple, set)) else [eos_token_id]
    vocab = model.config.vocab_size
    for i in ids:
        check_number("eos_token_id", i, low=0, high=vocab - 1, integer=True)
    return [int(i) for i in ids]


def prepare(model, input_ids, max_new_tokens, *, attention_mask=None, eos_token_id=None,
            pad_token_id=None, cache_rows: int | None = None, extra_len: int = 0,
            allocate: bool = True):
    """Validate the common arguments and allocate a cache; returns ``(setup, cache)``.

    ``cache_rows`` (default B) sizes the cache batch (e.g. B * num_beams); ``extra_len`` adds columns
    beyond ``T + max_new_tokens`` (e.g. speculative drafts that may be rolled back).
    """
    model = as_model(model)
    input_ids = check_input_ids(input_ids)
    check_number("max_new_tokens", max_new_tokens, low=0, integer=True)
    B, T = input_ids.shape
    vocab = model.config.vocab_size
    if int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab:
        raise ValueError(f"input_ids must be token ids in [0, {vocab - 1}], got values in "
                         f"[{int(input_ids.min())}, {int(input_ids.max())}]")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
    else:
        if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != (B, T):
            shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
            raise ValueError(f"attention_mask must have the shape of input_ids {(B, T)}, got {shape}")
        attention_mask = attention_mask.bool()
        if not bool(attention_mask.any(-1).all()):
            raise ValueError("attention_mask has a row with no real token: every prompt needs at least one token")
    context = model.max_context
    if T + max_new_tokens > context:
        raise ValueError(
            f"prompt length {T} + max_new_tokens {max_new_tokens} = {T + max_new_tokens} exceeds the model's "
            f"context of {context} tokens; shorten the prompt or lower max_new_tokens (valid range: "
            f"[0, {max(context - T, 0)}])")
    eos = eos_ids(model, eos_token_id)
    if pad_token_id is None:
        pad_token_id = getattr(model.config, "pad_token_id", None)
        if pad_token_id is None:
            pad_token_id = eos[0] if eos else 0
    device = model.device
    setup = Setup(model=model, input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                  eos=torch.tensor(eos, dtype=torch.long, device=device), pad_token_id=int(pad_token_id),
                  max_new_tokens=int(max_new_tokens))
    cache = None
    if allocate:
        cache = model.new_cache(cache_rows or B, T + max_new_tokens + extra_len)
    return setup, cache


class RowTracker:
    """Per-row finishing: a row is done at its EOS (or a stop criterion); later tokens become padding."""

    def __init__(self, batch_size: int, setup: Setup, stopping=None):
        self.setup = setup
        self.done = torch.zeros(batch_size, dtype=torch.bool, device=setup.input_ids.device)
        self.reason = ["length"] * batch_size
        self.lengths: list[int | None] = [None] * batch_size  # set when a row finishes
        self.steps = 0
        self.stopping = stopping

    def mask_finished(self, tokens: torch.Tensor) -> torch.Tensor:
        """Replace the tokens of rows that already finished by padding."""
        return tokens.masked_fill(self.done, self.setup.pad_token_id)

    def update(self, tokens: torch.Tensor, new_tokens: torch.Tensor | None = None) -> bool:
        """Mark rows that just produced EOS, or whose ``new_tokens`` [B, n] (-1 = after the row ended)
        meet the stop criterion ``stopping(new_tokens) -> BoolTensor [B]``. True when all are done."""
        self.steps += 1
        hit = torch.isin(tokens, self.setup.eos) & ~self.done
        self._mark(hit, "eos")
        if self.stopping is not None and new_tokens is not None:
            self._mark(self.stopping(new_tokens).to(self.done.device) & ~self.done, "stop")
        return bool(self.done.all())

    def _mark(self, rows: torch.Tensor, reason: str):
        for i in rows.nonzero().flatten().tolist():
            self.reason[i], self.lengths[i] = reason, self.steps
        self.done |= rows


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


def make_generator(seed=None, generator=None, device="cpu"):
    """A ``torch.Generator`` for reproducible sampling: the one given, one seeded with ``seed``, or None."""
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        return generator
    if seed is None:
        return None
    check_number("seed", seed, low=0, integer=True)
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def finish(setup: Setup, generated: list[torch.Tensor], logprobs: list[torch.Tensor], tracker: RowTracker,
           return_dict: bool, **extra):
    """Assemble the decoder's return value from per-step token and log-prob columns."""
    B = setup.input_ids.shape[0]
    dev = setup.input_ids.device
    new = torch.stack(generated, 1) if generated else torch.empty(B, 0, dtype=torch.long, device=dev)
    lp = torch.stack(logprobs, 1) if logprobs else torch.empty(B, 0, device=dev)
    sequences = torch.cat([setup.input_ids, new], 1)
    if not return_dict:
        return sequences
    lengths = [n if n is not None else new.shape[1] for n in tracker.lengths]
    return GenerationOutput(sequences=sequences, logprobs=lp, finish_reason=list(tracker.reason),
                            prompt_length=setup.input_ids.shape[1], lengths=lengths, **extra)
