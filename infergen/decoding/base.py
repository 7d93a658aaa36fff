"""What every decoder shares: checking inputs, setting up the cache, finishing rows, the output.

The decoder protocol (greedy, sampling, beam, contrastive, MCTS, speculative and any you register):

* takes ``model`` (an infergen model or any transformers causal LM), ``input_ids`` [B, T] (left-padded,
  with ``attention_mask`` [B, T] marking real tokens) and ``max_new_tokens``;
* stops each row at its own end-of-sequence token and pads the row after it with ``pad_token_id``;
* returns the sequences [B, T + new] -- or, with ``return_dict=True``, a :class:`GenerationOutput`
  holding the sequences, the log-probability the model gave each generated token, and why each row
  finished (``"eos"``, ``"length"`` or ``"stop"``).

:func:`prepare` does the common set-up (validation, a KV cache of the right size, EOS and pad ids);
:mod:`infergen.decoding.steps` holds the steps every decoder shares (prefill, one decode step, choosing
a token, committing it), so each strategy file contains only its algorithm.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .._validation import check_input_ids, check_number
from ..cache import Cache, require
from ..models.hf import as_model
from ..models.protocol import GenerationDefaults
from ..params import setting


@dataclass
class GenerationOutput:
    """The result of a decoder called with ``return_dict=True``.

    ``sequences``: [B, T + n] prompt and generated tokens (padding after a row's EOS).
    ``logprobs``: [B, n] log p(token | prefix) under the *model* (before any processor), 0 for padding.
    ``finish_reason`` per row: ``"eos"``, ``"length"``, ``"stop"`` (a stop criterion), ``"constraint"`` (its
    constraint is complete) or ``"no_valid_token"`` (its constraint allowed no token).
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
        """The generated part of ``sequences``, [B, n]."""
        return self.sequences[:, self.prompt_length:]


@dataclass
class Setup:
    """What :func:`prepare` checked and derived, shared by a decoder's steps: the model, the prompts on
    its device, which slots are real, the ids that end a row, the pad id and the token budget."""

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


def model_defaults(model) -> GenerationDefaults:
    """The model's :class:`~infergen.models.protocol.GenerationDefaults` (from its config if it has none)."""
    defaults = getattr(model, "defaults", None)
    return defaults if isinstance(defaults, GenerationDefaults) else GenerationDefaults.from_config(model.config)


def special_ids(model, eos_token_id=None, pad_token_id=None) -> tuple[list[int], int]:
    """The ids that end a row and the id that pads a finished row: the one place that decides.

    ``eos_token_id``: an id, a list of ids (``[]`` = never stop at EOS), or None = the model's defaults.
    ``pad_token_id``: an id, or None = the model's pad id, else its first EOS id, else 0. Both must be
    token ids of the model's vocabulary.
    """
    vocab, defaults = model.config.vocab_size, model_defaults(model)
    if eos_token_id is None:
        eos_token_id = list(defaults.eos_token_ids)
    ids = list(eos_token_id) if isinstance(eos_token_id, (list, tuple, set, frozenset)) else [eos_token_id]
    eos = [int(check_number("eos_token_id", i, low=0, high=vocab - 1, integer=True)) for i in ids]
    if pad_token_id is None:
        pad_token_id = defaults.pad_token_id
        if pad_token_id is None or not 0 <= pad_token_id < vocab:
            pad_token_id = min(eos) if eos else 0
    return eos, int(check_number("pad_token_id", pad_token_id, low=0, high=vocab - 1, integer=True))


def prepare(model, input_ids, max_new_tokens, *, attention_mask=None, eos_token_id=None,
            pad_token_id=None, extra_len: int = 0,
            allocate: bool = True, who: str = "this decoder"):
    """Validate the common arguments and allocate a cache; returns ``(setup, cache)``.

    The cache has one row per prompt (a decoder that needs more repeats it); ``extra_len`` adds columns
    beyond ``T + max_new_tokens`` (e.g. speculative drafts that may be rolled back). A model whose cache is
    not a :class:`~infergen.cache.Cache` is refused here, naming the decoder ``who``, before any work
    (:func:`~infergen.cache.require`).
    """
    model = as_model(model)
    input_ids = check_input_ids(input_ids)
    check_number("max_new_tokens", max_new_tokens, low=0, integer=True)
    B, T = input_ids.shape
    low, high, vocab = int(input_ids.min()), int(input_ids.max()), model.config.vocab_size
    if low < 0 or high >= vocab:
        raise ValueError(f"input_ids must be token ids in [0, {vocab - 1}], got values in [{low}, {high}]")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
    elif not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != (B, T):
        shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
        raise ValueError(f"attention_mask must have the shape of input_ids {(B, T)}, got {shape}")
    attention_mask = attention_mask.bool()
    if not bool(attention_mask.any(-1).all()):
        raise ValueError("attention_mask has a row with no real token: every prompt needs at least one token")
    # right (or inner) padding: a padding slot after the first real token of a row
    padded_late = (attention_mask.long().cummax(-1).values.bool() & ~attention_mask).any(-1)
    if bool(padded_late.any()):
        raise ValueError(f"attention_mask row {int(padded_late.nonzero()[0, 0])} has padding after its first "
                         "real token: infergen needs left padding (tokenizer.padding_side = 'left'), so that "
                         "every row's newest token is in the last column")
    if T + max_new_tokens > (context := model.max_context):
        raise ValueError(f"prompt length {T} + max_new_tokens {max_new_tokens} = {T + max_new_tokens} "
                         f"exceeds the model's context of {context} tokens; shorten the prompt or lower "
                         f"max_new_tokens (valid range: [0, {max(context - T, 0)}])")
    eos, pad = special_ids(model, eos_token_id, pad_token_id)
    device = model.device
    setup = Setup(model, input_ids.to(device), attention_mask.to(device),
                  torch.tensor(eos, dtype=torch.long, device=device), pad, int(max_new_tokens))
    return setup, require(model.new_cache(B, T + max_new_tokens + extra_len), Cache, who) if allocate else None


def check_stop(params, stopping):
    """Stop strings need the tokenizer; a decoder on token ids gets them as a ``stopping`` criterion."""
    if params.stop and stopping is None:
        raise ValueError("stop strings need the tokenizer to be recognised: use infergen.generate(..., stop=...) "
                         "or pass a stopping criterion (stopping=)")


def make_generator(seed=None, generator=None, device="cpu"):
    """Randomness for sampling: the ``generator`` given (a ``torch.Generator``, or a list of them, one per
    row: each row then draws from its own), one seeded with ``seed``, or None (torch's global one)."""
    if generator is not None:
        many = isinstance(generator, (list, tuple))
        for g in generator if many else [generator]:
            if not isinstance(g, torch.Generator):
                raise TypeError(f"generator must be a torch.Generator or a list of them, got {type(g).__name__}")
        return list(generator) if many else generator
    return None if seed is None else torch.Generator(device=device).manual_seed(int(setting("seed").check(seed)))
