"""Monte Carlo tree search decoding: look ahead before committing each token.

Greedy and sampling decide token ``t`` from the distribution at ``t`` alone. A tree search first
*tries* several continuations, scores them with a **value function** (the model's own likelihood, a
keyword reward, a classifier ...), and only then commits the token whose subtree looked best. This
is how PPL-MCTS (Chaffin et al., 2022) and PPO-MCTS (Liu et al., 2024) steer a language model
towards a goal without retraining it.

The tree
--------
The root is the text so far (prompt + committed tokens). Every other node is one token; the path from
the root to a node is a candidate continuation. A node stores its token, its **prior** ``P`` (the
model's tempered next-token probability of that token *given its own path*, renormalised over the
``top_k`` tokens of its parent), its visit count ``N`` and its value sum ``W`` (mean ``Q = W / N``).

One **simulation** has four steps:

1. *Selection.* From the root, repeatedly descend to the child maximising PUCT (as in AlphaZero):
   ``Q(a) + c_puct * P(a) * sqrt(N(parent)) / (1 + N(a))``. ``Q`` pulls towards children that scored
   well (exploitation); the second term favours likely children that were rarely tried (exploration)
   and shrinks as they are visited. An unvisited child has ``Q = 0``, the bottom of the value range
   (pessimistic first play: exploration is driven by the prior). Ties go to the higher prior.
2. *Expansion.* The first node reached that was never evaluated gets evaluated: one forward pass of
   *its* token on top of *its* path gives the next-token distribution, whose ``top_k`` tokens become
   its children (with their priors). A node ending in EOS, or at the ``max_new_tokens`` horizon, is
   **terminal**: it is scored but never expanded.
3. *Evaluation.* ``value_fn(ctx)`` scores the path, optionally after a greedy rollout of
   ``rollout_tokens`` more tokens (see :class:`ValueContext`). Values live in ``[0, 1]``.
4. *Backup.* The value is added to every node on the path: ``N += 1``, ``W += v`` (a running mean).

After ``num_simulations`` simulations the most visited child of the root is committed (ties: higher
prior; or sample by ``visits ** (1 / commit_temperature)``), becomes the new root and **keeps its
subtree**: the visits and values below it are reused by the next token's search.

What the naive sketch gets wrong (see the errata): it expands every node from the *root's*
distribution (so the tree ignores the path it is growing), stores priors on the wrong node, uses UCT
without priors, takes ``-outputs.loss`` as the value (``None`` without labels), and re-runs the whole
prefix for every evaluation.

Key/values along the tree (the cost of a simulation)
----------------------------------------------------
Evaluating a leaf needs the keys/values of every token on its path. Re-running the prefix costs a
forward over ``prompt + committed + path`` tokens for *every* evaluation (``use_cache=False``: the
naive version, kept for comparison). Instead, each evaluated node keeps only **its own token's K/V
slice** (``[layers, kv_heads, head_dim]`` for keys and for values; 46 KB per node for SmolLM2-135M in
float32, independent of the context length). One working cache per row holds the root context; to
evaluate a leaf we crop it back to the longest prefix of the path that is already there (consecutive
simulations share most of their path), write the remaining path slices into it (memory copies, no
compute), and run **one single-token forward** of the leaf's token. A simulation therefore costs
``1 + max(0, rollout_tokens - 1)`` single-token forwards. Keeping a full cache per node instead would
cost ``context_length`` slices per node (4.6 MB per node for a 100-token context). Slices of nodes
outside the committed subtree are freed with them. K/V are stored after the rotary embedding, which is
valid because a node's absolute position never changes (a committed token keeps its column).

Several leaves per forward (``leaf_batch``)
-------------------------------------------
A single-token forward on a CPU costs about as much as reading every weight once, whether it carries one
token or eight. So ``leaf_batch = k`` selects ``k`` leaves in a row before evaluating any: each selection
adds a **virtual loss** to its path (a visit of value 0, which lowers ``Q`` and raises ``N`` along it),
so the next selection turns elsewhere, as in AlphaZero's parallel search. The ``k`` leaves are then
evaluated by one forward over a ``k``-row cache whose row ``i`` holds the root context and leaf ``i``'s
path (written from the nodes' slices; shorter paths are left-padded), expanded and scored; finally
each virtual loss is replaced by the real visit and value. ``leaf_batch = 1`` is the plain sequential
search.

Batches are searched row by row (each row has its own tree and a batch-1 cache holding its prompt
without padding), in lockstep: every step commits one column for all unfinished rows, so streamers,
stopping criteria and EOS handling behave as in the other decoders. Rows stop at their own EOS.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Iterator

import torch

from .._validation import check_number
from ..cache import require_ops
from ..registry import register_decoder
from .base import make_generator, prepare
from .steps import Rows, decode_one, last_logits, prefill

__all__ = ["mcts_decode", "ValueContext", "TreeNode", "Node", "likelihood_value", "keyword_reward",
           "length_reward", "mix", "puct_scores", "select_child"]


# --------------------------------------------------------------------------------------------------------
# Value functions
# --------------------------------------------------------------------------------------------------------
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
    tokenizer: object = None
    generator: torch.Generator | None = None

    @property
    def new_ids(self) -> torch.Tensor:
        """The continuation: committed + path + rollout tokens (the prompt left out)."""
        return self.token_ids[self.prompt_length:]

    @property
    def path_ids(self) -> torch.Tensor:
        start = self.prompt_length + self.num_committed
        return self.token_ids[start:start + self.path_length]

    @property
    def rollout_ids(self) -> torch.Tensor:
        return self.token_ids[len(self.token_ids) - self.rollout_length:]

    @cached_property
    def text(self) -> str | None:
        if self.tokenizer is None:
            return None
        return self.tokenizer.decode(self.new_ids.tolist(), skip_special_tokens=True)


def likelihood_value(ctx: ValueContext) -> float:
    """The default value: the model's own likelihood of the path (and rollout), in ``(0, 1]``.

    The mean log-probability ``l = mean(log p(token | prefix))`` over the path and rollout tokens lies in
    ``(-inf, 0]``; ``exp(l)`` maps it to ``(0, 1]``: the *geometric mean* of the per-token
    probabilities (``l = -2`` gives 0.135, ``l = -0.5`` gives 0.61). The mean, not the sum, so that deep
    and shallow paths compete fairly (a sum always prefers short paths). Only the tokens below the root
    count: the committed tokens are shared by every path and would only dilute the differences.
    """
    if ctx.logprobs.numel() == 0:
        return 1.0
    return math.exp(float(ctx.logprobs.float().mean()))


def _flatten_keywords(items) -> list:
    out = []
    for item in items:
        if isinstance(item, (list, tuple, set)):
            out.extend(_flatten_keywords(item))
        else:
            out.append(item)
    return out


def keyword_reward(*keywords, tokenizer=None, case_sensitive: bool = False) -> Callable[[ValueContext], float]:
    """A reward: the fraction of ``keywords`` that occur in the continuation, in ``[0, 1]``.

    Each keyword is a token id (an ``int``: matched among the continuation's token ids, no tokenizer
    needed) or a string (matched as a substring of the decoded continuation; needs a ``tokenizer``,
    given here or to ``mcts_decode``). Keywords may be given one by one or as lists; as a convenience a
    tokenizer passed as the last positional argument is taken as ``tokenizer``::

        keyword_reward("Paris", " museum", tokenizer=tok)     # strings
        keyword_reward([tok.encode(" Paris")[0]])              # a token id
        mix(likelihood_value, keyword_reward("Paris", tokenizer=tok), 0.5)   # stay fluent

    Pitfalls: the match is a substring test (``"cat"`` matches ``"category"``; add spaces to match
    words), and the reward is sparse (0 until a keyword appears), so the search only finds keywords
    within reach of its ``top_k`` / depth; mixing with the likelihood keeps the text fluent meanwhile.
    """
    keywords = list(keywords)
    if keywords and tokenizer is None and hasattr(keywords[-1], "decode"):
        tokenizer = keywords.pop()
    keywords = _flatten_keywords(keywords)
    if not keywords:
        raise ValueError("keyword_reward needs at least one keyword (a string or a token id)")
    ids, words = [], []
    for k in keywords:
        if isinstance(k, str):
            if not k:
                raise ValueError("keyword_reward: keywords must be non-empty strings, got ''")
            words.append(k if case_sensitive else k.lower())
        elif isinstance(k, int) and not isinstance(k, bool):
            check_number("keyword token id", k, low=0, integer=True)
            ids.append(k)
        else:
            raise TypeError(f"keyword_reward: keywords must be strings or token ids (int), got {k!r} "
                            f"({type(k).__name__})")

    def reward(ctx: ValueContext) -> float:
        found = 0
        if ids:
            present = set(ctx.new_ids.tolist())
            found += sum(t in present for t in ids)
        if words:
            tok = tokenizer if tokenizer is not None else ctx.tokenizer
            if tok is None:
                raise ValueError("keyword_reward with string keywords needs a tokenizer: pass tokenizer= to "
                                 "keyword_reward or to mcts_decode (or give token ids instead)")
            text = ctx.text if tok is ctx.tokenizer else tok.decode(ctx.new_ids.tolist(), skip_special_tokens=True)
            text = text if case_sensitive else text.lower()
            found += sum(w in text for w in words)
        return found / len(keywords)

    reward.__name__ = reward.__qualname__ = f"keyword_reward({keywords!r})"
    return reward


def length_reward(target_length: int) -> Callable[[ValueContext], float]:
    """A reward for the continuation's length ``n``: ``max(0, 1 - |n - target| / target)``, in ``[0, 1]``.

    ``n`` counts committed + path + rollout tokens, EOS excluded. A shaping example: mixed with the
    likelihood (``mix(likelihood_value, length_reward(20), 0.3)``) it steers towards answers of about
    ``target_length`` tokens, and it penalises ending with EOS far too early.
    """
    check_number("target_length", target_length, low=1, integer=True)

    def reward(ctx: ValueContext) -> float:
        n = len(ctx.new_ids) - int(ctx.ends_with_eos)
        return max(0.0, 1.0 - abs(n - target_length) / target_length)

    reward.__name__ = reward.__qualname__ = f"length_reward({target_length})"
    return reward


def mix(value_a: Callable, value_b: Callable, weight: float = 0.5) -> Callable[[ValueContext], float]:
    """Combine two value functions: ``(1 - weight) * value_a(ctx) + weight * value_b(ctx)``.

    Both return values in ``[0, 1]``, so the mixture does too. The usual use is LM likelihood plus a
    reward (PPL-MCTS): ``mix(likelihood_value, keyword_reward("Paris", tokenizer=tok), 0.5)``. A
    classifier is just another callable, e.g. ``lambda ctx: float(clf(ctx.text)[0]["score"])`` (a
    probability in ``[0, 1]``; pass ``tokenizer=`` to ``mcts_decode`` so ``ctx.text`` is filled).
    """
    for name, fn in (("value_a", value_a), ("value_b", value_b)):
        if not callable(fn):
            raise TypeError(f"mix: {name} must be a callable value function ctx -> float, got {type(fn).__name__}")
    check_number("weight", weight, low=0, high=1)
    w = float(weight)

    def mixed(ctx: ValueContext) -> float:
        return (1.0 - w) * float(value_a(ctx)) + w * float(value_b(ctx))

    mixed.__name__ = mixed.__qualname__ = f"mix({getattr(value_a, '__name__', value_a)}, " \
                                          f"{getattr(value_b, '__name__', value_b)}, {w})"
    return mixed


# --------------------------------------------------------------------------------------------------------
# The tree
# --------------------------------------------------------------------------------------------------------
class Node:
    """One token of the search tree (the root holds no token: it is the text so far).

    ``prior``: P(token | path to the parent), tempered and renormalised over the parent's top-k.
    ``logprob``: the model's untempered log p(token | path to the parent) (for the likelihood value).
    ``visits`` / ``value_sum``: N and W; ``q`` = W / N (0 while unvisited). ``children`` is None until
    the node is expanded. ``kv``: this token's key/value slice once evaluated (cached mode).
    ``gen_index``: how many new tokens the sequence has once this token is appended.
    """
    __slots__ = ("token", "prior", "logprob", "gen_index", "eos", "terminal", "children", "visits",
                 "value_sum", "kv", "fixed_value")

    def __init__(self, token=None, prior=1.0, logprob=0.0, gen_index=0, eos=False, terminal=False):
        self.token, self.prior, self.logprob, self.gen_index = token, prior, logprob, gen_index
        self.eos, self.terminal = eos, terminal
        self.children: list[Node] | None = None
        self.visits, self.value_sum = 0, 0.0
        self.kv = None
        self.fixed_value: float | None = None  # a terminal node's value, computed once

    @property
    def q(self) -> float:
        return self.value_sum / self.visits if self.visits else 0.0

    @property
    def expanded(self) -> bool:
        return self.children is not None


def puct_scores(node: Node, c_puct: float) -> list[float]:
    """PUCT score of each child: ``Q(a) + c_puct * P(a) * sqrt(N(parent)) / (1 + N(a))``.

    ``N(parent)`` is the parent's visit count (every simulation that passed through it, including the one
    that expanded it). Pitfall: UCT's ``sqrt(log N / n)`` ignores the prior and divides by zero for
    unvisited children; PUCT weights exploration by the model's own probability, so the search first
    explores what the model finds plausible.
    """
    sqrt_n = math.sqrt(node.visits)
    return [c.q + c_puct * c.prior * sqrt_n / (1 + c.visits) for c in node.children]


def select_child(node: Node, c_puct: float) -> Node:
    """The child with the highest PUCT score (ties: the higher prior, then the first)."""
    scores = puct_scores(node, c_puct)
    best = max(range(len(scores)), key=lambda i: (scores[i], node.children[i].prior))
    return node.children[best]


@dataclass
class TreeNode:
    """A lightweight, detached copy of a search tree node, for inspection and plotting.

    ``token_id`` is None at the root. ``value`` is the mean value Q. ``to_dict()`` gives plain
    nested dicts (JSON-ready); ``walk()`` yields ``(depth, node)`` in depth-first order.
    """
    token_id: int | None
    prior: float
    logprob: float
    visits: int
    value: float
    terminal: bool
    eos: bool
    children: list["TreeNode"] = field(default_factory=list)

    def walk(self) -> Iterator[tuple[int, "TreeNode"]]:
        stack = [(0, self)]
        while stack:
            depth, node = stack.pop()
            yield depth, node
            stack.extend((depth + 1, c) for c in reversed(node.children))

    @property
    def size(self) -> int:
        return sum(1 for _ in self.walk())

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in ("token_id", "prior", "logprob", "visits", "value", "terminal", "eos")}
        out["children"] = [c.to_dict() for c in self.children]
        return out


def snapshot(root: Node) -> TreeNode:
    """Copy a live tree into :class:`TreeNode` objects (numbers only: no K/V, no references kept)."""
    def copy(n: Node) -> TreeNode:
        return TreeNode(n.token, float(n.prior), float(n.logprob), int(n.visits), float(n.q),
                        bool(n.terminal), bool(n.eos))

    out = copy(root)
    stack = [(root, out)]  # iterative: a deep tree must not hit Python's recursion limit
    while stack:
        node, twin = stack.pop()
        for child in node.children or ():
            c = copy(child)
            twin.children.append(c)
            stack.append((child, c))
    return out


def _stack_columns(slices: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-node (k, v) slices [layers, kv_heads, head_dim] -> columns [layers, kv_heads, n, head_dim]."""
    return torch.stack([s[0] for s in slices], dim=2), torch.stack([s[1] for s in slices], dim=2)


