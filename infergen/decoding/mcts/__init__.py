"""Monte Carlo tree search decoding: look ahead before committing each token.

Greedy and sampling decide token ``t`` from the distribution at ``t`` alone. A tree search first
*tries* several continuations, scores them with a **value function** (the model's own likelihood, a
keyword reward, a classifier ...), and only then commits the token whose subtree looked best. This
is how PPL-MCTS (Chaffin et al., 2022) and PPO-MCTS (Liu et al., 2024) steer a language model
towards a goal without retraining it.

The package has three modules: :mod:`~infergen.decoding.mcts.tree` (the nodes, PUCT selection, a
detached copy of a tree for plotting), :mod:`~infergen.decoding.mcts.values` (value functions) and
:mod:`~infergen.decoding.mcts.search` (the search of one row and the decoder :func:`mcts_decode`).

One simulation
--------------
1. *Selection.* From the root (the text so far), repeatedly descend to the child maximising PUCT (as
   in AlphaZero): ``Q(a) + c_puct * P(a) * sqrt(N(parent)) / (1 + N(a))``. ``Q`` pulls towards
   children that scored well (exploitation); the second term favours likely children that were rarely
   tried (exploration) and shrinks as they are visited. An unvisited child has ``Q = 0``, the bottom of
   the value range (pessimistic first play: exploration is driven by the prior). Ties go to the higher
   prior.
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
forward over ``prompt + committed + path`` tokens for *every* evaluation (the naive baseline, kept in
``infergen/bench/mcts_nocache.py`` for comparison). Instead, each evaluated node keeps only **its own
token's K/V slice** (``[layers, kv_heads, head_dim]`` for keys and for values; 46 KB per node for
SmolLM2-135M in float32, independent of the context length). One working cache per row holds the root
context; to evaluate a leaf we crop it back to the longest prefix of the path that is already there
(consecutive simulations share most of their path), write the remaining path slices into it (memory
copies, no compute), copy it into a row of the leaf cache and run **one single-token forward** of the
leaf's token there. Keeping a full cache per
node instead would cost ``context_length`` slices per node. K/V are stored after the rotary embedding,
which is valid because a node's absolute position never changes (a committed token keeps its column).

Several leaves per forward (``leaf_batch``)
-------------------------------------------
A single-token forward on a CPU costs about as much as reading every weight once, whether it carries one
token or eight. So ``leaf_batch = k`` selects ``k`` leaves in a row before evaluating any: each selection
adds a **virtual loss** to its path (a visit of value 0, which lowers ``Q`` and raises ``N`` along it),
so the next selection turns elsewhere, as in AlphaZero's parallel search. The ``k`` leaves are then
evaluated by one forward over a ``k``-row cache whose row ``i`` holds the root context and leaf ``i``'s
path (written from the nodes' slices; shorter paths are left-padded), expanded and scored; finally
each virtual loss is replaced by the real visit and value. ``leaf_batch = 1`` is the same code with
batches of one leaf (a one-row leaf cache): the plain sequential search.

Batches are searched row by row (each row has its own tree and a batch-1 cache holding its prompt
without padding), in lockstep: every step commits one column for all unfinished rows, so streamers,
stopping criteria and EOS handling behave as in the other decoders. Rows stop at their own EOS.
"""
from .search import DEFAULT_LEAF_BATCH, RowSearch, SearchConfig, mcts_decode
from .tree import Node, puct_scores, select_child, snapshot
from .values import ValueContext, ValueFn, length_reward, likelihood_value, mix

__all__ = ["mcts_decode", "ValueContext", "ValueFn", "Node", "likelihood_value", "length_reward", "mix", "puct_scores",
           "select_child", "snapshot", "RowSearch", "SearchConfig", "DEFAULT_LEAF_BATCH"]
