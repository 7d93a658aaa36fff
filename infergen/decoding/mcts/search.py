"""The search of one row (:class:`RowSearch`) and the decoder :func:`mcts_decode`.

One code path: every call to :meth:`RowSearch.simulate` selects up to ``leaf_batch`` leaves (each
adding a virtual loss to its path), evaluates them with one forward pass of their leaf tokens, expands
them, scores them and backs the values up. ``leaf_batch = 1`` is the sequential search, the same code
with batches of one leaf (a one-row batch cache).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..._validation import check_callable, check_number
from ...cache import ColumnCache, CropCache, RowCache, require
from ...params import SamplingParams, setting
from ...pipeline import LogitsPipeline
from ...processors import check_finite_row
from ...registry import register_decoder
from ..base import make_generator, prepare
from ..steps import Rows, Sampler, decode_one, last_logits, log_probs, prefill, token_logprobs
from .tree import Node, select_child, snapshot
from .values import ValueContext, ValueFn, likelihood_value


#: Leaves evaluated per batched forward by default: the fastest of 4, 8 and 16 on the bundled model
#: (benchmarks/results/mcts/speed.md).
DEFAULT_LEAF_BATCH = 8

#: The counters every row's search keeps in ``stats`` (summed over the rows by :func:`summarise`).
COUNTERS = ("simulations", "evaluations", "forwards", "forward_tokens", "leaf_batches")


@dataclass
class SearchConfig:
    """The validated settings every row's search shares (built once by :func:`mcts_decode`).

    ``priors`` and ``commit`` are the :class:`~infergen.params.SamplingParams` of ``temperature`` and
    ``commit_temperature``: temperature 0 is greedy by the library's one rule (one-hot priors; commit
    the most visited child). ``leaf_batch`` None: :data:`DEFAULT_LEAF_BATCH`.
    """

    num_simulations: int
    c_puct: float
    top_k: int
    value_fn: ValueFn
    rollout_tokens: int
    eos: frozenset
    priors: SamplingParams = SamplingParams()
    commit: SamplingParams = SamplingParams(temperature=0)
    tokenizer: Any = None
    generator: torch.Generator | None = None
    leaf_batch: int | None = None


class RowSearch:
    """The tree, the working cache and the counters of one batch row.

    The working cache (batch 1) holds the root context, then the K/V slices of the last path loaded
    (:meth:`load`); the batch cache (``leaf_batch`` rows) is where leaves are evaluated.
    The model is called by :meth:`leaf_logits` and :meth:`rollout_logits` only (a subclass that evaluates
    leaves differently overrides those two: infergen/bench/mcts_nocache.py).
    """

    def __init__(self, model, prompt: list[int], max_new_tokens: int, cfg: SearchConfig):
        self.model, self.cfg, self.max_new, self.device = model, cfg, max_new_tokens, model.device
        self.context, self.prompt_length = list(prompt), len(prompt)  # prompt + committed tokens
        self.committed_logprobs: list[float] = []
        self.cache = model.new_cache(1, len(prompt) + max_new_tokens)
        self.leaf_batch = cfg.leaf_batch or DEFAULT_LEAF_BATCH
        for needed in (ColumnCache, CropCache, RowCache):  # see load and leaf_logits
            require(self.cache, needed, f"mcts_decode with leaf_batch={self.leaf_batch}")
        longest = len(prompt) + max_new_tokens + cfg.rollout_tokens + 1  # a path, then its rollout
        self.batch: Any = model.new_cache(self.leaf_batch, longest)
        self.priors = LogitsPipeline.from_params(cfg.priors)  # one-hot priors at temperature 0
        self.chooser = Sampler(cfg.commit, generator=cfg.generator)
        self.rollout_sampler = Sampler(SamplingParams(temperature=0))  # rollouts are greedy
        self.stats: dict[str, Any] = dict.fromkeys(COUNTERS, 0) | {"reused_visits": []}
        self.root = Node()
        ids = torch.tensor([self.context], device=self.device)
        self.expand(self.root, check_finite_row(last_logits(prefill(model, ids, self.cache))[0]))

    # -- model calls ----------------------------------------------------------------------------------
    def forward(self, tokens: list[int], cache) -> torch.Tensor:
        """Next-token logits [k, V] after one decode step of ``tokens`` (one per leaf) on ``cache``. The
        last token is repeated to fill the cache's rows: a batch of fewer leaves reuses the one cache, and
        the extra rows' outputs are ignored."""
        n = len(tokens)
        ids = torch.tensor(tokens + tokens[-1:] * (cache.batch_size - n), device=self.device)
        self.stats["forwards"] += 1
        self.stats["forward_tokens"] += n
        return check_finite_row(last_logits(decode_one(self.model, ids, cache))[:n])

    def load(self, prefix: list[Node]):
        """Make the working cache hold the root context + ``prefix``'s K/V slices. (The slices of a path
        shared with the previous one are appended again: copying them costs little next to copying the
        whole row into the batch cache, which :meth:`leaf_logits` does next.)"""
        self.cache.crop(len(self.context))
        if prefix:  # the keys, then the values: [layers, kv_heads, len(prefix), head_dim] each
            self.cache.append_columns(*(torch.stack([n.kv[i] for n in prefix], 2) for i in (0, 1)))

    def leaf_logits(self, paths: list[list[Node]]):
        """Next-token logits [k, V] after each of ``k`` paths, from one forward of their leaf tokens, and
        the cache it ran on; each leaf keeps its new K/V slice.

        The leaves run on the ``leaf_batch``-row cache, whose row ``i`` becomes ``padding + root context +
        path_i[:-1]`` (the working cache loaded with the path's slices, then copied in right-aligned with
        ``write_row``), so that every leaf token sits in the same, last column, read back per row.
        """
        cache, width = self.batch, len(self.context) + max(len(p) for p in paths) - 1
        cache.crop(0).append_mask(torch.zeros(cache.batch_size, width, dtype=torch.bool, device=self.device), width)
        for i in range(cache.batch_size):  # the rows after the last leaf repeat it
            self.load(paths[min(i, len(paths) - 1)][:-1])
            cache.write_row(i, self.cache)
        logits = self.forward([p[-1].token for p in paths], cache)
        for i, path in enumerate(paths):
            path[-1].kv = cache.read_column(cache.length - 1, i)
        return logits, cache

    def rollout_logits(self, paths: list[list[Node]], rollouts: list[list[int]], cache) -> torch.Tensor:
        """Next-token logits [k, V] after each path and its rollout so far: one decode step of the last
        tokens on the cache :meth:`leaf_logits` used (rows that stopped feed a token that is ignored)."""
        return self.forward([r[-1] if r else p[-1].token for p, r in zip(paths, rollouts)], cache)

    # -- the four steps -------------------------------------------------------------------------------
    def select(self) -> list[Node]:
        """1. Selection: the path from the root down to the first node that is not expanded."""
        node, path = self.root, []
        while node.children is not None:
            node = select_child(node, self.cfg.c_puct)
            path.append(node)
        return path

    def expand(self, node: Node, logits: torch.Tensor):
        """2. Expansion: children = the top-k tokens of ``logits`` [V], priors = the softmax of their
        logits under the prior temperature (one-hot at temperature 0)."""
        values, indices = torch.topk(logits, min(self.cfg.top_k, logits.shape[-1]))
        # -inf tokens are no action (the first is finite: the logits passed check_finite_row)
        values, indices = values[values.isfinite()], indices[values.isfinite()]
        priors = torch.softmax(self.priors(values[None])[0], -1).tolist()
        logprobs = log_probs(logits)[indices].tolist()
        g = node.gen_index + 1
        node.children = [Node(t, p, lp, g, eos=t in self.cfg.eos, terminal=t in self.cfg.eos or g >= self.max_new)
                         for t, p, lp in zip(indices.tolist(), priors, logprobs)]

    def rollouts(self, paths: list[list[Node]], logits: torch.Tensor, cache) -> list[tuple[list, list]]:
        """Greedy continuations of up to ``rollout_tokens`` tokens after each leaf (stopping at EOS or the
        horizon), advanced together: one forward per rollout token. Returns ``(tokens, logprobs)`` per leaf."""
        limits = [min(self.cfg.rollout_tokens, self.max_new - p[-1].gen_index) for p in paths]
        tokens: list[list[int]] = [[] for _ in paths]
        logprobs: list[list[float]] = [[] for _ in paths]
        active = [i for i, n in enumerate(limits) if n > 0]
        while active:
            best = self.rollout_sampler(logits)
            chosen, lps = best.tolist(), token_logprobs(logits, best).tolist()
            for i in active:
                tokens[i].append(chosen[i])
                logprobs[i].append(lps[i])
            active = [i for i in active if tokens[i][-1] not in self.cfg.eos and len(tokens[i]) < limits[i]]
            if active:
                logits = self.rollout_logits(paths, tokens, cache)
        return list(zip(tokens, logprobs))

    def evaluate(self, path: list[Node], rollout: Sequence[int] = (), rollout_lps: Sequence[float] = ()) -> float:
        """3. Evaluation: ``value_fn`` of the path and its rollout, checked to be a number in ``[0, 1]``."""
        cfg, dev = self.cfg, self.device
        ctx = ValueContext(torch.tensor(self.context + [n.token for n in path] + list(rollout), device=dev),
                           self.prompt_length, len(self.committed_logprobs), len(path), len(rollout),
                           torch.tensor([n.logprob for n in path] + list(rollout_lps), device=dev),
                           torch.tensor(self.committed_logprobs, device=dev),  # (a rollout stops at its EOS:)
                           path[-1].eos or not cfg.eos.isdisjoint(rollout), cfg.tokenizer, cfg.generator)
        return float(check_number("value_fn(ctx)", cfg.value_fn(ctx), low=0, high=1))

    def backup(self, path: list[Node], value: float, visits: int = 1):
        """4. Backup: ``visits`` visits of ``value`` on the root and every node of ``path``. A virtual loss
        is ``backup(path, 0.0)``; :meth:`simulate` turns a leaf's virtual losses into one real visit with
        ``backup(path, value, 1 - leaf.visits)``."""
        for n in [self.root] + path:
            n.visits += visits
            n.value_sum += value

    def simulate(self, budget: int) -> int:
        """At most ``budget`` simulations whose new leaves (up to ``leaf_batch``) are evaluated together;
        returns how many ran.

        Each selection adds a virtual loss to its path (one visit of value 0), so the next selection is
        pushed towards other leaves; a selection that ends on a terminal node is scored and backed up at
        once (it needs no forward). A selection that reaches a leaf already waiting in this batch is no
        simulation: it leaves one more virtual loss on that path, until ``leaf_batch`` such collisions
        end the batch early. The leaves are then expanded and scored together, and each leaf's virtual
        losses are replaced by one real visit: a waiting leaf was never evaluated, so every visit it holds
        is a virtual loss of this batch (one per selection that reached it), and its path's backup adds
        ``1 - leaf.visits`` visits with the value. With one leaf per batch this is the sequential search:
        no selection ever sees a virtual loss.
        """
        k, scored, collisions = self.leaf_batch, 0, 0
        pending: list[list[Node]] = []
        while len(pending) < k and scored + len(pending) < budget and collisions < k:
            path = self.select()
            leaf = path[-1]
            if leaf.terminal:  # EOS or the horizon: scored once, never expanded
                leaf.fixed_value = self.evaluate(path) if leaf.fixed_value is None else leaf.fixed_value
                self.backup(path, leaf.fixed_value)
                scored += 1
                continue
            self.backup(path, 0.0)  # the virtual loss: the next selection is pushed elsewhere
            if any(leaf is p[-1] for p in pending):  # a collision: no simulation, only steering
                collisions += 1
            else:
                pending.append(path)
        if pending:
            logits, cache = self.leaf_logits(pending)
            for path, row in zip(pending, logits):
                self.expand(path[-1], row)
            for path, rollout in zip(pending, self.rollouts(pending, logits, cache)):  # empty if rollout_tokens=0
                self.backup(path, self.evaluate(path, *rollout), 1 - path[-1].visits)  # virtual losses -> 1 visit
            self.stats["evaluations"] += len(pending)
            self.stats["leaf_batches"] += 1
        self.stats["simulations"] += scored + len(pending)
        return scored + len(pending)

    def search(self):
        """Run ``num_simulations`` simulations from the current root (which keeps its earlier visits)."""
        self.stats["reused_visits"].append(self.root.visits)
        left = self.cfg.num_simulations
        while left:
            left -= self.simulate(left)

    def commit(self) -> Node:
        """Commit a child of the root and make it the new root, keeping its subtree: the most visited one
        (ties: the higher prior, listed first), or at ``commit_temperature`` tau > 0 one sampled with
        probability proportional to ``visits ** (1 / tau)`` (the softmax of ``log(visits) / tau``)."""
        children, gen = self.root.children or [], self.cfg.generator
        visits = torch.tensor([float(c.visits) for c in children], device=gen.device if gen is not None else "cpu")
        child = children[int(self.chooser(visits.log()[None])[0])]
        if child.kv is not None:  # its K/V go right after the root context, which it joins
            self.load([child])
        self.context.append(child.token)
        self.committed_logprobs.append(child.logprob)
        self.root = child  # siblings (and their K/V) are dropped; the child's subtree is kept
        return child