# --------------------------------------------------------------------------------------------------------
# The search of one row
# --------------------------------------------------------------------------------------------------------
@dataclass
class _Config:
    num_simulations: int
    c_puct: float
    temperature: float
    top_k: int
    value_fn: Callable
    rollout_tokens: int
    use_cache: bool
    commit_temperature: float
    eos: frozenset
    tokenizer: object
    generator: torch.Generator | None
    leaf_batch: int | None = None  # None: DEFAULT_LEAF_BATCH where the cache can assemble rows, else 1


#: Leaves evaluated per batched forward by default: the fastest of 4, 8 and 16 on the bundled model
#: (benchmarks/results/mcts/speed.md).
DEFAULT_LEAF_BATCH = 8


class _RowSearch:
    """The tree, the working cache and the counters of one batch row."""

    def __init__(self, model, prompt: list[int], max_new_tokens: int, cfg: _Config):
        self.model, self.cfg, self.max_new = model, cfg, max_new_tokens
        self.device = model.device
        self.context = list(prompt)  # prompt + committed tokens
        self.prompt_length = len(prompt)
        self.committed_logprobs: list[float] = []
        cache = model.new_cache(1, len(prompt) + max_new_tokens)
        batch = cfg.leaf_batch if cfg.leaf_batch is not None else (
            DEFAULT_LEAF_BATCH if cache.supports("write_row") else 1)
        self.leaf_batch = batch
        needs = ("crop", "read_column", "append_columns") if cfg.use_cache else ("crop",)
        if batch > 1 and cfg.use_cache:  # rows of paths are assembled with write_row (see _batch_logits)
            needs += ("write_row",)
        who = "mcts_decode" if batch == 1 else f"mcts_decode with leaf_batch={batch} (leaf_batch=1 needs less)"
        self.cache = require_ops(cache, needs, who)
        self.batch = None  # the leaf_batch-row cache the leaves of a batch are evaluated in
        self.scratch = None  # a batch-1 cache to read one row's new column out of a batch cache
        self.cached_path: list[Node] = []  # nodes whose K/V fill the cache after the root context
        self.stats = dict(simulations=0, evaluations=0, forwards=0, forward_tokens=0, prefill_tokens=len(prompt),
                          kv_slices_written=0, nodes_expanded=0, seconds=0.0, reused_visits=[],
                          max_depth=0, kv_bytes_per_node=0, leaf_batches=0)
        logits = self._forward(self.context, count=False)
        self.root = Node(gen_index=0)
        self._expand(self.root, logits)

    # -- model calls ------------------------------------------------------------------------------
    def _forward(self, tokens: list[int], count: bool = True) -> torch.Tensor:
        ids = torch.tensor([tokens], dtype=torch.long, device=self.device)
        return self._run(ids, self.cache, None, len(tokens), count)[0]

    def _run(self, ids: torch.Tensor, cache, mask, tokens: int, count: bool = True) -> torch.Tensor:
        """Logits [rows, V] after ``ids`` [rows, t] on ``cache`` (``mask``: left padding of the new ids)."""
        if ids.shape[1] == 1 and mask is None:
            out = decode_one(self.model, ids, cache)
        else:
            out = prefill(self.model, ids, cache, mask)
        logits = last_logits(out)
        if count:
            self.stats["forwards"] += 1
            self.stats["forward_tokens"] += tokens
        if torch.isnan(logits).any():
            raise ValueError("the model produced NaN logits: nothing sensible can be searched")
        return logits

    def _load_prefix(self, prefix: list[Node]):
        """Make the working cache hold the root context + ``prefix``'s K/V slices (reusing what is there)."""
        shared = 0
        while shared < min(len(prefix), len(self.cached_path)) and prefix[shared] is self.cached_path[shared]:
            shared += 1
        self.cache.crop(len(self.context) + shared)
        if len(prefix) > shared:
            self.cache.append_columns(*_stack_columns([n.kv for n in prefix[shared:]]))
            self.stats["kv_slices_written"] += len(prefix) - shared
        self.cached_path = list(prefix)

    def _leaf_logits(self, path: list[Node]) -> torch.Tensor:
        """Next-token logits after the root context + ``path`` (the leaf is ``path[-1]``)."""
        leaf = path[-1]
        if not self.cfg.use_cache:  # the naive way: re-run the whole sequence
            self.cache.crop(0)
            return self._forward(self.context + [n.token for n in path])
        self._load_prefix(path[:-1])
        logits = self._forward([leaf.token])
        leaf.kv = self.cache.read_column(self.cache.length - 1)
        self.stats["kv_bytes_per_node"] = sum(t.numel() * t.element_size() for t in leaf.kv)
        self.cached_path.append(leaf)
        return logits

    def _batch_cache(self):
        if self.batch is None:
            longest = self.prompt_length + self.max_new + self.cfg.rollout_tokens + 1
            self.batch = self.model.new_cache(self.leaf_batch, longest)
        return self.batch

    def _fill(self, rows: list) -> list:
        """``rows`` (one per leaf) repeated at the end up to the batch cache's ``leaf_batch`` rows: a batch
        with fewer leaves reuses the one cache (its extra rows' outputs are ignored) instead of keeping a
        cache for every size."""
        return rows + [rows[0]] * (self.leaf_batch - len(rows))

    def _run_padded(self, sequences: list[list[int]], cache, real: int) -> torch.Tensor:
        """The naive mode's batched forward: whole sequences, left-padded, on an emptied ``cache``;
        ``real``: how many of them are leaves (the rest only fill the batch)."""
        T = max(len(q) for q in sequences)
        ids = torch.zeros(len(sequences), T, dtype=torch.long, device=self.device)
        mask = torch.zeros(len(sequences), T, dtype=torch.bool, device=self.device)
        for i, q in enumerate(sequences):
            ids[i, T - len(q):] = torch.tensor(q, dtype=torch.long, device=self.device)
            mask[i, T - len(q):] = True
        cache.crop(0)
        return self._run(ids, cache, mask, sum(len(q) for q in sequences[:real]))[:real]

    def _batch_logits(self, paths: list[list[Node]]):
        """Next-token logits [k, V] after each of ``k`` paths, from one forward; also the batch cache.

        Row ``i`` of a ``k``-row cache is assembled as ``padding + root context + path_i[:-1]`` (the
        working cache is loaded with the path's slices, as for one leaf, then copied into the row
        right-aligned with ``write_row``), so that every leaf token sits in the same, last column; one
        forward of the ``k`` leaf tokens then evaluates them all. Each leaf's new K/V column is read back
        through a batch-1 scratch cache (``read_column`` reads row 0).
        """
        batch, rows = self._batch_cache(), self._fill(paths)
        if not self.cfg.use_cache:
            return self._run_padded([self.context + [n.token for n in p] for p in rows], batch, len(paths)), batch
        width = len(self.context) + max(len(p) for p in paths) - 1  # columns before the leaf tokens
        batch.crop(0)
        batch.append_mask(torch.zeros(len(rows), width, dtype=torch.bool, device=self.device), width)
        for i, path in enumerate(paths):
            self._load_prefix(path[:-1])
            batch.write_row(i, self.cache)
        for i in range(len(paths), len(rows)):  # the filler rows: the last leaf's row once more
            batch.write_row(i, self.cache)
        ids = torch.tensor([[p[-1].token] for p in rows], dtype=torch.long, device=self.device)
        ids[len(paths):] = ids[len(paths) - 1]
        logits = self._run(ids, batch, None, len(paths))[:len(paths)]
        if self.scratch is None:
            self.scratch = self.model.new_cache(1, batch.max_len)
        for i, path in enumerate(paths):
            self.scratch.crop(0)
            self.scratch.append_mask(torch.zeros(1, batch.length, dtype=torch.bool, device=self.device),
                                     batch.length)
            self.scratch.write_row(0, batch, i)
            path[-1].kv = self.scratch.read_column(batch.length - 1)
        self.stats["kv_bytes_per_node"] = sum(t.numel() * t.element_size() for t in paths[-1][-1].kv)
        return logits, batch

    def _rollout(self, path: list[Node], logits: torch.Tensor) -> tuple[list[int], list[float]]:
        """Greedy continuation of ``rollout_tokens`` tokens after the leaf (stops at EOS / horizon)."""
        n = min(self.cfg.rollout_tokens, self.max_new - path[-1].gen_index)
        tokens, logprobs = [], []
        for i in range(n):
            logp = torch.log_softmax(logits, -1)
            tok = int(logp.argmax())
            tokens.append(tok)
            logprobs.append(float(logp[tok]))
            if tok in self.cfg.eos or i == n - 1:
                break
            if self.cfg.use_cache:
                logits = self._forward([tok])
            else:
                self.cache.crop(0)
                logits = self._forward(self.context + [p.token for p in path] + tokens)
        return tokens, logprobs

    def _rollout_batch(self, paths: list[list[Node]], logits: torch.Tensor, batch):
        """:meth:`_rollout` for ``k`` leaves at once: one batched forward per rollout token (rows that
        stopped keep feeding their last token, whose output is ignored)."""
        limits = [min(self.cfg.rollout_tokens, self.max_new - p[-1].gen_index) for p in paths]
        tokens: list[list[int]] = [[] for _ in paths]
        logprobs: list[list[float]] = [[] for _ in paths]
        active = [i for i, n in enumerate(limits) if n > 0]
        while active:
            logp = torch.log_softmax(logits, -1)
            best = logp.argmax(-1).tolist()
            still = []
            for i in active:
                tokens[i].append(best[i])
                logprobs[i].append(float(logp[i, best[i]]))
                if best[i] not in self.cfg.eos and len(tokens[i]) < limits[i]:
                    still.append(i)
            active = still
            if not active:
                break
            if self.cfg.use_cache:
                last = [t[-1] if t else p[-1].token for t, p in zip(tokens, paths)]
                ids = torch.tensor(self._fill(last), dtype=torch.long, device=self.device)[:, None]
                logits = self._run(ids, batch, None, len(paths))[:len(paths)]
            else:
                sequences = [self.context + [n.token for n in p] + t for p, t in zip(paths, tokens)]
                logits = self._run_padded(self._fill(sequences), batch, len(paths))
        return list(zip(tokens, logprobs))

    # -- the four steps -----------------------------------------------------------------------------
    def _expand(self, node: Node, logits: torch.Tensor):
        """Children = the top-k tokens of ``logits`` with priors softmax(top-k logits / temperature)."""
        k = min(self.cfg.top_k, logits.shape[-1])
        top = torch.topk(logits, k)
        keep = torch.isfinite(top.values)
        keep[0] = True
        values, indices = top.values[keep], top.indices[keep]
        priors = torch.softmax(values / self.cfg.temperature, -1).tolist()
        logprobs = torch.log_softmax(logits, -1)[indices].tolist()
        g = node.gen_index + 1
        node.children = []
        for tok, prior, lp in zip(indices.tolist(), priors, logprobs):
            eos = tok in self.cfg.eos
            node.children.append(Node(tok, prior, lp, g, eos=eos, terminal=eos or g >= self.max_new))
        self.stats["nodes_expanded"] += 1

    def _evaluate(self, path: list[Node], rollout: list[int] = (), rollout_lps: list[float] = ()) -> float:
        cfg = self.cfg
        ids = self.context + [n.token for n in path] + list(rollout)
        lps = [n.logprob for n in path] + list(rollout_lps)
        ends_with_eos = path[-1].eos or (len(rollout) > 0 and rollout[-1] in cfg.eos)
        ctx = ValueContext(
            token_ids=torch.tensor(ids, dtype=torch.long, device=self.device),
            prompt_length=self.prompt_length, num_committed=len(self.committed_logprobs),
            path_length=len(path), rollout_length=len(rollout),
            logprobs=torch.tensor(lps, dtype=torch.float32, device=self.device),
            committed_logprobs=torch.tensor(self.committed_logprobs, dtype=torch.float32, device=self.device),
            ends_with_eos=bool(ends_with_eos), tokenizer=cfg.tokenizer, generator=cfg.generator)
        value = cfg.value_fn(ctx)
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"value_fn must return a number in [0, 1], got {value!r}") from None
        if not 0.0 <= value <= 1.0:  # also catches NaN
            raise ValueError(f"value_fn must return a number in [0, 1], got {value!r} "
                             "(map scores into [0, 1], e.g. with a sigmoid)")
        return value

    def _select(self) -> list[Node]:
        """1. Selection: the path from the root down to the first node that is not expanded."""
        node, path = self.root, []
        while node.expanded:
            node = select_child(node, self.cfg.c_puct)
            path.append(node)
        return path

    def _terminal_value(self, path: list[Node]) -> float:
        node = path[-1]  # EOS or the horizon: scored (once), never expanded
        if node.fixed_value is None:
            node.fixed_value = self._evaluate(path)
        return node.fixed_value

    def _add_visits(self, path: list[Node], n: int):
        """A virtual loss (``n = 1``: one visit of value 0 along ``path``) or its removal (``n = -1``)."""
        self.root.visits += n
        for node in path:
            node.visits += n

    def _backup(self, path: list[Node], value: float):
        """4. Backup: one visit of ``value`` on the root and every node of ``path`` (a running mean)."""
        self.root.visits += 1
        self.root.value_sum += value
        for n in path:
            n.visits += 1
            n.value_sum += value
        self.stats["simulations"] += 1
        self.stats["max_depth"] = max(self.stats["max_depth"], len(path))

    def simulate(self):
        """One simulation, its leaf evaluated alone (``leaf_batch=1``)."""
        path = self._select()
        node = path[-1] if path else self.root
        if node.terminal:
            value = self._terminal_value(path)
        else:  # 2. expansion on the node's own path, 3. evaluation
            logits = self._leaf_logits(path)
            self._expand(node, logits)
            rollout, rollout_lps = self._rollout(path, logits) if self.cfg.rollout_tokens else ([], [])
            value = self._evaluate(path, rollout, rollout_lps)
            self.stats["evaluations"] += 1
            self.stats["leaf_batches"] += 1
        self._backup(path, value)

    def simulate_batch(self, k: int, budget: int) -> int:
        """At most ``budget`` simulations, whose leaves (up to ``k``) are evaluated by one batched forward;
        returns how many ran.

        Each selection adds a virtual loss to its path (one visit of value 0), so the next selection is
        pushed towards other leaves; a selection that ends on a terminal node is scored and backed up at
        once (no forward: it does not take a place in the batch). A selection that reaches a leaf already
        waiting in this batch is no simulation: it leaves one more virtual loss on that path (removed
        before the leaves are evaluated) and selection goes on, until ``k`` such collisions end the batch
        early. The leaves are then expanded and scored together, and each virtual loss is replaced by
        the real visit. With ``k = 1`` this is exactly :meth:`simulate`.
        """
        pending: list[list[Node]] = []
        collided: list[list[Node]] = []  # selections that reached a waiting leaf: one more virtual loss each
        waiting: set[int] = set()
        scored = 0
        while len(pending) < k and scored + len(pending) < budget:
            path = self._select()
            node = path[-1] if path else self.root
            if node.terminal:
                self._backup(path, self._terminal_value(path))
                scored += 1
                continue
            self._add_visits(path, 1)
            if id(node) in waiting:  # this leaf is already on its way: push the next selection elsewhere
                collided.append(path)
                if len(collided) >= k:
                    break
                continue
            waiting.add(id(node))
            pending.append(path)
        for path in collided:  # not simulations: they only steered the selections of this batch
            self._add_visits(path, -1)
        if len(pending) == 1:  # one leaf: the working cache alone is cheaper
            self._add_visits(pending[0], -1)
            path = pending[0]
            logits = self._leaf_logits(path)
            self._expand(path[-1], logits)
            rollout, rollout_lps = self._rollout(path, logits) if self.cfg.rollout_tokens else ([], [])
            self._backup(path, self._evaluate(path, rollout, rollout_lps))
            self.stats["evaluations"] += 1
            self.stats["leaf_batches"] += 1
        elif pending:
            logits, batch = self._batch_logits(pending)
            for path, row in zip(pending, logits):
                self._expand(path[-1], row)
            rollouts = (self._rollout_batch(pending, logits, batch) if self.cfg.rollout_tokens
                        else [([], [])] * len(pending))
            values = [self._evaluate(path, *r) for path, r in zip(pending, rollouts)]
            for path, value in zip(pending, values):
                self._add_visits(path, -1)
                self._backup(path, value)
            self.stats["evaluations"] += len(pending)
            self.stats["leaf_batches"] += 1
        return scored + len(pending)

    def search(self):
        self.stats["reused_visits"].append(self.root.visits)
        start = time.perf_counter()
        left = self.cfg.num_simulations
        while left:
            if self.leaf_batch == 1:
                self.simulate()
                left -= 1
            else:
                left -= self.simulate_batch(self.leaf_batch, left)
        self.stats["seconds"] += time.perf_counter() - start

    def release(self):
        self.root, self.cache, self.cached_path = None, None, []
        self.batch, self.scratch = None, None

    def commit(self) -> Node:
        """Commit the most visited child (or sample by visits ** (1/tau)) and make it the new root."""
        children = self.root.children
        tau = self.cfg.commit_temperature
        if tau == 0:
            best = max(range(len(children)), key=lambda i: (children[i].visits, children[i].prior))
        else:
            gen = self.cfg.generator
            visits = torch.tensor([c.visits for c in children], dtype=torch.float64,
                                  device=gen.device if gen is not None else "cpu")
            weights = torch.softmax(torch.log(visits) / tau, -1)  # visits ** (1/tau), overflow-free
            best = int(torch.multinomial(weights, 1, generator=gen))
        child = children[best]
        if self.cfg.use_cache and child.kv is not None:
            if self.cached_path and self.cached_path[0] is child:
                self.cached_path.pop(0)  # its K/V already sit right after the root context
            else:
                self.cache.crop(len(self.context))
                self.cache.append_columns(*_stack_columns([child.kv]))
                self.stats["kv_slices_written"] += 1
                self.cached_path = []
        self.context.append(child.token)
        self.committed_logprobs.append(child.logprob)
        self.root = child  # siblings (and their K/V) are dropped; the child's subtree is kept
        return child


