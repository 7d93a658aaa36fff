"""Draw an MCTS decoding tree (``mcts_decode(..., return_dict=True).info["tree"]``) with matplotlib.

Reading the picture: each node is a token, drawn below its parent; the root is the prompt. The marker
area grows with the visit count N (where the search spent its simulations), the colour is the mean
value Q, and the edge width follows N as well. The most visited path -- the tokens the search would
commit one after the other -- is drawn in red. Unvisited children (only a prior, never evaluated) are
hidden unless ``min_visits=0``.
"""
from __future__ import annotations

from infergen.decoding.mcts import Node


def _as_tree(tree) -> Node:
    if isinstance(tree, Node):
        return tree
    if isinstance(tree, dict):  # the output of Node.to_dict(), e.g. reloaded from JSON
        node = Node(tree["token"], tree["prior"], tree["logprob"], eos=tree["eos"], terminal=tree["terminal"])
        node.visits, node.value_sum = tree["visits"], tree["value_sum"]
        node.children = [_as_tree(c) for c in tree.get("children", [])]
        return node
    raise TypeError(f"tree must be a Node (info['tree']) or its to_dict(), got {type(tree).__name__}")


def _label(node: Node, tokenizer) -> str:
    if node.token is None:
        return "root"
    if tokenizer is not None:
        text = repr(tokenizer.decode([node.token]))
    else:
        text = str(node.token)
    if node.eos:
        text += " (EOS)"
    return text


def plot_tree(tree, tokenizer=None, max_depth: int = 3, ax=None, min_visits: int = 1, value_range=None):
    """Plot the top ``max_depth`` levels of an MCTS tree; returns the matplotlib ``Axes``.

    ``tree``: a :class:`~infergen.decoding.mcts.Node` (or its ``to_dict()``). ``tokenizer``: to
    label nodes with their text instead of token ids. ``min_visits``: hide children visited fewer
    times (1 hides the never-evaluated ones). ``value_range``: the colour scale for Q, ``(low, high)``;
    None (default) stretches it over the values shown (values are in [0, 1], but the nodes of one tree
    often differ by a few hundredths).
    """
    import matplotlib
    import matplotlib.pyplot as plt
    from matplotlib import cm, colors

    from infergen._validation import check_number

    check_number("max_depth", max_depth, low=0, integer=True)
    check_number("min_visits", min_visits, low=0, integer=True)
    root = _as_tree(tree)

    # Lay out: leaves take consecutive x slots, a parent sits above the middle of its children.
    positions: dict[int, tuple[float, float]] = {}
    shown: list[tuple[Node, Node | None, int]] = []  # (node, parent, depth)
    next_x = [0.0]

    def visible_children(node, depth):
        if depth >= max_depth:
            return []
        return [c for c in node.children or () if c.visits >= min_visits]

    def place(node, parent, depth):
        shown.append((node, parent, depth))
        kids = visible_children(node, depth)
        if not kids:
            x = next_x[0]
            next_x[0] += 1.0
        else:
            xs = [place(c, node, depth + 1) for c in kids]
            x = (xs[0] + xs[-1]) / 2
        positions[id(node)] = (x, -depth)
        return x

    place(root, None, 0)  # recursion depth is bounded by max_depth
    if ax is None:  # about 1.3 inches per leaf, so that labels do not overlap
        _, ax = plt.subplots(figsize=(min(max(8.0, 1.3 * next_x[0]), 40.0), 1.8 * (max_depth + 1)))

    # The most visited path (what the search commits).
    best_path, node = set(), root
    while node.children:
        node = max(node.children, key=lambda c: (c.visits, c.prior))
        if node.visits == 0:
            break
        best_path.add(id(node))

    if value_range is None:
        values = [n.q for n, _, _ in shown if n.visits > 0] or [0.0, 1.0]
        low, high = min(values), max(values)
        value_range = (low, high) if high > low else (low - 0.5, high + 0.5)
    norm = colors.Normalize(*value_range)
    cmap = matplotlib.colormaps["viridis"]
    max_visits = max(n.visits for n, _, _ in shown) or 1
    for node, parent, _ in shown:
        if parent is None:
            continue
        (x0, y0), (x1, y1) = positions[id(parent)], positions[id(node)]
        on_path = id(node) in best_path
        ax.plot([x0, x1], [y0, y1], color="tab:red" if on_path else "0.6",
                linewidth=0.5 + 4.0 * node.visits / max_visits, zorder=1)
    for node, _, _ in shown:
        x, y = positions[id(node)]
        size = 60 + 600 * node.visits / max_visits
        ax.scatter([x], [y], s=size, c=[cmap(norm(node.q))], edgecolors="k", zorder=2)
        text = f"{_label(node, tokenizer)}\nN={node.visits} Q={node.q:.2f}"
        if node.token is not None:
            text += f"\nP={node.prior:.2f}"
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(0, -14), ha="center", va="top",
                    fontsize=7, zorder=3, bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8))
    ax.figure.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="mean value Q", shrink=0.8)
    ax.set_ylim(-max_depth - 0.8, 0.5)
    ax.set_xlim(-0.7, max(next_x[0] - 0.3, 0.7))
    ax.axis("off")
    ax.set_title(f"MCTS tree: {root.visits} simulations at the root (red: most visited path)")
    return ax
