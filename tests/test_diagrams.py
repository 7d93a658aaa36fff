"""The book companion (infergen.book): the concept diagrams, each a readable figure that shows what its
arguments imply, computed rather than typed in; the MCTS tree plot; the source display."""
from __future__ import annotations

import pytest

matplotlib = pytest.importorskip("matplotlib")
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from infergen.book import diagrams  # noqa: E402

EXPECTED_LABELS = {
    "prefill_decode": ["Prefill and decode with a KV cache", "prefill", "decode 1", "decode 2", "input",
                       "next token", "read from the cache", "computed: keys and values written to the cache",
                       "' bright'"],
    "beam_step": ["One beam-search step, k = 2", "beams (score)", "extension: score + log p(v)",
                  "kept, rank 1", "kept, rank 2", "dropped"],
    "contrastive_step": ["candidate v", "p(v)", "score", "chosen", "greedy's choice"],
    "mcts_iteration": ["One MCTS simulation", "1. Select", "2. Expand", "3. Evaluate", "4. Back up", "root",
                       "v = 0.62"],
    "speculative_step": ["accept", "reject", "discard", "bonus", "tokens kept"],
    "paged_attention": ["block table of each sequence", "physical blocks in GPU memory", "free",
                        "A (10 tokens)"],
}


def texts_at(fig: Figure) -> list[tuple[str, float, float]]:
    """(text, x, y) of every label, in the diagram's coordinates (inches)."""
    return [(t.get_text(), *t.get_position()) for t in fig.findobj(Text) if t.get_text().strip()]


def same_row(fig: Figure, label: str) -> list[str]:
    """The texts drawn on the same line as each occurrence of ``label``."""
    rows = [y for text, _, y in texts_at(fig) if text == label]
    return [text for text, _, y in texts_at(fig) if any(abs(y - r) < 1e-6 for r in rows) and text != label]


@pytest.mark.parametrize("name", sorted(EXPECTED_LABELS))
def test_diagram_builds_a_readable_figure(name):
    fig = getattr(diagrams, name)()
    assert isinstance(fig, Figure)
    texts = diagrams.figure_texts(fig)
    missing = [label for label in EXPECTED_LABELS[name] if label not in texts]
    assert not missing, f"{name}: labels missing from the figure: {missing}"
    assert diagrams.overlapping_texts(fig) == [], f"{name}: labels collide"
    width, height = fig.get_size_inches()
    assert width == diagrams.WIDTH and 2 < height < 8, "the figure must fit the text column unscaled"
    smallest = min(t.get_fontsize() for t in fig.findobj(Text) if t.get_text().strip())
    assert smallest >= 8, f"{name}: a {smallest} pt label is too small to read"
    assert getattr(diagrams, name).__doc__, f"{name} has no docstring"


def test_overlapping_texts_finds_a_collision():
    fig = Figure(figsize=(3, 2))
    fig.text(0.5, 0.5, "one label")
    assert diagrams.overlapping_texts(fig) == []
    fig.text(0.52, 0.5, "another label")
    assert diagrams.overlapping_texts(fig) == [("one label", "another label")]
    fig.text(0.95, 0.1, "sticks out of the figure")
    assert ("sticks out of the figure", "<outside the figure>") in diagrams.overlapping_texts(fig)


def test_prefill_decode_counts_the_positions():
    fig = diagrams.prefill_decode(prompt=["A", " B"], new_tokens=[" c", " d", " e", " f"])
    texts = diagrams.figure_texts(fig)
    # T = 2, n = 4: 2 + 4 - 1 = 5 positions with a cache, 4*2 + 4*3/2 = 14 without
    assert any("5 with the cache, 14 without" in t for t in texts), texts
    assert [t for t in texts if t.startswith("decode")] == ["decode 1", "decode 2", "decode 3"]


def test_beam_step_keeps_the_top_k_over_all_extensions():
    beams = [("x", -1.0), ("y", -3.0)]
    extensions = [[(" a", -0.1), (" b", -2.5)], [(" c", -0.2), (" d", -0.3)]]
    # totals: a -1.1, b -3.5, c -3.2, d -3.3: with k = 3 the survivors are a, c, d
    fig = diagrams.beam_step(beams, extensions, num_beams=3)
    assert "kept, rank 1" in same_row(fig, "' a'")
    assert "kept, rank 2" in same_row(fig, "' c'")
    assert "kept, rank 3" in same_row(fig, "' d'")
    assert "dropped" in same_row(fig, "' b'")
    assert diagrams.figure_texts(fig).count("dropped") == 1


