"""The search tree: nodes, PUCT selection, and a detached copy for inspection and plotting.

The root is the text so far (prompt + committed tokens). Every other node is one token; the path from
the root to a node is a candidate continuation. A node stores its token, its **prior** ``P`` (the
model's tempered next-token probability of that token *given its own path*, renormalised over the
``top_k`` tokens of its parent), its visit count ``N`` and its value sum ``W`` (mean ``Q = W / N``).
"""
from __future__ import annotations

import copy
import math
from typing import Iterator


class Node:
    """One token of the search tree (the root holds no token: it is the text so far).

    ``prior``: P(token | path to the parent), tempered and renormalised over the parent's top-k.
    ``logprob``: the model's untempered log p(token | path to the parent) (for the likelihood value).
    ``visits`` / ``value_sum``: N and W; ``q`` = W / N (0 while unvisited). ``children`` is None until
    the node is expanded. ``kv``: this token's key/value slice once evaluated. ``gen_index``: how many
    new tokens the sequence has once this token is appended. ``terminal``: EOS or the horizon (scored,
    never expanded); ``fixed_value``: a terminal node's value, computed once. ``mcts_decode`` returns a
    detached copy of a tree (:func:`snapshot`); :meth:`walk`, :attr:`size` and :meth:`to_dict` inspect it.
    """

    __slots__ = ("token", "prior", "logprob", "gen_index", "eos", "terminal", "children", "visits",
                 "value_sum", "kv", "fixed_value")

    def __init__(self, token=None, prior=1.0, logprob=0.0, gen_index=0, eos=False, terminal=False):
        self.token, self.prior, self.logprob, self.gen_index = token, prior, logprob, gen_index
        self.eos, self.terminal = eos, terminal
        self.children: list[Node] | None = None
        self.visits, self.value_sum = 0, 0.0
        self.kv = None
        self.fixed_value: float | None = None

    @property
    def q(self) -> float:
        """The mean value ``W / N`` (0 while unvisited: pessimistic first play)."""
        return self.value_sum / self.visits if self.visits else 0.0

    def walk(self) -> Iterator[tuple[int, "Node"]]:
        """Every node below (and including) this one as ``(depth, node)``, depth first, in child order."""
        stack = [(0, self)]
        while stack:  # iterative: a deep tree must not hit Python's recursion limit
            depth, node = stack.pop()
            yield depth, node
            stack.extend((depth + 1, c) for c in reversed(node.children or ()))

    @property
    def size(self) -> int:
        """The number of nodes in this subtree."""
        return sum(1 for _ in self.walk())

    def to_dict(self) -> dict:
        """Plain nested dicts (``children`` a list of them, ``q`` the mean value): JSON-ready, and accepted
        by ``plot_tree``."""
        keys = ("token", "prior", "logprob", "visits", "value_sum", "q", "terminal", "eos")
        return {**{k: getattr(self, k) for k in keys}, "children": [c.to_dict() for c in self.children or ()]}


def puct_scores(node: Node, c_puct: float) -> list[float]:
    """PUCT score of each child: ``Q(a) + c_puct * P(a) * sqrt(N(parent)) / (1 + N(a))``.

    ``N(parent)`` is the parent's visit count (every simulation that passed through it, including the one
    that expanded it). Pitfall: UCT's ``sqrt(log N / n)`` ignores the prior and divides by zero for
    unvisited children; PUCT weights exploration by the model's own probability, so the search first
    explores what the model finds plausible.
    """
    sqrt_n = math.sqrt(node.visits)
    return [c.q + c_puct * c.prior * sqrt_n / (1 + c.visits) for c in node.children or ()]


def select_child(node: Node, c_puct: float) -> Node:
    """The child with the highest PUCT score (ties: the higher prior, then the first)."""
    scores, children = puct_scores(node, c_puct), node.children or []
    return children[max(range(len(scores)), key=lambda i: (scores[i], children[i].prior))]


def snapshot(root: Node) -> Node:
    """A detached copy of a live tree, as ``mcts_decode``'s ``info["tree"]``: the same numbers, no K/V,
    and nothing shared, so later searches (which keep updating the live nodes) do not change it. A node
    that was never expanded has ``children == []`` in the copy."""
    out = copy.copy(root)
    for _, node in out.walk():  # walk reaches a node's children after this replaced them by copies
        node.kv, node.children = None, [copy.copy(c) for c in node.children or ()]  # [] if never expanded
    return out
