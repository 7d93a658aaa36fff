"""The book's companion: figures and widgets the chapters draw with; not part of the library it teaches.

    pip install "infergen[book]"        # matplotlib and ipywidgets, which the core does not need

- :mod:`infergen.book.viz`: :func:`~infergen.book.viz.show_source` (a chapter shows the library's real
  code, never a copy), probability bar charts, the environment report at the top of every chapter;
- :mod:`infergen.book.diagrams`: concept diagrams drawn from code (prefill/decode, a beam step, a
  contrastive step, an MCTS simulation, speculative decoding, paged attention) and the label-collision
  checks the chapters run on their plots;
- :mod:`infergen.book.viz_mcts`: the MCTS search tree of chapter 6.

A companion sits above the core: it imports :mod:`infergen`, and nothing in the core imports it (the
import-linter contracts of pyproject.toml check this in ``make lint``). Its submodules are imported
one by one (``from infergen.book import diagrams``), so that importing this package needs no
matplotlib.
"""
