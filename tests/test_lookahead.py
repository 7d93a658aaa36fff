"""Chapter 6's look-ahead task (infergen.bench.lookahead) and its committed run (benchmarks/mcts_demo.py)."""
from __future__ import annotations

import pytest

from infergen.bench import lookahead


def test_words_keep_long_words_that_are_not_stop_words_in_order():
    assert lookahead.words("The lovely Victorian house, which stood THERE alone") == ["lovely", "victorian", "house",
                                                                                      "stood", "alone"]


def test_the_reward_is_a_case_insensitive_substring_test():
    assert lookahead.has("A Victorian home", "victorian") and lookahead.has("categories", "cat")
    assert not lookahead.has("A Victorian home", "porch")


def test_find_task_follows_its_rule_on_the_bundled_model(smollm):
    model, tok = smollm
    prompt = "My dog loves to"
    firsts, probs, texts = lookahead.branches(model, tok, prompt)
    task = lookahead.find_task(model, tok, prompt)
    assert len(texts) == 5 and probs == sorted(probs, reverse=True)
    rank = task["rank"]
    assert rank >= 3 and task["first_token_prob"] < 0.1 and task["first_token"] == firsts[rank - 1]
    assert task["branch"] == texts[rank - 1] and task["greedy_branch"] == texts[0]
    # the keyword: in exactly one branch (that one), not in the prompt, 5+ letters
    assert [lookahead.has(t, task["keyword"]) for t in texts] == [i == rank - 1 for i in range(5)]
    assert not lookahead.has(prompt, task["keyword"]) and len(task["keyword"]) >= 5
    # no less likely branch had a qualifying word (the rule takes the least likely one)
    for later in range(rank, 5):
        others = [t for j, t in enumerate(texts) if j != later] + [prompt]
        assert all(any(lookahead.has(o, w) for o in others) for w in lookahead.words(texts[later]))


def _row(greedy, mcts_tokens, first_hits, drawn):
    ok = dict(ok=greedy, tokens=4)
    return {"greedy": ok, "beam": ok, "beam + reward": ok, "mcts (priors T=1)": dict(ok=True, tokens=mcts_tokens),
            "mcts (flat priors)": dict(ok=False, tokens=mcts_tokens), "best_of_n_first_hit": first_hits,
            "best_of_n_drawn": drawn}


def test_summarise_counts_best_of_n_at_the_mcts_tokens():
    run = dict(horizon=4, rows=[_row(True, 10, [0, 2, None], 3), _row(False, 7, [1, None, 5], 6)])
    table = lookahead.summarise(run)
    assert table["greedy"]["successes"] == 1 and table["greedy"]["trials"] == 2 and table["greedy"]["tokens"] == 4
    assert table["mcts (priors T=1)"]["rate"] == 1.0 and table["mcts (flat priors)"]["rate"] == 0.0
    bon = table["best-of-N = mcts (priors T=1)"]
    # N = ceil(10 / 4) = 3 and ceil(7 / 4) = 2: hits at 0 and 2 (row 1), at 1 (row 2)
    assert (bon["successes"], bon["trials"], bon["n"], bon["tokens"]) == (3, 6, 2.5, 10.0)
    assert bon["seed_rates"] == [1.0, 0.5, 0.0]
    assert 0 < bon["low"] < 0.5 < bon["high"] < 1
    assert lookahead.best_of_n_curve(run) == [1 / 6, 2 / 6, 3 / 6]  # first hits 0; 1; 2 (N = 1, 2, 3)
    with pytest.raises(ValueError, match="drew 2 samples"):
        lookahead.best_of_n_at(_row(True, 12, [0], 2), "mcts (flat priors)", 4)


def test_the_committed_run_follows_the_task_rule_and_the_budget():
    from infergen.bench.committed import committed_results

    run = committed_results("mcts")
    rows = run["rows"]
    assert len(rows) >= 20 and run["seeds"] >= 3 and run["command"].startswith("python benchmarks/mcts_demo.py")
    assert len({r["prompt"] for r in rows}) == len(rows)
    for r in rows:
        assert lookahead.has(r["branch"], r["keyword"]) and not lookahead.has(r["greedy_branch"], r["keyword"])
        assert r["rank"] >= 3 and r["first_token_prob"] < 0.1
        assert len(r["best_of_n_first_hit"]) == run["seeds"]
        assert r["beam"]["ok"] == lookahead.has(r["beam"]["text"], r["keyword"]) and not r["greedy"]["ok"]
        for method in lookahead.METHODS[3:]:  # the recorded reward is that of the recorded text
            assert r[method]["ok"] == lookahead.has(r[method]["text"], r["keyword"])
            assert r[method]["tokens"] > run["horizon"]
    table = lookahead.summarise(run)
    assert table["best-of-N = mcts (flat priors)"]["trials"] == len(rows) * run["seeds"]