# --------------------------------------------------------------------------------------------------------
# The decoder
# --------------------------------------------------------------------------------------------------------
def _summarise(rows: list[dict], use_cache: bool, leaf_batch: list[int]) -> dict:
    total = {k: sum(r[k] for r in rows) for k in ("simulations", "evaluations", "forwards", "forward_tokens",
                                                  "prefill_tokens", "kv_slices_written", "nodes_expanded",
                                                  "seconds", "leaf_batches")}
    sims = max(total["simulations"], 1)
    total.update(
        use_cache=use_cache,
        leaf_batch=max(leaf_batch, default=1),
        leaves_per_batch=total["evaluations"] / max(total["leaf_batches"], 1),
        forwards_per_simulation=total["forwards"] / sims,
        tokens_per_simulation=total["forward_tokens"] / sims,
        ms_per_simulation=1000 * total["seconds"] / sims,
        kv_bytes_per_node=max((r["kv_bytes_per_node"] for r in rows), default=0),
        max_depth=max((r["max_depth"] for r in rows), default=0),
        rows=rows)
    return total


@register_decoder("mcts")
def mcts_decode(model, input_ids, max_new_tokens=100, num_simulations=50, c_puct=1.0, temperature=1.0,
                top_k=10, value_fn=None, rollout_tokens=0, *, attention_mask=None, eos_token_id=None,
                pad_token_id=None, seed=None, generator=None, streamer=None, stopping=None,
                return_dict=False, tokenizer=None, use_cache=True, commit_temperature=0.0, leaf_batch=None):
    """Generate by Monte Carlo tree search: ``num_simulations`` PUCT simulations before each token.

    ``model``/``input_ids`` [B, T]/``attention_mask``: as every decoder (left padding; rows are searched
    one by one, each in its own tree). Search parameters:

    * ``num_simulations`` (>= 1): simulations per committed token (the subtree of the committed token is
      reused, so later tokens start with visits already spent).
    * ``c_puct`` (>= 0): exploration weight in ``Q + c_puct * P * sqrt(N_parent) / (1 + N)``; 0 is pure
      exploitation of Q. Values live in [0, 1]; the papers use 3-8 with their rewards.
    * ``temperature`` (> 0) and ``top_k`` (>= 1): priors are ``softmax(logits / temperature)`` restricted
      to (and renormalised over) each node's ``top_k`` tokens, the only actions the tree considers.
    * ``value_fn(ctx) -> float in [0, 1]`` (default :func:`likelihood_value`); ``ctx`` is a
      :class:`ValueContext`. See :func:`keyword_reward`, :func:`length_reward`, :func:`mix`.
    * ``rollout_tokens`` (>= 0): greedy tokens appended after each evaluated leaf before scoring it.
    * ``commit_temperature`` (>= 0): 0 commits the most visited child (ties: higher prior); tau > 0
      samples a child with probability proportional to ``visits ** (1 / tau)`` (``seed``/``generator``).
    * ``use_cache``: True evaluates a leaf with one single-token forward on a cache assembled from the
      path's K/V slices; False re-runs the whole prefix for every evaluation (the naive baseline: same
      tree, slower).
    * ``leaf_batch`` (>= 1, or None): how many simulations evaluate their leaves together, in one
      batched forward pass. Each selection adds a *virtual loss* to its path (a visit of value 0, so
      the next selection tries another leaf); after the batched evaluation the virtual visits become
      real ones carrying the leaves' values. 1 is the plain sequential search (each simulation sees
      every earlier value); larger batches trade a little of that for speed (the tree statistics are
      those of the same search in expectation, slightly broadened by the virtual losses). None picks
      ``DEFAULT_LEAF_BATCH`` (8) where the model's cache can assemble a batch of paths (``write_row``:
      infergen's native cache), else 1.
    * ``tokenizer``: optional, only to fill ``ctx.text`` for text-based value functions. (Through
      ``infergen.generate``, whose own second argument is called ``tokenizer``, give the tokenizer to the
      value function instead: ``keyword_reward("Paris", tokenizer=tok)``.)

    Returns [B, T + n] ids, or with ``return_dict=True`` a ``GenerationOutput`` whose ``logprobs`` are
    the model's log-probs of the committed tokens and whose ``info`` holds ``"tree"`` (row 0's tree for
    the first token, a :class:`TreeNode`), ``"trees"`` (the same for every row) and ``"stats"``
    (``simulations``; ``evaluations``: the simulations that ended on a non-terminal leaf and so ran
    the model -- the others re-scored an EOS or horizon node for free; forwards and tokens per
    simulation, ms per simulation, K/V slices written, bytes of one node's K/V slice, ``leaf_batch``,
    ``leaves_per_batch`` (the mean number of leaves a batched forward evaluated), and per-row counters
    including ``reused_visits``: the visits each step's root already had from the previous search).

    What a simulation costs: with ``leaf_batch=1``, one single-token forward (plus ``rollout_tokens - 1``
    for a rollout); with ``leaf_batch=k`` one batched forward of about ``k`` leaf tokens serves about
    ``k`` simulations, so ``forwards_per_simulation`` falls to about ``1/k`` while
    ``tokens_per_simulation`` stays about 1 (per evaluated leaf). On a CPU a decode forward is bound by
    reading the weights, which a batch reads once, so a forward of 8 leaves costs about what one of a
    single leaf does. Measured on the bundled SmolLM2-135M (float32, CPU, 1 thread; 10 tokens at 50
    simulations, top_k 10; ``benchmarks/mcts_speed.py``, alternating runs): the sequential search runs
    0.15 forwards per simulation (most simulations end on an EOS or horizon node, scored without a
    forward), ``leaf_batch=8`` 0.03 (4.9 leaves per forward), and reached 3.5x the tokens/s at a load
    average of 12-14 on 2 cores (5.1x in a run at load 10), with the same committed tokens.
    """
    check_number("num_simulations", num_simulations, low=1, integer=True)
    check_number("c_puct", c_puct, low=0, high=math.inf, high_open=True)
    check_number("temperature", temperature, low=0, high=math.inf, low_open=True, high_open=True)
    check_number("top_k", top_k, low=1, integer=True)
    check_number("rollout_tokens", rollout_tokens, low=0, integer=True)
    check_number("commit_temperature", commit_temperature, low=0, high=math.inf, high_open=True)
    check_number("leaf_batch", leaf_batch, low=1, integer=True, allow_none=True)
    if value_fn is None:
        value_fn = likelihood_value
    elif not callable(value_fn):
        raise TypeError(f"value_fn must be a callable ctx -> float in [0, 1] (or None for the model's "
                        f"likelihood), got {type(value_fn).__name__}")
    if not isinstance(use_cache, bool):
        raise TypeError(f"use_cache must be True or False, got {use_cache!r}")
    if stopping is not None and not callable(stopping):
        raise TypeError(f"stopping must be a callable new_tokens -> BoolTensor [B], got {type(stopping).__name__}")

    setup, _ = prepare(model, input_ids, max_new_tokens, attention_mask=attention_mask,
                       eos_token_id=eos_token_id, pad_token_id=pad_token_id, allocate=False)
    model = setup.model
    B = setup.input_ids.shape[0]
    gen = make_generator(seed, generator, device=model.device)
    cfg = _Config(int(num_simulations), float(c_puct), float(temperature), int(top_k), value_fn,
                  int(rollout_tokens), use_cache, float(commit_temperature), frozenset(setup.eos.tolist()),
                  tokenizer, gen, None if leaf_batch is None else int(leaf_batch))
    rows = Rows(setup, stopping=stopping, streamer=streamer)
    searches: list[_RowSearch | None] = [None] * B
    trees: list[TreeNode | None] = [None] * B
    dev = setup.input_ids.device
    with torch.inference_mode():
        for step in range(max_new_tokens):
            tokens = torch.full((B,), setup.pad_token_id, dtype=torch.long, device=dev)
            logprobs = torch.zeros(B, device=dev)
            for b in range(B):
                if rows.done[b]:
                    continue
                if searches[b] is None:
                    prompt = setup.input_ids[b][setup.attention_mask[b]].tolist()
                    searches[b] = _RowSearch(model, prompt, max_new_tokens, cfg)
                search = searches[b]
                search.search()
                if step == 0:
                    trees[b] = snapshot(search.root)
                child = search.commit()
                tokens[b], logprobs[b] = child.token, child.logprob
            _, all_done = rows.commit(tokens, logprobs=logprobs)
            for b in rows.done.nonzero().flatten().tolist():
                if searches[b] is not None:
                    searches[b].release()  # a finished row's tree and cache are not needed any more
            if all_done:
                break
    done = [s for s in searches if s is not None]
    stats = _summarise([s.stats for s in done], use_cache, [s.leaf_batch for s in done])
    info = {"tree": trees[0], "trees": trees, "stats": stats}
    return rows.output(return_dict, info=info)