def summarise(searches: list[RowSearch]) -> dict:
    """The counters of every row's search, summed, with the per-simulation ratios and ``rows``."""
    rows = [s.stats for s in searches]
    total = {k: sum(r[k] for r in rows) for k in COUNTERS}
    sims = max(total["simulations"], 1)
    return dict(total, leaf_batch=max((s.leaf_batch for s in searches), default=1), rows=rows,
                leaves_per_batch=total["evaluations"] / max(total["leaf_batches"], 1),
                forwards_per_simulation=total["forwards"] / sims, tokens_per_simulation=total["forward_tokens"] / sims)


def run_searches(searches: list[RowSearch], rows: Rows, max_new_tokens: int) -> list[Node | None]:
    """The decoder's loop over tokens: every unfinished row runs its search and commits a child of its root,
    and :meth:`Rows.commit <infergen.Rows.commit>` records the column (a finished row's entry is ignored:
    the commit pads it). Returns each row's tree for its first token (a :func:`snapshot`)."""
    B, dev = len(rows.done), rows.done.device
    trees: list[Node | None] = [None] * B
    for _ in range(max_new_tokens):
        tokens, logprobs = torch.zeros(B, dtype=torch.long, device=dev), torch.zeros(B, device=dev)
        for b in (~rows.done).nonzero().flatten().tolist():
            searches[b].search()
            trees[b] = trees[b] or snapshot(searches[b].root)
            child = searches[b].commit()
            tokens[b], logprobs[b] = child.token, child.logprob
        if rows.commit(tokens, logprobs=logprobs)[1]:  # every row is done
            break
    return trees