def test_beam_step_says_when_one_beam_supplies_every_survivor():
    default = " ".join(diagrams.figure_texts(diagrams.beam_step()))
    assert "The survivors extend 1 of the 2 beams" in default
    spread = diagrams.beam_step([("x", -1.0), ("y", -1.1)], [[(" a", -0.1)], [(" b", -0.1)]])
    assert "Every beam keeps a descendant" in " ".join(diagrams.figure_texts(spread))


def test_contrastive_step_chooses_by_the_score():
    candidates = [(" p", 0.5, 0.9), (" q", 0.3, 0.1), (" r", 0.2, 0.5)]
    # alpha 0.5: scores 0.25 - 0.45 = -0.2, 0.15 - 0.05 = 0.1, 0.1 - 0.25 = -0.15: q wins, p is greedy's
    fig = diagrams.contrastive_step(candidates, alpha=0.5)
    assert "chosen" in same_row(fig, "' q'")
    assert "greedy's choice" in same_row(fig, "' p'")
    # alpha 0 is greedy search: the most probable token is chosen and no separate greedy mark is drawn
    greedy = diagrams.contrastive_step(candidates, alpha=0.0)
    assert "chosen" in same_row(greedy, "' p'")
    assert "greedy's choice" not in diagrams.figure_texts(greedy)


def test_mcts_iteration_selects_by_puct():
    # default c_puct: root -> ' bright' (Q 0.5 + bonus) -> ' future' (unvisited, prior 0.5)
    texts = diagrams.figure_texts(diagrams.mcts_iteration())
    assert "P=0.45 N=3" in texts and "P=0.50 N=1" in texts  # backed up along the selected path
    # a large c_puct lets the unvisited, low-prior ' not' win at the root: sqrt(5) * 0.2 * 10 > the rest
    explore = diagrams.figure_texts(diagrams.mcts_iteration(c_puct=10))
    assert "P=0.20 N=1" in explore and "P=0.45 N=3" not in explore
    assert "N=6 Q=0.52" in texts  # (2.5 + 0.62) / 6


def test_speculative_step_counts_the_outcome():
    fig = diagrams.speculative_step(draft=[" a", " b", " c", " d", " e"], accepted=1, replacement=" z")
    texts = diagrams.figure_texts(fig)
    assert texts.count("accept") == 1 and texts.count("reject") == 1 and texts.count("discard") == 3
    assert any("2 tokens for 5 draft steps" in t for t in texts)
    every = diagrams.figure_texts(diagrams.speculative_step(accepted=4))
    assert every.count("accept") == 4 and "reject" not in every
    assert any("bonus token is drawn" in t for t in every)


def test_allocate_blocks_interleaves_growing_sequences():
    # A (5 tokens) and B (3 tokens) grow in turn, 2 tokens per block: A 9, B 8, then A 7, B 6, then A 5
    assert diagrams.allocate_blocks([5, 3], 2, [9, 8, 7, 6, 5]) == [[9, 7, 5], [8, 6]]
    with pytest.raises(ValueError, match="free_blocks must hold at least 5 blocks"):
        diagrams.allocate_blocks([5, 3], 2, [9, 8, 7, 6])


def test_paged_attention_caption_counts_the_waste():
    texts = " ".join(diagrams.figure_texts(diagrams.paged_attention(lengths=(3, 6), block_size=4,
                                                                    free_blocks=range(4), max_len=8)))
    # 9 tokens in 1 + 2 blocks = 12 slots: 3 wasted; contiguous: 2 x 8 = 16 slots
    assert "9 tokens in 3 blocks (12 slots): only the 3 unfilled" in texts
    assert "would hold 16 slots" in texts


@pytest.mark.parametrize("call, error, message", [
    (lambda: diagrams.contrastive_step(alpha=1.5), ValueError, r"alpha must be in \[0, 1\], got 1.5"),
    (lambda: diagrams.beam_step(num_beams=0), ValueError, r"num_beams must be in \[1, inf\)"),
    (lambda: diagrams.beam_step(num_beams=7), ValueError, "num_beams must be at most"),
    (lambda: diagrams.speculative_step(accepted=5), ValueError, r"accepted must be in \[0, 4\], got 5"),
    (lambda: diagrams.prefill_decode(prompt="The"), TypeError, "prompt must be a sequence of strings"),
    (lambda: diagrams.mcts_iteration(value=-0.1), ValueError, r"value must be in \[0, 1\]"),
    (lambda: diagrams.paged_attention(max_len=4), ValueError, r"max_len must be in \[10, inf\)"),
])
def test_bad_arguments_are_named(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_show_displays_one_png_at_the_figure_size(monkeypatch):
    import struct

    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj))
    diagrams.show(diagrams.prefill_decode())
    (image,) = shown
    assert image.format == "png" and image.data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", image.data[16:24])  # the PNG header's IHDR chunk
    assert width == round(diagrams.WIDTH * 100)


