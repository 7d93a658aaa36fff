"""The benchmark runs committed with the book, shipped inside the package.

Chapter 11 shows your own results when you have made them (``make bench`` writes ``bench-results/``,
``make bench-peers`` ``benchmarks/results/peers/``), and otherwise these: the full ``make bench`` run on
the 2-core CPU the book is built on (``"cpu"``), the llama.cpp side-by-side run (``"peers"``), for
chapter 12 the JSONSchemaBench sample (``"jsonschemabench"``), for chapter 6 the look-ahead task
(``"mcts"``) and for chapters 2-5 their comparisons across prompts and seeds (``"spreads"``). They
travel with the package so that a chapter opened alone (on Colab, say) reads no file of the repository.
The copies in ``benchmarks/results/`` are the same files (``tests/test_bench.py`` keeps them equal).
"""
from __future__ import annotations

import json
from importlib.resources import files

#: the committed runs: name -> what it is
RUNS = {"cpu": "make bench on the book's 2-core CPU", "peers": "make bench-peers: infergen beside llama.cpp",
        "jsonschemabench": "benchmarks/jsonschemabench.py: 60 real-world JSON schemas, before and after (chapter 12)",
        "mcts": "benchmarks/mcts_demo.py: a keyword task built for look-ahead, MCTS against greedy, beam and "
                "best-of-N at equal model tokens (chapter 6)",
        "spreads": "benchmarks/spreads.py: chapters 2-5's comparisons over 24 prompts and several seeds, with 95% "
                   "bootstrap intervals"}


def committed_results(name: str) -> dict:
    """The committed run ``name`` (one of :data:`RUNS`) as the dict its ``results.json`` holds."""
    if name not in RUNS:
        raise ValueError(f"name must be one of {sorted(RUNS)}, got {name!r}")
    return json.loads(files("infergen.bench").joinpath("results", f"{name}.json").read_text(encoding="utf8"))