@register_decoder("mcts")
def mcts_decode(model, input_ids, max_new_tokens=100, num_simulations=50, c_puct=1.0, temperature=1.0,
                top_k=10, value_fn=likelihood_value, rollout_tokens=0, *, attention_mask=None, eos_token_id=None,
                pad_token_id=None, seed=None, generator=None, streamer=None, stopping=None,
                return_dict=False, tokenizer=None, commit_temperature=0.0, leaf_batch=None):
    """Generate by Monte Carlo tree search: ``num_simulations`` PUCT simulations before each token.

    ``model``/``input_ids`` [B, T]/``attention_mask``: as every decoder (left padding; rows are searched
    one by one, each in its own tree). Search parameters:

    * ``num_simulations`` (>= 1): simulations per committed token (the subtree of the committed token is
      reused, so later tokens start with visits already spent).
    * ``c_puct`` (>= 0): exploration weight in ``Q + c_puct * P * sqrt(N_parent) / (1 + N)``; 0 is pure
      exploitation of Q. Values live in [0, 1]; the papers use 3-8 with their rewards.
    * ``temperature`` (>= 0) and ``top_k`` (>= 1): priors are ``softmax(logits / temperature)`` restricted
      to (and renormalised over) each node's ``top_k`` tokens, the only actions the tree considers;
      temperature 0 is greedy, as everywhere in the library: the prior is all on the most likely token.
    * ``value_fn(ctx) -> float in [0, 1]`` (default :func:`likelihood_value`); ``ctx`` is a
      :class:`ValueContext`. See :func:`length_reward`, :func:`mix` (and the keyword task's
      ``keyword_reward`` in :mod:`infergen.bench.lookahead`).
    * ``rollout_tokens`` (>= 0): greedy tokens appended after each evaluated leaf before scoring it.
    * ``commit_temperature`` (>= 0): 0 commits the most visited child (ties: higher prior); tau > 0
      samples a child with probability proportional to ``visits ** (1 / tau)`` (``seed``/``generator``).
    * ``leaf_batch`` (>= 1, or None): how many simulations evaluate their leaves together, in one
      batched forward pass. Each selection adds a *virtual loss* to its path (a visit of value 0, so
      the next selection tries another leaf); after the batched evaluation the virtual visits become
      real ones carrying the leaves' values. 1 is the plain sequential search (each simulation sees
      every earlier value); larger batches trade a little of that for speed. None picks
      :data:`DEFAULT_LEAF_BATCH` (8). The caches must crop, move columns and copy rows
      (:class:`~infergen.cache.CropCache`, :class:`~infergen.cache.ColumnCache`,
      :class:`~infergen.cache.RowCache`): a cache without them is refused up front.
    * ``tokenizer``: optional, only to fill ``ctx.text`` for text-based value functions. (Through
      ``infergen.generate``, whose own second argument is called ``tokenizer``, give the tokenizer to the
      value function instead, e.g. ``keyword_reward("Paris", tokenizer=tok)``.)

    Returns [B, T + n] ids, or with ``return_dict=True`` a ``GenerationOutput`` whose ``logprobs`` are
    the model's log-probs of the committed tokens and whose ``info`` holds ``"tree"`` (row 0's tree for
    the first token, a detached :class:`Node` tree, see :func:`snapshot`), ``"trees"`` (the same for every row) and ``"stats"``
    (``simulations``; ``evaluations``: the simulations that ended on a non-terminal leaf and so ran
    the model -- the others re-scored an EOS or horizon node for free; ``forwards``, ``forward_tokens``
    and their ratios per simulation, ``leaf_batch``, ``leaves_per_batch`` (the
    mean number of leaves a forward evaluated), and ``rows``: each row's counters, including
    ``reused_visits``: the visits each step's root already had from the previous search).

    What a simulation costs: one forward evaluates up to ``leaf_batch`` leaves (plus one per rollout
    token), so ``forwards_per_simulation`` falls to about ``1/leaf_batch`` while ``tokens_per_simulation``
    stays about 1. On a CPU a decode forward is bound by reading the weights, which a batch reads once.
    ``benchmarks/mcts_speed.py`` measures the tokens/s of ``leaf_batch`` 1 against 8 on the bundled model
    (its committed run: ``benchmarks/results/mcts/speed.md``), with the same committed tokens.
    """
    check_number("num_simulations", num_simulations, low=1, integer=True)
    check_number("c_puct", c_puct, low=0, high=math.inf, high_open=True)
    check_number("top_k", top_k, low=1, integer=True)
    check_number("rollout_tokens", rollout_tokens, low=0, integer=True)
    check_number("leaf_batch", leaf_batch, low=1, integer=True, allow_none=True)
    priors = SamplingParams(temperature=temperature)  # which checks it
    commit = SamplingParams(temperature=setting("temperature").check(commit_temperature, "commit_temperature"))
    check_callable("value_fn", value_fn)
    setup, _ = prepare(model, input_ids, max_new_tokens, attention_mask=attention_mask,
                       eos_token_id=eos_token_id, pad_token_id=pad_token_id, allocate=False)
    model = setup.model
    cfg = SearchConfig(int(num_simulations), float(c_puct), int(top_k), value_fn,
                       int(rollout_tokens), frozenset(setup.eos.tolist()), priors, commit, tokenizer,
                       make_generator(seed, generator, device=model.device), leaf_batch and int(leaf_batch))
    rows = Rows(setup, stopping=stopping, streamer=streamer)
    with torch.inference_mode():
        prompts = [ids[mask].tolist() for ids, mask in zip(setup.input_ids, setup.attention_mask)]
        searches = [RowSearch(model, p, max_new_tokens, cfg) for p in prompts] if max_new_tokens else []
        trees = run_searches(searches, rows, max_new_tokens)
    return rows.output(return_dict, info={"tree": trees[0], "trees": trees, "stats": summarise(searches)})
