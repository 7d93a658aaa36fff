"""Concept diagrams for the book, drawn from code so that they stay consistent with the text.

Each public function returns a ``matplotlib.figure.Figure`` that explains one mechanism:

- :func:`prefill_decode`: the generation loop, a prefill and then one position per decode step, with
  what each step computes and what it reads from the KV cache (chapter 1);
- :func:`beam_step`: one step of beam search, every extension of every beam ranked together (chapter 4);
- :func:`contrastive_step`: contrastive search's pass over the top-k candidates (chapter 5);
- :func:`mcts_iteration`: one simulation of MCTS decoding: select, expand, evaluate, back up (chapter 6);
- :func:`speculative_step`: one round of speculative decoding: draft, verify, accept (chapter 11);
- :func:`paged_attention`: PagedAttention's block tables over a pool of fixed-size blocks (chapter 11).

The numbers a diagram shows are computed, not typed: the beams the beam step keeps are the top-k of
the scores it is given, the contrastive winner is the argmax of the score formula, the block tables
come from running a block allocator. Change an argument and the picture follows.

The figures are created with ``matplotlib.figure.Figure`` directly, not with ``pyplot``, so
they hold no global state; a notebook cell shows one with ``diagrams.show(diagrams.beam_step())``.
They are 6.8 inches wide, which at matplotlib's 100 dpi fits the book's text column without being
scaled down.
:func:`overlapping_texts` finds labels that collide; the tests run it on every diagram, and the
chapters on their data plots. :func:`label_points` labels the points of a plot without collisions.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from infergen._validation import check_number

WIDTH = 6.8  # inches: 680 px at 100 dpi, the width of the book's text column
FONT = 10  # points: the smallest font of every diagram
TITLE_FONT = 12

# One colour for each role, the same in every diagram.
COMPUTED = "#2b6cb0"  # computed in this step
READ = "#bee3f8"  # read from memory (cache), not recomputed
KEPT = "#2f855a"  # chosen / accepted / kept
KEPT_LIGHT = "#c6f6d5"
DROPPED = "#a0aec0"  # discarded
DROPPED_LIGHT = "#edf2f7"
REJECTED = "#c53030"
REJECTED_LIGHT = "#fed7d7"
NEW = "#dd6b20"  # created in this step (expansion, replacement token)
NEW_LIGHT = "#feebc8"
EDGE = "#2d3748"
TEXT = "#1a202c"
SEQUENCE_COLOURS = ("#3182ce", "#dd6b20", "#38a169", "#805ad5", "#d53f8c", "#319795")


# ---------------------------------------------------------------------------------------------------
# drawing helpers: every coordinate is in inches from the bottom left corner of the figure


def _canvas(height: float, title: str):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH, height), dpi=100)
    FigureCanvasAgg(fig)  # a canvas of its own: texts can be measured before the figure is shown
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, WIDTH)
    ax.set_ylim(0, height)
    ax.set_axis_off()
    ax.text(WIDTH / 2, height - 0.25, title, ha="center", va="center", fontsize=TITLE_FONT,
            fontweight="bold", color=TEXT)
    return fig, ax


def _box(ax, x, y, w, h, text="", face="white", edge=EDGE, color=TEXT, fontsize=FONT, weight="normal",
         linestyle="-", linewidth=1.0, rounded=True):
    """A rectangle with its lower left corner at (x, y) and ``text`` centred in it."""
    from matplotlib.patches import FancyBboxPatch

    style = "round,pad=0,rounding_size=0.06" if rounded else "square,pad=0"
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle=style, facecolor=face, edgecolor=edge,
                                linewidth=linewidth, linestyle=linestyle, zorder=2))
    if text:
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize, color=color,
                fontweight=weight, zorder=3)


def _arrow(ax, start, end, color=EDGE, linewidth=1.2, linestyle="-", style="-|>", zorder=1, alpha=1.0):
    from matplotlib.patches import FancyArrowPatch

    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=11, color=color,
                                 linewidth=linewidth, linestyle=linestyle, zorder=zorder, alpha=alpha,
                                 shrinkA=0, shrinkB=0))


def _legend(ax, y, entries, x=0.25, fontsize=FONT):
    """A row of (face colour, edge colour, label) swatches starting at x, vertically centred on y."""
    for face, edge, label in entries:
        _box(ax, x, y - 0.09, 0.28, 0.18, face=face, edge=edge, rounded=False)
        text = ax.text(x + 0.36, y, label, ha="left", va="center", fontsize=fontsize, color=TEXT)
        x += 0.36 + _text_width(text) + 0.3
    return x


def _renderer(fig):
    if not hasattr(fig.canvas, "get_renderer"):  # a Figure created without pyplot or a canvas
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)
    return fig.canvas.get_renderer()


def _text_width(text) -> float:
    """Width in inches of a Text artist once drawn."""
    fig = text.get_figure()
    renderer = _renderer(fig)
    return text.get_window_extent(renderer).width / fig.dpi


def _token(text: str) -> str:
    """How a token is written in a diagram: quoted, with its leading space visible as in the book."""
    return repr(text)


def _num(value: float, digits: int = 1) -> str:
    """A number as a diagram prints it, with a true minus sign."""
    return f"{value:.{digits}f}".replace("-", "\u2212")


def _check_tokens(name: str, tokens, minimum: int = 1) -> list[str]:
    if isinstance(tokens, str) or not isinstance(tokens, Sequence):
        raise TypeError(f"{name} must be a sequence of strings, got {tokens!r}")
    tokens = list(tokens)
    if len(tokens) < minimum or not all(isinstance(t, str) and t for t in tokens):
        raise ValueError(f"{name} must hold at least {minimum} non-empty strings, got {tokens!r}")
    return tokens


def drawn_texts(fig) -> list:
    """The texts of ``fig`` that a render shows: visible, not empty, and (for tick labels) at a tick
    inside its axis's view. Matplotlib keeps the labels of ticks outside the view at stale positions
    without drawing them."""
    from matplotlib.text import Text

    hidden = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if not low - 1e-9 * (abs(low) + abs(high)) <= tick.get_loc() <= high + 1e-9 * (abs(low) + abs(high)):
                    hidden.update((id(tick.label1), id(tick.label2)))
    return [t for t in fig.findobj(Text)
            if t.get_visible() and t.get_text().strip() and id(t) not in hidden]


def overlapping_texts(fig, *, tight_bbox: bool = False) -> list[tuple[str, str]]:
    """Pairs of drawn labels of ``fig`` whose boxes overlap, and labels that leave the figure.

    A label that sticks out of the figure is reported as ``(label, "<outside the figure>")``, unless
    ``tight_bbox`` says the figure is saved with a tight bounding box, which grows the image to hold
    every text: a notebook's inline backend saves every figure of the book that way (``diagrams.show``
    does not). Tick labels of ticks outside the view are not drawn, and not reported. Use it on any
    figure: an empty list means no two texts collide.
    """
    renderer = _renderer(fig)
    fig.draw(renderer)
    frame = fig.bbox
    boxes = []
    for artist in drawn_texts(fig):
        box = artist.get_window_extent(renderer)
        if box.width == 0 or box.height == 0:
            continue
        boxes.append((artist.get_text(), box))
    problems = []
    for i, (text, box) in enumerate(boxes):
        if not tight_bbox and (box.x0 < frame.x0 - 1 or box.y0 < frame.y0 - 1
                               or box.x1 > frame.x1 + 1 or box.y1 > frame.y1 + 1):
            problems.append((text, "<outside the figure>"))
        for other, other_box in boxes[i + 1:]:
            if _overlap(box, other_box):
                problems.append((text, other))
    return problems


def _overlap(box, other) -> bool:
    # a pixel of tolerance: touching is not colliding
    return (min(box.x1, other.x1) - max(box.x0, other.x0) > 1
            and min(box.y1, other.y1) - max(box.y0, other.y0) > 1)


# offsets in points from a point to its label, tried in this order: right, above, left, below, diagonals
_LABEL_OFFSETS = [(dx * r, dy * r) for r in (5, 9, 14, 20) for dx, dy in
                  ((1, 0), (0, 1), (-1, 0), (0, -1), (1, 1), (-1, 1), (-1, -1), (1, -1))]


def _line_samples(ax, spacing: float = 3.0):
    """Display coordinates [n, 2] of points every ``spacing`` pixels along every line of ``ax``
    (markers included): what a label should not cover."""
    import numpy as np

    samples = []
    for line in ax.get_lines():
        if not line.get_visible():
            continue
        xy = ax.transData.transform(np.column_stack(line.get_data()).astype(float))
        xy = xy[np.isfinite(xy).all(1)]
        samples.append(xy)
        if line.get_linestyle() in ("None", "", " ", "none") or len(xy) < 2:
            continue
        for a, b in zip(xy[:-1], xy[1:]):
            steps = max(int(np.hypot(*(b - a)) / spacing), 1)
            samples.append(a + (b - a) * np.linspace(0, 1, steps + 1)[:, None])
    return np.concatenate(samples) if samples else np.zeros((0, 2))


def label_points(ax, points, labels, **text_kwargs) -> list:
    """Annotate each ``(x, y)`` of ``points`` (data coordinates) with its label, each label placed at
    the first of a few offsets around its point where it collides with no label placed before it, no
    other text of the figure and no line or marker of ``ax``, and stays inside the axes. Returns the
    annotations.

    A label that finds no free place keeps the first offset (``overlapping_texts`` then reports it).
    ``text_kwargs`` go to ``ax.annotate`` (``fontsize``, ``color``, ...).
    """
    points, labels = list(points), [str(label) for label in labels]
    if len(points) != len(labels):
        raise ValueError(f"label_points: points and labels must have the same length, "
                         f"got {len(points)} points and {len(labels)} labels")
    fig = ax.get_figure()
    renderer = _renderer(fig)
    fig.draw(renderer)
    taken = [t.get_window_extent(renderer) for t in drawn_texts(fig)]
    lines = _line_samples(ax)
    frame = ax.get_window_extent(renderer)

    def free(box) -> bool:
        inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
        on_line = ((lines[:, 0] > box.x0 - 1) & (lines[:, 0] < box.x1 + 1)
                   & (lines[:, 1] > box.y0 - 1) & (lines[:, 1] < box.y1 + 1)).any()
        return inside and not on_line and not any(_overlap(box, other) for other in taken)

    def annotate(label, point, offset):
        dx, dy = offset  # the label's side of the point decides its alignment
        ha = "left" if dx > 0 else "right" if dx < 0 else "center"
        va = "bottom" if dy > 0 else "top" if dy < 0 else "center"
        note = ax.annotate(label, point, textcoords="offset points", xytext=offset, ha=ha, va=va, **text_kwargs)
        return note, note.get_window_extent(renderer)

    placed = []
    for point, label in zip(points, labels):
        for offset in _LABEL_OFFSETS:
            note, box = annotate(label, point, offset)
            if free(box):
                break
            note.remove()
        else:  # no free place: the first offset
            note, box = annotate(label, point, _LABEL_OFFSETS[0])
        taken.append(box)
        placed.append(note)
    return placed


def show(fig) -> None:
    """Display a diagram in a notebook cell: one PNG at the figure's own size (100 dpi).

    The diagrams are not pyplot figures, so ``plt.show()`` does not draw them, and a bare ``fig`` at the
    end of a cell shows only its text until pyplot has drawn something in the session. Use
    ``diagrams.show(diagrams.beam_step())``; the image's alt text comes from the cell's metadata,
    ``{"mystnb": {"image": {"alt": "..."}}}``, as for every figure of the book.
    """
    import io

    from IPython.display import Image, display

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi)
    display(Image(data=buffer.getvalue(), format="png"))


def figure_texts(fig) -> list[str]:
    """Every non-empty text of ``fig`` (titles, labels, legend entries), in drawing order."""
    from matplotlib.text import Text

    return [t.get_text() for t in fig.findobj(Text) if t.get_text().strip()]


# ---------------------------------------------------------------------------------------------------
# the loop and the KV cache


def prefill_decode(prompt: Sequence[str] = ("The", " future", " of", " AI", " is"),
                   new_tokens: Sequence[str] = (" bright", " and", " full")):
    """The generation loop with a KV cache: one prefill, then one position per decode step.

    Each row is one forward pass of the model; each column a position of the sequence. The prefill
    computes the keys and values of every prompt position at once and stores them in the cache; its
    last position's logits give the first new token. Each decode step feeds the token just chosen,
    computes only its own position, and reads every earlier position from the cache. The caption counts
    the positions processed, ``T + n - 1``, against ``nT + n(n-1)/2`` without a cache (chapter 1).

    ``prompt``: the prompt's tokens (T of them); ``new_tokens``: the n generated tokens, in order.
    """
    prompt = _check_tokens("prompt", prompt)
    new_tokens = _check_tokens("new_tokens", new_tokens)
    T, n = len(prompt), len(new_tokens)
    if T + n - 1 > 10:
        raise ValueError(f"prompt and new_tokens must fit 10 columns (T + n - 1 <= 10), got T={T}, n={n}")
    inputs = prompt + new_tokens[:-1]  # the token at each position; the last new token is never fed back
    columns = len(inputs)
    steps = ["prefill"] + [f"decode {i}" for i in range(1, n)]

    row_h, header_h = 0.42, 0.42
    height = 0.55 + header_h + row_h * len(steps) + 1.25
    fig, ax = _canvas(height, "Prefill and decode with a KV cache")
    label_w, out_w = 0.95, 1.15
    cell_w = (WIDTH - 0.2 - label_w - out_w - 0.25) / columns
    x0 = 0.2 + label_w
    top = height - 0.55

    ax.text(0.2, top - header_h / 2, "input", ha="left", va="center", fontsize=FONT, color=TEXT,
            fontweight="bold")
    for j, token in enumerate(inputs):
        ax.text(x0 + (j + 0.5) * cell_w, top - header_h / 2, _token(token), ha="center", va="center",
                fontsize=FONT, color=TEXT)
    ax.text(x0 + columns * cell_w + 0.25, top - header_h / 2, "next token", ha="left", va="center",
            fontsize=FONT, color=TEXT, fontweight="bold")

    for i, step in enumerate(steps):
        y = top - header_h - (i + 1) * row_h
        ax.text(0.2, y + row_h / 2, step, ha="left", va="center", fontsize=FONT, color=TEXT)
        computed = range(T) if i == 0 else [T + i - 1]
        read = range(0) if i == 0 else range(T + i - 1)
        for cells, face in ((read, READ), (computed, COMPUTED)):
            for j in cells:
                _box(ax, x0 + j * cell_w + 0.03, y + 0.05, cell_w - 0.06, row_h - 0.1, face=face, edge=EDGE,
                     rounded=False, linewidth=0.6)
        _arrow(ax, (x0 + (computed[-1] + 1) * cell_w, y + row_h / 2),
               (x0 + columns * cell_w + 0.2, y + row_h / 2))
        ax.text(x0 + columns * cell_w + 0.25, y + row_h / 2, _token(new_tokens[i]), ha="left", va="center",
                fontsize=FONT, color=TEXT)

    y = top - header_h - len(steps) * row_h - 0.35
    _legend(ax, y, [(COMPUTED, EDGE, "computed: keys and values written to the cache"),
                    (READ, EDGE, "read from the cache")], fontsize=FONT - 1)
    cached, naive = T + n - 1, n * T + n * (n - 1) // 2
    ax.text(0.25, y - 0.42, f"positions processed for T = {T}, n = {n}: {cached} with the cache, "
            f"{naive} without (nT + n(n\u22121)/2)", ha="left", va="center", fontsize=FONT, color=TEXT)
    return fig


# ---------------------------------------------------------------------------------------------------
# beam search


def beam_step(beams: Sequence[tuple[str, float]] = (("The cat", -1.2), ("The dog", -1.5)),
              extensions: Sequence[Sequence[tuple[str, float]]] = (
                  ((" sat", -0.2), (" is", -0.5), (" ran", -2.1)),
                  ((" ran", -0.4), (" barked", -0.9), (" is", -1.6))),
              num_beams: int | None = None):
    """One step of beam search: every extension of every beam is scored, the best k survive.

    ``beams``: the k running prefixes and their scores (summed log-probabilities). ``extensions``: for
    each beam, a few of its next tokens with their log-probabilities (a beam search considers all
    ``|V|`` of them; the diagram shows the best few). Each extension scores ``score + log p(v)``; the
    top ``num_beams`` (default: as many as there are beams) over *all* extensions together survive. With
    the defaults both survivors extend the same beam: the top-k is not taken per beam (chapter 4).
    """
    if isinstance(beams, str) or not isinstance(beams, Sequence) or not beams:
        raise TypeError(f"beams must be a non-empty sequence of (text, score) pairs, got {beams!r}")
    if not isinstance(extensions, Sequence) or len(extensions) != len(beams):
        raise ValueError(f"extensions must hold one sequence per beam ({len(beams)}), got {extensions!r}")
    for text, score in beams:
        check_number(f"the score of beam {text!r}", score, high=0)
    for per_beam in extensions:
        for token, logprob in per_beam:
            check_number(f"the log-probability of extension {token!r}", logprob, high=0)
    k = len(beams) if num_beams is None else num_beams
    check_number("num_beams", k, low=1, integer=True)
    candidates = [(b, token, score + logprob)
                  for b, ((_, score), per_beam) in enumerate(zip(beams, extensions))
                  for token, logprob in per_beam]
    if k > len(candidates):
        raise ValueError(f"num_beams must be at most the number of extensions shown ({len(candidates)}), got {k}")
    ranked = sorted(range(len(candidates)), key=lambda i: -candidates[i][2])
    rank = {i: r for r, i in enumerate(ranked)}

    row_h = 0.42
    rows = len(candidates)
    gap = 0.18  # between the groups of two beams
    height = 0.6 + 0.45 + rows * row_h + gap * (len(beams) - 1) + 0.95
    fig, ax = _canvas(height, f"One beam-search step, k = {k}")
    top = height - 0.6
    ax.text(0.2, top - 0.2, "beams (score)", ha="left", va="center", fontsize=FONT, fontweight="bold")
    ax.text(2.3, top - 0.2, "extension: score + log p(v)", ha="left", va="center", fontsize=FONT,
            fontweight="bold")
    ax.text(5.35, top - 0.2, f"best {k} of all", ha="left", va="center", fontsize=FONT, fontweight="bold")

    y = top - 0.45
    index = 0
    for b, ((text, score), per_beam) in enumerate(zip(beams, extensions)):
        group_top = y
        for token, logprob in per_beam:
            y -= row_h
            kept = rank[index] < k
            face, edge = (KEPT_LIGHT, KEPT) if kept else (DROPPED_LIGHT, DROPPED)
            _box(ax, 2.3, y + 0.05, 0.95, row_h - 0.1, _token(token), face=face, edge=edge,
                 color=TEXT if kept else "#4a5568")
            ax.text(3.35, y + row_h / 2, f"{_num(score)} + ({_num(logprob)}) = {_num(score + logprob)}",
                    ha="left", va="center", fontsize=FONT, color=TEXT if kept else "#4a5568")
            label = f"kept, rank {rank[index] + 1}" if kept else "dropped"
            ax.text(5.35, y + row_h / 2, label, ha="left", va="center", fontsize=FONT,
                    color=KEPT if kept else "#4a5568", fontweight="bold" if kept else "normal")
            index += 1
        middle = (group_top + y) / 2
        _box(ax, 0.2, middle - 0.2, 1.5, 0.4, f"{text!r}  {_num(score)}", face=READ, edge=EDGE)
        for r in range(len(per_beam)):
            ty = group_top - (r + 0.5) * row_h
            _arrow(ax, (1.7, middle), (2.3, ty), color="#4a5568", linewidth=0.9)
        y -= gap

    survivors = {candidates[i][0] for i in ranked[:k]}
    if len(survivors) < len(beams):
        note = f"The survivors extend {len(survivors)} of the {len(beams)} beams:"
    else:
        note = "Every beam keeps a descendant here, but"
    ax.text(0.2, 0.72, note + " the top-k runs over all extensions", ha="left", va="center", fontsize=FONT,
            color=TEXT)
    ax.text(0.2, 0.45, "together, not per beam. Scores are summed log-probabilities; k = 1 is greedy search.",
            ha="left", va="center", fontsize=FONT, color=TEXT)
    return fig


# ---------------------------------------------------------------------------------------------------
# contrastive search


def contrastive_step(candidates: Sequence[tuple[str, float, float]] = (
        (" bright", 0.35, 0.82), (" changing", 0.20, 0.41), (" here", 0.15, 0.55), (" uncertain", 0.10, 0.45)),
        alpha: float = 0.6):
    """Contrastive search's candidate pass: score each of the top-k tokens, pick the best score.

    ``candidates``: the top-k tokens as ``(token, p(v), max_j cos(h_v, h_j))``, where ``h_v`` is the
    hidden state the model computes for the candidate (one batched forward pass over the k candidates,
    reusing the KV cache) and the max runs over every earlier position. The score is
    ``(1 - alpha) p(v) - alpha * max_j cos(h_v, h_j)``; the diagram marks the winner and, where they
    differ, greedy's choice (chapter 5). ``alpha = 0`` is greedy search.
    """
    check_number("alpha", alpha, low=0, high=1)
    if isinstance(candidates, str) or not isinstance(candidates, Sequence) or not 1 <= len(candidates) <= 8:
        raise ValueError(f"candidates must be 1 to 8 (token, p, similarity) triples, got {candidates!r}")
    for token, p, sim in candidates:
        check_number(f"p({token!r})", p, low=0, high=1)
        check_number(f"the similarity of {token!r}", sim, low=-1, high=1)
    scores = [(1 - alpha) * p - alpha * sim for _, p, sim in candidates]
    winner = max(range(len(candidates)), key=lambda i: scores[i])
    greedy = max(range(len(candidates)), key=lambda i: candidates[i][1])

    row_h = 0.4
    height = 0.6 + 1.6 + row_h * (len(candidates) + 1) + 0.5
    fig, ax = _canvas(height, f"Contrastive search: one step, k = {len(candidates)}, \u03b1 = {alpha:g}")
    top = height - 0.6
    ax.text(WIDTH / 2, top - 0.2,
            r"score$(v) = (1-\alpha)\,p(v) \;-\; \alpha\,\max_{j<t}\,\cos(h_v, h_j)$",
            ha="center", va="center", fontsize=FONT + 1, color=TEXT)
    stages = ["top-k tokens of\n" r"$p(\cdot \mid x_{<t})$",
              "one batched forward of\nthe k candidates: each $h_v$",
              "compare with every\n" r"earlier state $h_1 \ldots h_{t-1}$"]
    box_w, gap = 1.9, (WIDTH - 0.4 - 3 * 1.9) / 2
    for i, text in enumerate(stages):
        x = 0.2 + i * (box_w + gap)
        _box(ax, x, top - 1.2, box_w, 0.58, text, face=COMPUTED if i == 1 else READ, edge=EDGE,
             color="white" if i == 1 else TEXT, fontsize=FONT - 1)
        if i:
            _arrow(ax, (x - gap, top - 0.91), (x, top - 0.91))

    columns = [(0.35, "candidate v"), (1.85, "p(v)"), (2.75, r"max$_j$ cos($h_v, h_j$)"), (4.4, "score")]
    y = top - 1.5
    for x, title in columns:
        ax.text(x, y, title, ha="left", va="center", fontsize=FONT, fontweight="bold", color=TEXT)
    for i, (token, p, sim) in enumerate(candidates):
        y -= row_h
        if i == winner:
            _box(ax, 0.2, y - row_h / 2 + 0.04, 6.4, row_h - 0.08, face=KEPT_LIGHT, edge=KEPT, rounded=True)
        values = [_token(token), f"{p:.2f}", _num(sim, 2), _num(scores[i], 3)]
        for (x, _), value in zip(columns, values):
            ax.text(x, y, value, ha="left", va="center", fontsize=FONT, color=TEXT, zorder=4)
        marks = []
        if i == winner:
            marks.append("chosen")
        if i == greedy and greedy != winner:
            marks.append("greedy's choice")
        if marks:
            ax.text(5.2, y, ", ".join(marks), ha="left", va="center", fontsize=FONT - 1,
                    color=KEPT if i == winner else "#4a5568", fontweight="bold" if i == winner else "normal",
                    zorder=4)
    ax.text(0.2, 0.3, "p(v) is the softmax over the whole vocabulary; the candidate pass reuses the KV cache.",
            ha="left", va="center", fontsize=FONT, color=TEXT)
    return fig


# ---------------------------------------------------------------------------------------------------
# Monte Carlo tree search


def mcts_iteration(value: float = 0.62, c_puct: float = 1.0):
    """One MCTS simulation in four panels: select, expand, evaluate, back up.

    A small tree after a few simulations, with the prior P and visit count N of every node: **select**
    descends from the root by PUCT, ``Q + c_puct P sqrt(N_parent) / (1 + N)``, until it reaches a node
    never evaluated; **expand** runs the model on that node's own path and adds its top-k tokens as
    children with their priors; **evaluate** scores the path with the value function, ``value`` in
    [0, 1]; **back up** adds 1 to N and ``value`` to W of every node on the path, so that Q = W / N
    stays the mean value (chapter 6). The path is computed: at each level the child with the largest
    PUCT score for the drawn statistics and ``c_puct``.
    """
    check_number("value", value, low=0, high=1)
    check_number("c_puct", c_puct, low=0)
    # name -> (token, parent, N, W, prior); every N is 1 (the node's own evaluation) + its children's N
    nodes = {
        "root": ("root", None, 5, 2.5, 1.0),
        "a": (" bright", "root", 2, 1.0, 0.45),
        "b": (" a", "root", 2, 1.0, 0.35),
        "c": (" not", "root", 0, 0.0, 0.20),
        "aa": (" and", "a", 1, 0.3, 0.5),
        "ab": (" future", "a", 0, 0.0, 0.5),
    }
    expansion = [(" of", 0.5), (" is", 0.3), (" in", 0.2)]

    def puct(name):
        _, parent, N, W, P = nodes[name]
        Q = W / N if N else 0.0
        return Q + c_puct * P * math.sqrt(nodes[parent][2]) / (1 + N)

    path = ["root"]
    while nodes[path[-1]][2] > 0:
        children = [n for n, v in nodes.items() if v[1] == path[-1]]
        if not children:
            raise AssertionError(f"node {path[-1]!r} was visited but has no children")  # pragma: no cover
        path.append(max(children, key=puct))
    leaf = path[-1]

    panel_w, panel_h = WIDTH / 2, 3.2
    height = 0.5 + 2 * panel_h
    fig, ax = _canvas(height, "One MCTS simulation")
    layout = {"root": (1.55, 2.3), "a": (0.75, 1.6), "b": (1.75, 1.6), "c": (2.75, 1.6),
              "aa": (0.6, 0.9), "ab": (1.55, 0.9)}
    box_w, box_h = 0.86, 0.46

    def stats(name, after):
        _, parent, N, W, P = nodes[name]
        if after and name in path:
            N, W = N + 1, W + value
        if name == "root":
            return f"N={N} Q={W / N:.2f}" if N else f"N={N}"
        return f"P={P:.2f} N={N}"

    def draw_tree(px, py, show_stats=True, after=False, evaluated=False):
        for name, (_, parent, *_rest) in nodes.items():
            if parent is None:
                continue
            (x1, y1), (x2, y2) = layout[parent], layout[name]
            on_path = name in path
            _arrow(ax, (px + x1, py + y1 - box_h / 2), (px + x2, py + y2 + box_h / 2), style="-",
                   color=REJECTED if on_path else "#718096", linewidth=2.2 if on_path else 1.0)
        for name, (token, *_rest) in nodes.items():
            x, y = layout[name]
            face = NEW_LIGHT if evaluated and name == leaf else (READ if name in path else "white")
            _box(ax, px + x - box_w / 2, py + y - box_h / 2, box_w, box_h, face=face,
                 edge=REJECTED if name in path else EDGE)
            label = "root" if name == "root" else _token(token)
            changed = after and name in path
            style = dict(fontsize=FONT - 2, color=REJECTED if changed else "#2d3748",
                         fontweight="bold" if changed else "normal", zorder=4)
            if name == "root":
                ax.text(px + x, py + y, label, ha="center", va="center", fontsize=FONT - 1, zorder=4)
                if show_stats:  # to the right of the root, clear of its edges
                    ax.text(px + x + box_w / 2 + 0.08, py + y, stats(name, after), ha="left", va="center",
                            **style)
            elif show_stats:
                ax.text(px + x, py + y + 0.1, label, ha="center", va="center", fontsize=FONT - 1, zorder=4)
                ax.text(px + x, py + y - 0.11, stats(name, after), ha="center", va="center", **style)
            else:
                ax.text(px + x, py + y, label, ha="center", va="center", fontsize=FONT - 1, zorder=4)

    panels = [("1. Select", r"descend by $Q + c_{\mathrm{puct}} P \sqrt{N_{\mathrm{parent}}} / (1 + N)$"),
              ("2. Expand", "run the model on the leaf's own path"),
              ("3. Evaluate", "the value function scores the path"),
              ("4. Back up", "every node on the path: N + 1, W + v")]
    for k, (title, subtitle) in enumerate(panels):
        px, py = (k % 2) * panel_w, (1 - k // 2) * panel_h
        ax.text(px + 0.2, py + panel_h - 0.2, title, ha="left", va="center", fontsize=FONT + 1,
                fontweight="bold", color=TEXT)
        ax.text(px + 0.2, py + panel_h - 0.45, subtitle, ha="left", va="center", fontsize=FONT - 1,
                color=TEXT)
        if k == 0:
            draw_tree(px, py)
        elif k == 1:
            draw_tree(px, py, show_stats=False)
            lx, ly = layout[leaf]
            for j, (token, prior) in enumerate(expansion):
                cx, cy = px + lx - 0.66 + j * 0.66, py + ly - 0.6
                _arrow(ax, (px + lx, py + ly - box_h / 2), (cx, cy + 0.2), style="-", color=NEW,
                       linestyle="--")
                _box(ax, cx - 0.3, cy - 0.2, 0.6, 0.4, face=NEW_LIGHT, edge=NEW, linestyle="--")
                ax.text(cx, cy + 0.08, _token(token), ha="center", va="center", fontsize=FONT - 2, zorder=4)
                ax.text(cx, cy - 0.1, f"P={prior:.1f}", ha="center", va="center", fontsize=FONT - 2,
                        color=NEW, zorder=4)
        elif k == 2:
            draw_tree(px, py, show_stats=False, evaluated=True)
            lx, ly = layout[leaf]
            ax.text(px + lx, py + ly - 0.45, f"v = {value:.2f}", ha="center", va="center",
                    fontsize=FONT, fontweight="bold", color=NEW)
        else:
            draw_tree(px, py, after=True)
    ax.plot([panel_w, panel_w], [0.1, 2 * panel_h - 0.05], color="#cbd5e0", linewidth=1)
    ax.plot([0.1, WIDTH - 0.1], [panel_h, panel_h], color="#cbd5e0", linewidth=1)
    return fig


# ---------------------------------------------------------------------------------------------------
# speculative decoding


def speculative_step(context: str = "The future of AI is",
                     draft: Sequence[str] = (" bright", " and", " full", " of"),
                     accepted: int = 2, replacement: str = " exciting"):
    """One round of speculative decoding: the draft proposes, the target verifies in one pass.

    ``draft``: the gamma tokens the draft model proposes. The target model scores all of them (and the
    position after the last) in one forward pass; from left to right each draft token is accepted with
    probability ``min(1, p/q)``. ``accepted`` of them are (the diagram takes the outcome as given); at
    the first rejection ``replacement`` is drawn from ``norm(max(p - q, 0))`` and the later drafts are
    discarded unexamined. If all are accepted, ``replacement`` is the bonus token drawn from the
    target's distribution after the last draft. Either way the round yields ``accepted + 1`` tokens for
    one target pass (chapter 11).
    """
    draft = _check_tokens("draft", draft)
    if not isinstance(context, str) or not context:
        raise ValueError(f"context must be a non-empty string, got {context!r}")
    if not 1 <= len(draft) <= 6:
        raise ValueError(f"draft must hold 1 to 6 tokens, got {len(draft)}")
    check_number("accepted", accepted, low=0, high=len(draft), integer=True)
    _check_tokens("replacement", [replacement])
    gamma = len(draft)
    all_accepted = accepted == gamma

    height = 4.45
    fig, ax = _canvas(height, f"Speculative decoding: one round, \u03b3 = {gamma}")
    label_x, x0, cell_w = 0.2, 1.75, 0.82
    rows = {"draft": 3.45, "target": 2.55, "output": 1.65}
    ax.text(label_x, rows["draft"], "draft model\n(\u03b3 cheap steps)", ha="left", va="center",
            fontsize=FONT, color=TEXT)
    ax.text(label_x, rows["target"], "target model\n(one pass)", ha="left", va="center", fontsize=FONT,
            color=TEXT)
    ax.text(label_x, rows["output"], "tokens kept", ha="left", va="center", fontsize=FONT, color=TEXT)
    ax.text(x0, rows["draft"] + 0.38, f"after {context!r}", ha="left", va="center", fontsize=FONT - 1,
            color="#4a5568")

    for i, token in enumerate(draft):
        x = x0 + i * cell_w
        _box(ax, x, rows["draft"] - 0.17, cell_w - 0.08, 0.34, _token(token), face=READ, edge=EDGE,
             fontsize=FONT - 1)
        if i < accepted:
            verdict, face, edge = "accept", KEPT_LIGHT, KEPT
        elif i == accepted:
            verdict, face, edge = "reject", REJECTED_LIGHT, REJECTED
        else:
            verdict, face, edge = "discard", DROPPED_LIGHT, DROPPED
        _box(ax, x, rows["target"] - 0.17, cell_w - 0.08, 0.34, verdict, face=face, edge=edge,
             fontsize=FONT - 1)
        _arrow(ax, (x + (cell_w - 0.08) / 2, rows["draft"] - 0.17), (x + (cell_w - 0.08) / 2, rows["target"] + 0.17),
               color="#718096", linewidth=0.9)
    # the extra position the target scores: the bonus token's distribution
    xb = x0 + gamma * cell_w
    _box(ax, xb, rows["target"] - 0.17, cell_w - 0.08, 0.34, "bonus",
         face=NEW_LIGHT if all_accepted else "white", edge=NEW if all_accepted else DROPPED, fontsize=FONT - 1,
         linestyle="-" if all_accepted else "--")
    if not all_accepted:
        ax.text(xb + (cell_w - 0.08) / 2, rows["target"] - 0.32, "used if all\nare accepted", ha="center", va="top",
                fontsize=FONT - 2, color="#4a5568")

    for i in range(accepted):
        _box(ax, x0 + i * cell_w, rows["output"] - 0.17, cell_w - 0.08, 0.34, _token(draft[i]), face=KEPT_LIGHT,
             edge=KEPT, fontsize=FONT - 1)
    x_new = x0 + accepted * cell_w
    _box(ax, x_new, rows["output"] - 0.17, cell_w - 0.08, 0.34, _token(replacement), face=NEW_LIGHT, edge=NEW,
         fontsize=FONT - 1)
    source_x = xb if all_accepted else x0 + accepted * cell_w
    _arrow(ax, (source_x + (cell_w - 0.08) / 2, rows["target"] - 0.17),
           (x_new + (cell_w - 0.08) / 2, rows["output"] + 0.17), color=NEW, linewidth=1.2)

    _legend(ax, 1.0, [(KEPT_LIGHT, KEPT, "accepted with prob. min(1, p/q)"),
                      (REJECTED_LIGHT, REJECTED, "first rejection"),
                      (DROPPED_LIGHT, DROPPED, "discarded unexamined")], fontsize=FONT - 1)
    if all_accepted:
        how = "every draft accepted: a bonus token is drawn from the target's next distribution"
    else:
        how = "replacement drawn from norm(max(p \u2212 q, 0)); later drafts are discarded"
    _legend(ax, 0.62, [(NEW_LIGHT, NEW, how)], fontsize=FONT - 1)
    ax.text(0.25, 0.25, f"This round: {accepted + 1} tokens for {gamma} draft steps and one target pass.",
            ha="left", va="center", fontsize=FONT, color=TEXT)
    return fig


# ---------------------------------------------------------------------------------------------------
# PagedAttention


def allocate_blocks(lengths: Sequence[int], block_size: int, free_blocks: Sequence[int]) -> list[list[int]]:
    """Block tables for sequences that grow one token at a time, in turn (a decode loop).

    Each sequence takes a new physical block from the front of ``free_blocks`` whenever its last block
    is full. Returns one block table (a list of physical block ids) per sequence. Raises
    ``ValueError`` when the pool runs out.
    """
    check_number("block_size", block_size, low=1, integer=True)
    for i, length in enumerate(lengths):
        check_number(f"lengths[{i}]", length, low=1, integer=True)
    free = list(free_blocks)
    need = sum(math.ceil(n / block_size) for n in lengths)
    if need > len(free):
        raise ValueError(f"free_blocks must hold at least {need} blocks for lengths {list(lengths)} and "
                         f"block_size {block_size}, got {len(free)}")
    tables: list[list[int]] = [[] for _ in lengths]
    filled = [0] * len(lengths)
    for step in range(max(lengths)):
        for s, length in enumerate(lengths):
            if step >= length:
                continue
            if filled[s] % block_size == 0:
                tables[s].append(free.pop(0))
            filled[s] += 1
    return tables


def paged_attention(lengths: Sequence[int] = (10, 5, 7), block_size: int = 4,
                    free_blocks: Sequence[int] = (2, 5, 0, 7, 3, 6, 1, 4), max_len: int | None = 16):
    """PagedAttention: each sequence's block table maps its logical blocks to physical blocks.

    ``lengths``: the tokens each sequence holds; ``block_size``: the tokens per block; ``free_blocks``:
    the pool of physical blocks, handed out from the front (see :func:`allocate_blocks`, which runs the
    sequences growing in turn, so their blocks interleave in memory). The caption compares the slots
    the paged cache holds with a contiguous cache that reserves ``max_len`` tokens per sequence
    (None: no comparison). The only waste of the paged cache is the unfilled end of each last block.
    """
    lengths = list(lengths)
    if not 1 <= len(lengths) <= len(SEQUENCE_COLOURS):
        raise ValueError(f"lengths must hold 1 to {len(SEQUENCE_COLOURS)} sequences, got {lengths!r}")
    tables = allocate_blocks(lengths, block_size, free_blocks)
    pool = sorted(free_blocks)
    if len(pool) > 12:
        raise ValueError(f"free_blocks must hold at most 12 blocks to be drawn, got {len(pool)}")
    if max_len is not None:
        check_number("max_len", max_len, low=max(lengths), integer=True)
    owner = {}
    for s, table in enumerate(tables):
        for logical, physical in enumerate(table):
            used = min(block_size, lengths[s] - logical * block_size)
            owner[physical] = (s, logical, used)
    names = [chr(ord("A") + s) for s in range(len(lengths))]

    per_row = 4
    pool_rows = math.ceil(len(pool) / per_row)
    row_h, pool_row_h = 0.5, 0.95
    body = max(0.45 + len(lengths) * row_h, 0.3 + pool_rows * pool_row_h)
    height = 0.6 + 0.4 + body + (1.0 if max_len is not None else 0.7)
    fig, ax = _canvas(height, f"PagedAttention: block tables, {block_size} tokens per block")
    top = height - 0.6
    ax.text(0.2, top - 0.2, "block table of each sequence", ha="left", va="center", fontsize=FONT,
            fontweight="bold")
    ax.text(3.55, top - 0.2, "physical blocks in GPU memory", ha="left", va="center", fontsize=FONT,
            fontweight="bold")

    # the block tables: entry i holds the physical block of the sequence's logical block i
    longest = max(len(t) for t in tables)
    for logical in range(longest):
        ax.text(1.75 + logical * 0.42 + 0.18, top - 0.55, str(logical), ha="center", va="center",
                fontsize=FONT - 2, color="#4a5568")
    ax.text(1.65, top - 0.55, "logical", ha="right", va="center", fontsize=FONT - 2, color="#4a5568")
    for s, table in enumerate(tables):
        y = top - 0.55 - (s + 1) * row_h
        ax.text(0.2, y, f"{names[s]} ({lengths[s]} tokens)", ha="left", va="center", fontsize=FONT,
                color=SEQUENCE_COLOURS[s], fontweight="bold")
        for logical, physical in enumerate(table):
            _box(ax, 1.75 + logical * 0.42, y - 0.15, 0.36, 0.3, str(physical), face="white",
                 edge=SEQUENCE_COLOURS[s], linewidth=1.6)

    # the pool: block_size slots per block, filled slots in the colour of their sequence
    slot_w = min(0.16, 0.72 / block_size)
    block_w = slot_w * block_size
    for idx, physical in enumerate(pool):
        r, c = divmod(idx, per_row)
        x = 3.55 + c * (block_w + 0.08)
        y = top - 0.75 - r * pool_row_h
        ax.text(x + block_w / 2, y + 0.3, f"block {physical}", ha="center", va="center", fontsize=FONT - 2,
                color=TEXT)
        s, logical, used = owner.get(physical, (None, None, 0))
        for slot in range(block_size):
            face = SEQUENCE_COLOURS[s] if s is not None and slot < used else "white"
            _box(ax, x + slot * slot_w, y - 0.15, slot_w, 0.3, face=face, edge=EDGE, rounded=False,
                 linewidth=0.6)
        owner_label = "free" if s is None else f"{names[s]}, logical {logical}"
        ax.text(x + block_w / 2, y - 0.3, owner_label, ha="center", va="center", fontsize=FONT - 2,
                color="#4a5568" if s is None else SEQUENCE_COLOURS[s])

    held = sum(len(t) for t in tables) * block_size
    tokens = sum(lengths)
    lines = [f"{tokens} tokens in {sum(len(t) for t in tables)} blocks ({held} slots): "
             f"only the {held - tokens} unfilled slots of last blocks are wasted."]
    if max_len is not None:
        lines.append(f"A contiguous cache reserving {max_len} tokens per sequence would hold "
                     f"{max_len * len(lengths)} slots.")
    for i, line in enumerate(lines):
        ax.text(0.2, 0.3 + (len(lines) - 1 - i) * 0.33, line, ha="left", va="center", fontsize=FONT, color=TEXT)
    return fig
