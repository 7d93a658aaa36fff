"""Value functions: how MCTS scores a path, ``value_fn(ctx) -> float in [0, 1]``.

A value function sees a :class:`ValueContext` (the token ids of the path and its rollout, the model's
log-probabilities of them, whether it ended with EOS, optionally the decoded text) and returns a number
in ``[0, 1]``: higher is better. :func:`likelihood_value` (the default) asks the model itself;
:func:`length_reward` is a reward, the pattern for writing one (a factory that checks its settings once
and returns ``ctx -> float``); :func:`mix` combines two, the usual recipe for steering (PPL-MCTS):
``mix(likelihood_value, reward, 0.5)`` keeps the text fluent while it looks for the reward. A classifier
is just another callable (the course's assignment a4 builds a sentiment value this way). Chapter 6's
keyword task has its reward, ``keyword_reward``, next to the task in :mod:`infergen.bench.lookahead`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable

import torch

from ..._validation import check_callable, check_number


@dataclass
class ValueContext:
    """What a value function sees about the path it scores (all tensors on the model's device).

    ``token_ids`` [n]: the whole sequence, tokenizer-free: prompt (without padding), committed tokens,
    the path from the root to the evaluated node, then the greedy rollout tokens (if any).
    ``logprobs`` [path_length + rollout_length]: the model's (untempered) log p of each path and
    rollout token given everything before it. ``committed_logprobs`` [num_committed]: the same for
    the tokens already committed. ``ends_with_eos``: the path or its rollout ended with EOS.
    ``text``: the decoded continuation (committed + path + rollout) when ``mcts_decode`` got a
    ``tokenizer``, else None. ``generator``: the search's random generator, for a stochastic value
    function that should be reproducible with ``seed``.
    """

    token_ids: torch.Tensor
    prompt_length: int
    num_committed: int
    path_length: int
    rollout_length: int
    logprobs: torch.Tensor
    committed_logprobs: torch.Tensor
    ends_with_eos: bool
    tokenizer: Any = None
    generator: torch.Generator | None = None

    @property
    def new_ids(self) -> torch.Tensor:
        """The continuation: committed + path + rollout tokens (the prompt left out)."""
        return self.token_ids[self.prompt_length:]

    @cached_property
    def text(self) -> str | None:
        """The decoded continuation (:attr:`new_ids`), or None without a tokenizer."""
        tok = self.tokenizer
        return None if tok is None else tok.decode(self.new_ids.tolist(), skip_special_tokens=True)


#: The type of a value function.
ValueFn = Callable[[ValueContext], float]


def likelihood_value(ctx: ValueContext) -> float:
    """The default value: the model's own likelihood of the path (and rollout), in ``(0, 1]``.

    The mean log-probability ``l = mean(log p(token | prefix))`` over the path and rollout tokens lies in
    ``(-inf, 0]``; ``exp(l)`` maps it to ``(0, 1]``: the *geometric mean* of the per-token
    probabilities (``l = -2`` gives 0.135, ``l = -0.5`` gives 0.61). The mean, not the sum, so that deep
    and shallow paths compete fairly (a sum always prefers short paths). Only the tokens below the root
    count: the committed tokens are shared by every path and would only dilute the differences.
    """
    return math.exp(float(ctx.logprobs.float().mean())) if ctx.logprobs.numel() else 1.0  # no token: 1


def length_reward(target_length: int) -> ValueFn:
    """A reward for the continuation's length ``n``: ``max(0, 1 - |n - target| / target)``, in ``[0, 1]``.

    ``n`` counts committed + path + rollout tokens, EOS excluded. A shaping example: mixed with the
    likelihood (``mix(likelihood_value, length_reward(20), 0.3)``) it steers towards answers of about
    ``target_length`` tokens, and it penalises ending with EOS far too early.
    """
    check_number("target_length", target_length, low=1, integer=True)

    def reward(ctx: ValueContext) -> float:
        n = len(ctx.new_ids) - int(ctx.ends_with_eos)
        return max(0.0, 1.0 - abs(n - target_length) / target_length)

    return reward


def mix(value_a: ValueFn, value_b: ValueFn, weight: float = 0.5) -> ValueFn:
    """Combine two value functions: ``(1 - weight) * value_a(ctx) + weight * value_b(ctx)``.

    Both return values in ``[0, 1]``, so the mixture does too. The usual use is LM likelihood plus a
    reward (PPL-MCTS): ``mix(likelihood_value, length_reward(20), 0.3)``. A
    classifier is just another callable, e.g. ``lambda ctx: float(clf(ctx.text)[0]["score"])`` (a
    probability in ``[0, 1]``; pass ``tokenizer=`` to ``mcts_decode`` so ``ctx.text`` is filled).
    """
    check_callable("value_a", value_a)
    check_callable("value_b", value_b)
    w = float(check_number("weight", weight, low=0, high=1))

    def mixed(ctx: ValueContext) -> float:
        return (1.0 - w) * float(value_a(ctx)) + w * float(value_b(ctx))

    return mixed
