"""Value functions: how MCTS scores a path, ``value_fn(ctx) -> float in [0, 1]``.

A value function sees a :class:`ValueContext` (the token ids of the path and its rollout, the model's
log-probabilities of them, whether it ended with EOS, optionally the decoded text) and returns a number
in ``[0, 1]``: higher is better. :func:`likelihood_value` (the default) asks the model itself;
:func:`keyword_reward` and :func:`length_reward` are rewards; :func:`mix` combines two, the usual recipe
for steering (PPL-MCTS): ``mix(likelihood_value, reward, 0.5)`` keeps the text fluent while it looks
for the reward. A classifier is just another callable (the course's assignment a4 builds a sentiment
value this way).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable

import torch

from ..._validation import check_number


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

    @property
    def path_ids(self) -> torch.Tensor:
        """The tokens from the root to the evaluated node."""
        start = self.prompt_length + self.num_committed
        return self.token_ids[start:start + self.path_length]

    @property
    def rollout_ids(self) -> torch.Tensor:
        """The greedy rollout tokens after the evaluated node (empty without a rollout)."""
        return self.token_ids[len(self.token_ids) - self.rollout_length:]

    @cached_property
    def text(self) -> str | None:
        """The decoded continuation (:attr:`new_ids`), or None without a tokenizer."""
        if self.tokenizer is None:
            return None
        return self.tokenizer.decode(self.new_ids.tolist(), skip_special_tokens=True)


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


def keyword_reward(*keywords, tokenizer: Any = None, case_sensitive: bool = False) -> ValueFn:
    """A reward: the fraction of ``keywords`` that occur in the continuation, in ``[0, 1]``.

    Each keyword is a token id (an ``int``: matched among the continuation's token ids, no tokenizer
    needed) or a string (matched as a substring of the decoded continuation; needs a ``tokenizer``,
    given here or to ``mcts_decode``). Keywords may be given one by one or in lists::

        keyword_reward("Paris", " museum", tokenizer=tok)     # strings
        keyword_reward([tok.encode(" Paris")[0]])              # a token id
        mix(likelihood_value, keyword_reward("Paris", tokenizer=tok), 0.5)   # stay fluent

    Pitfalls: the match is a substring test (``"cat"`` matches ``"category"``; add spaces to match
    words), and the reward is sparse (0 until a keyword appears), so the search only finds keywords
    within reach of its ``top_k`` / depth; mixing with the likelihood keeps the text fluent meanwhile.
    """
    flat = [k for item in keywords for k in (item if isinstance(item, (list, tuple, set)) else [item])]
    if not flat:
        raise ValueError("keyword_reward needs at least one keyword (a string or a token id)")
    for k in flat:
        if not (isinstance(k, str) and k) and not (isinstance(k, int) and not isinstance(k, bool) and k >= 0):
            raise TypeError(f"keyword_reward: keywords must be non-empty strings or token ids (int >= 0), got {k!r}")
    ids = [k for k in flat if isinstance(k, int)]
    words = [k if case_sensitive else k.lower() for k in flat if isinstance(k, str)]

    def reward(ctx: ValueContext) -> float:
        present = set(ctx.new_ids.tolist())
        found = sum(t in present for t in ids)
        if words:
            tok = tokenizer if tokenizer is not None else ctx.tokenizer
            if tok is None:
                raise ValueError("keyword_reward with string keywords needs a tokenizer: pass tokenizer= to "
                                 "keyword_reward or to mcts_decode (or give token ids instead)")
            text = tok.decode(ctx.new_ids.tolist(), skip_special_tokens=True)
            found += sum(w in (text if case_sensitive else text.lower()) for w in words)
        return found / len(flat)

    return reward


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
    reward (PPL-MCTS): ``mix(likelihood_value, keyword_reward("Paris", tokenizer=tok), 0.5)``. A
    classifier is just another callable, e.g. ``lambda ctx: float(clf(ctx.text)[0]["score"])`` (a
    probability in ``[0, 1]``; pass ``tokenizer=`` to ``mcts_decode`` so ``ctx.text`` is filled).
    """
    for name, fn in (("value_a", value_a), ("value_b", value_b)):
        if not callable(fn):
            raise TypeError(f"mix: {name} must be a callable value function ctx -> float, got {type(fn).__name__}")
    w = float(check_number("weight", weight, low=0, high=1))

    def mixed(ctx: ValueContext) -> float:
        return (1.0 - w) * float(value_a(ctx)) + w * float(value_b(ctx))

    return mixed