def test_overlapping_texts_skips_undrawn_ticks_and_knows_tight_saves():
    fig = Figure(figsize=(3, 2))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1])
    ax.set_xticks([0, 0.5, 1], ["0", "half", "1"])
    ax.set_xlim(0.2, 0.8)  # ticks 0 and 1 leave the view: matplotlib does not draw their labels
    drawn = [t.get_text() for t in diagrams.drawn_texts(fig) if t in ax.get_xticklabels()]
    assert drawn == ["half"]
    ax.set_ylabel("a label far outside " * 4, fontsize=20)  # a tight save would hold it, a plain one cuts it
    assert any(other == "<outside the figure>" for _, other in diagrams.overlapping_texts(fig))
    assert not any(other == "<outside the figure>" for _, other in diagrams.overlapping_texts(fig, tight_bbox=True))


def test_label_points_places_crowded_labels_apart():
    fig = Figure(figsize=(4, 3))
    ax = fig.add_subplot()
    points = [(0.50, 0.50), (0.505, 0.50), (0.50, 0.505), (0.51, 0.51), (0.2, 0.8)]
    ax.plot(*zip(*points), "o")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    notes = diagrams.label_points(ax, points, ["1.0", "1.5", "2.0", "2.5", "far"], fontsize=7)
    assert [n.get_text() for n in notes] == ["1.0", "1.5", "2.0", "2.5", "far"]
    assert diagrams.overlapping_texts(fig) == []
    # the same labels all at the first offset collide: the placement is what separates them
    crowded = Figure(figsize=(4, 3))
    ax = crowded.add_subplot()
    for (x, y), label in zip(points, ["1.0", "1.5", "2.0", "2.5", "far"]):
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 0), fontsize=7)
    assert diagrams.overlapping_texts(crowded) != []


def test_label_points_names_a_length_mismatch():
    ax = Figure().add_subplot()
    with pytest.raises(ValueError, match="2 points and 1 labels"):
        diagrams.label_points(ax, [(0, 0), (1, 1)], ["a"])


def test_label_points_keeps_labels_off_the_lines():
    fig = Figure(figsize=(4, 3))
    ax = fig.add_subplot()
    xs = [0.1, 0.3, 0.5, 0.7, 0.9]
    ax.plot(xs, [0.5] * 5, "o-")  # a horizontal line: a label right of a point would sit on it
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    notes = diagrams.label_points(ax, [(x, 0.5) for x in xs], ["a", "b", "c", "d", "e"], fontsize=8)
    renderer = fig.canvas.get_renderer()
    x_start, y_line = ax.transData.transform((0.1, 0.5))
    x_end = ax.transData.transform((0.9, 0.5))[0]
    for note in notes:  # no label box meets the segment from the first point to the last
        box = note.get_window_extent(renderer)
        covers = box.y0 - 1 < y_line < box.y1 + 1 and box.x0 - 1 < x_end and box.x1 + 1 > x_start
        assert not covers, f"label {note.get_text()!r} covers the line"


def test_plot_tree_draws_the_visited_nodes(tiny_native):
    import torch

    from infergen import mcts_decode
    from infergen.book.viz_mcts import plot_tree

    matplotlib.use("Agg")
    out = mcts_decode(tiny_native, torch.tensor([[5, 6, 7, 8]]), 2, num_simulations=20, top_k=4, return_dict=True)
    tree = out.info["tree"]
    ax = plot_tree(tree, max_depth=2)
    drawn = sum(1 for depth, node in tree.walk() if depth <= 2 and (depth == 0 or node.visits >= 1))
    assert drawn > 1 and len(ax.texts) == drawn
    ax2 = plot_tree(tree.to_dict(), max_depth=1, min_visits=0)  # reloaded from JSON-like dicts
    assert len(ax2.texts) == 1 + len(tree.children)


def test_show_source_prints_the_real_code_outside_jupyter(capsys, monkeypatch):
    import sys

    from infergen.book import viz

    def shown(x):
        """A docstring."""
        return x + 1

    monkeypatch.setitem(sys.modules, "IPython.display", None)  # as in a plain Python session
    viz.show_source(shown)
    assert capsys.readouterr().out == 'def shown(x):\n    """A docstring."""\n    return x + 1\n\n'
    viz.show_source(shown, lines=(3, 3))
    assert capsys.readouterr().out == "    return x + 1\n"
