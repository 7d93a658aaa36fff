"""The committed spreads of chapters 2-5 (benchmarks/spreads.py): the shipped copy equals the repository's,
each chapter names the command that made it, and every summary interval is recomputed from the stored
per-prompt numbers (so a hand-edited summary, or one from another run, fails)."""
from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import pytest

from infergen.bench.stats import bootstrap_interval

ROOT = Path(__file__).resolve().parents[1]
REPO_COPY = ROOT / "benchmarks" / "results" / "spreads" / "results.json"


@pytest.fixture(scope="module")
def spreads():
    """The shipped copy, as the chapters read it."""
    return json.loads(files("infergen.bench").joinpath("results", "spreads.json").read_text(encoding="utf8"))


def _close(stored, recomputed):
    assert stored["n"] == recomputed.n
    for key, value in zip(("estimate", "low", "high"), recomputed[:3]):
        assert stored[key] == pytest.approx(value, abs=1e-9), key


def test_the_shipped_copy_equals_the_repository_copy(spreads):
    assert spreads == json.loads(REPO_COPY.read_text())


def test_every_chapter_names_its_command_and_its_prompts(spreads):
    assert set(spreads) <= {"chapter_2", "chapter_3", "chapter_4", "chapter_5"} and spreads
    for name, entry in spreads.items():
        assert entry["run"]["command"].startswith(f"python benchmarks/spreads.py --chapter {name[-1]}")
        assert len(entry["run"]["prompts"]) >= 16 and entry["run"]["seconds"] > 0


def test_the_summaries_follow_from_the_per_prompt_numbers(spreads):
    checked = 0
    if "chapter_4" in spreads:
        ch4 = spreads["chapter_4"]
        for k in ch4["settings"]["widths"]:
            _close(ch4["summary"][str(k)]["mean_logprob"], bootstrap_interval(ch4["runs"][str(k)]["mean_logprob"]))
            checked += 1
        diffs = [b - a for a, b in zip(ch4["runs"]["4"]["mean_logprob"], ch4["runs"]["8"]["mean_logprob"])]
        _close(ch4["summary"]["8 - 4"]["mean_logprob"], bootstrap_interval(diffs))
        assert ch4["summary"]["8 - 4"]["worse"] == sum(d < -1e-6 for d in diffs)
    if "chapter_5" in spreads:
        ch5 = spreads["chapter_5"]
        for mode, by_alpha in ch5["runs"].items():
            for alpha, run in by_alpha.items():
                _close(ch5["summary"][mode][alpha]["tokens"], bootstrap_interval([float(n) for n in run["lengths"]]))
                checked += 1
    if "chapter_2" in spreads:
        ch2 = spreads["chapter_2"]
        for name, runs in ch2["runs"].items():
            _close(ch2["summary"][name]["mean_logprob"], bootstrap_interval(runs[0]["mean_logprob"]))
            checked += 1
    if "chapter_3" in spreads:
        ch3 = spreads["chapter_3"]
        greedy, nucleus = ch3["runs"]["greedy"][0]["rep2"], ch3["runs"]["nucleus p=0.95"][0]["rep2"]
        diffs = [g - s for g, s in zip(greedy, nucleus) if g == g and s == s]
        _close(ch3["summary"]["greedy - nucleus rep2"], bootstrap_interval(diffs))
        assert ch3["summary"]["tree"]["greedy_is_best"] == sum(r == 1 for r in ch3["summary"]["tree"]["greedy_rank"])
        checked += 1
    assert checked


def test_every_interval_brackets_its_estimate(spreads):
    def intervals(node):
        if isinstance(node, dict):
            if {"estimate", "low", "high", "n"} <= set(node):
                yield node
            else:
                for value in node.values():
                    yield from intervals(value)
    found = list(intervals({k: v["summary"] for k, v in spreads.items()}))
    assert found
    for iv in found:
        assert iv["low"] - 1e-9 <= iv["estimate"] <= iv["high"] + 1e-9 and iv["n"] >= 1, iv
