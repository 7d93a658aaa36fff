"""A task built for look-ahead, and the summary of its committed run (chapter 6, ``benchmarks/mcts_demo.py``).

**The task.** :func:`find_task` continues each of a prompt's ``top_k`` most likely first tokens greedily
to ``horizon`` tokens and picks as the keyword a word (5+ letters, no stop word, not in the prompt) that
occurs in exactly one branch: the least likely branch whose first token ranks 3rd or lower with a
probability below 0.1 (the longest such word). The reward of a continuation is :func:`has`: 1 if it
contains the keyword; the search steers towards it with the same test as a value function,
:func:`keyword_reward` (token ids or strings, usually mixed with the likelihood). By construction the good first token is one that greedy search does not take and
that samples rarely take, while a greedy rollout from it reaches the reward: the case look-ahead is for.
The rule is fixed before any decoder runs; no keyword is picked by looking at a method's result.

**The summary.** :func:`summarise` turns the committed run (``committed_results("mcts")``) into success
rates with Wilson intervals and the model tokens each method spent, best-of-N included at the same
model tokens as each MCTS run (:func:`best_of_n_at`).
"""
from __future__ import annotations

import re
from typing import Any

import torch

from infergen import greedy_search
from infergen.bench.stats import wilson_interval
from infergen.decoding.mcts import ValueContext, ValueFn

#: The prompts the committed run tries, in order (the first ``--prompts`` of them).
PROMPTS = [
    "The future of AI is", "Once upon a time, in a small village by the sea,", "The capital of France is",
    "My favourite book is", "Here is a recipe for pancakes:", "The weather today is", "Scientists have discovered",
    "The best way to learn a language is", "My dog loves to", "In the morning I usually",
    "The meeting was cancelled because", "The old house at the end of the street", "She opened the letter and",
    "The most important invention of the last century is", "To stay healthy, you should",
    "The city council announced that", "After the storm, the farmers", "My grandmother used to tell me",
    "The key to a successful startup is", "In the middle of the forest there was", "The museum's new exhibition",
    "He looked out of the window and saw", "The football match ended", "Learning to play the piano",
    "The train to London was", "Our solar system contains", "The doctor told the patient",
    "Every summer, my family goes", "The recipe calls for", "The students were excited because",
    "The river flows through", "A good teacher is someone who", "The company reported that its profits",
    "When I was a child, I wanted to be", "The ancient Romans built", "The best thing about winter is",
]

#: Words that never become keywords (too common to say anything about the branch).
STOPWORDS = frozenset("""about above after again against along among another around because been before being
below between could doesn didn during either every first from have having into itself might never other
others their there these thing things those through under until which while whose would should there's
where what when with without your yours they them then than that this just also more most some such only
very over made make like""".split())

#: The methods of the committed run, in the order the chapter's table lists them.
METHODS = ("greedy", "beam", "beam + reward", "mcts (priors T=1)", "mcts (flat priors)")


def words(text: str) -> list[str]:
    """The candidate keywords of ``text``: lower-case words of 5+ letters that are not stop words, in order."""
    return [w for w in re.findall(r"[a-z]{5,}", text.lower()) if w not in STOPWORDS]


def has(text: str, keyword: str) -> bool:
    """The reward: ``keyword`` occurs in ``text`` (case-insensitive substring, as :func:`keyword_reward`)."""
    return keyword.lower() in text.lower()


def keyword_reward(*keywords, tokenizer: Any = None, case_sensitive: bool = False) -> ValueFn:
    """The keyword task's reward as an MCTS value function: the fraction of ``keywords`` that occur in the
    continuation, in ``[0, 1]`` (:func:`has` is the same test on a finished text).

    Each keyword is a token id (an ``int``: matched among the continuation's token ids, no tokenizer
    needed) or a string (matched as a substring of the decoded continuation; needs a ``tokenizer``,
    given here or to ``mcts_decode``). Keywords may be given one by one or in lists::

        keyword_reward("Paris", " museum", tokenizer=tok)     # strings
        keyword_reward([tok.encode(" Paris")[0]])              # a token id
        mix(likelihood_value, keyword_reward("Paris", tokenizer=tok), 0.5)   # stay fluent

    Pitfalls: the match is a substring test (``"cat"`` matches ``"category"``; add spaces to match
    words), and the reward is sparse (0 until a keyword appears), so the search only finds keywords
    within reach of its ``top_k`` / depth; mixing with the likelihood keeps the text fluent meanwhile.
    """
    flat = [k for item in keywords for k in (item if isinstance(item, (list, tuple, set)) else [item])]
    if not flat:
        raise ValueError("keyword_reward needs at least one keyword (a string or a token id)")
    for k in flat:
        if not (isinstance(k, str) and k) and not (isinstance(k, int) and not isinstance(k, bool) and k >= 0):
            raise TypeError(f"keyword_reward: keywords must be non-empty strings or token ids (int >= 0), got {k!r}")
    ids = [k for k in flat if isinstance(k, int)]
    words = [k if case_sensitive else k.lower() for k in flat if isinstance(k, str)]

    def reward(ctx: ValueContext) -> float:
        present = set(ctx.new_ids.tolist())
        found = sum(t in present for t in ids)
        if words:
            text = ctx.text if tokenizer is None else tokenizer.decode(ctx.new_ids.tolist(), skip_special_tokens=True)
            if text is None:
                raise ValueError("keyword_reward with string keywords needs a tokenizer: pass tokenizer= to "
                                 "keyword_reward or to mcts_decode (or give token ids instead)")
            found += sum(w in (text if case_sensitive else text.lower()) for w in words)
        return found / len(flat)

    return reward


def branches(model, tok, prompt: str, top_k: int = 5, horizon: int = 12) -> tuple[list[str], list[float], list[str]]:
    """The ``top_k`` most likely first tokens after ``prompt`` (decoded), their probabilities, and each
    one continued greedily to ``horizon`` tokens (the texts, first token included): one batched search."""
    ids = tok(prompt, return_tensors="pt").input_ids.to(model.device)
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(ids, model.new_cache(*ids.shape)).logits[0, -1].float(), -1)
    top = logprobs.topk(top_k)
    rest = greedy_search(model, torch.cat([ids.repeat(top_k, 1), top.indices[:, None]], 1), horizon - 1,
                         return_dict=True)
    texts = [tok.decode([first] + row.tolist(), skip_special_tokens=True)
             for first, row in zip(top.indices.tolist(), rest.new_tokens)]
    return [tok.decode([t]) for t in top.indices.tolist()], top.values.exp().tolist(), texts


def find_task(model, tok, prompt: str, top_k: int = 5, horizon: int = 12) -> dict | None:
    """The keyword task for ``prompt`` (see the module docstring), or None when no branch qualifies.

    Returns ``prompt``, ``keyword``, ``rank`` (1-based) and ``first_token_prob`` of the branch's first
    token, ``first_token``, ``branch`` (its greedy text) and ``greedy_branch`` (the most likely first
    token's).
    """
    firsts, probs, texts = branches(model, tok, prompt, top_k, horizon)
    for rank in range(top_k - 1, 1, -1):  # the least likely branch first; ranks 3 .. top_k
        if probs[rank] >= 0.1:
            continue
        others = [t.lower() for j, t in enumerate(texts) if j != rank] + [prompt.lower()]
        unique = [w for w in words(texts[rank]) if not any(w in o for o in others)]
        if unique:
            return dict(prompt=prompt, keyword=max(unique, key=len), rank=rank + 1, first_token_prob=probs[rank],
                        first_token=firsts[rank], branch=texts[rank], greedy_branch=texts[0])
    return None


def best_of_n_at(row: dict, method: str, horizon: int) -> tuple[int, list[bool]]:
    """Best-of-N at the model tokens of ``method`` on one prompt of the committed run: N = its tokens /
    ``horizon``, rounded up, and per seed whether one of the first N samples had the keyword."""
    n = -(-row[method]["tokens"] // horizon)
    if n > row["best_of_n_drawn"]:
        raise ValueError(f"the run drew {row['best_of_n_drawn']} samples per seed, fewer than N={n}")
    return n, [first is not None and first < n for first in row["best_of_n_first_hit"]]


def rate(successes: int, trials: int) -> dict:
    """``successes``/``trials`` with the rate and its 95 % Wilson interval (``low``, ``high``)."""
    low, high = wilson_interval(successes, trials)
    return dict(successes=successes, trials=trials, rate=successes / trials, low=low, high=high)


def summarise(result: dict) -> dict:
    """Per method of the committed run: :func:`rate` over its trials, ``tokens`` (mean model tokens per
    prompt), and for best-of-N (``"best-of-N = <mcts method>"``) ``seed_rates`` (the rate of each seed:
    its min and max are the spread over seeds) and ``n`` (mean N). Deterministic methods have one trial
    per prompt; best-of-N one per prompt and seed."""
    rows, horizon = result["rows"], result["horizon"]
    out = {}
    for method in METHODS:
        oks = [bool(r[method]["ok"]) for r in rows]
        out[method] = dict(rate(sum(oks), len(oks)), tokens=sum(r[method]["tokens"] for r in rows) / len(rows))
    for method in METHODS[3:]:
        drawn = [best_of_n_at(r, method, horizon) for r in rows]
        per_seed = list(zip(*[hits for _, hits in drawn]))
        flat = [hit for _, hits in drawn for hit in hits]
        out[f"best-of-N = {method}"] = dict(rate(sum(flat), len(flat)), tokens=horizon * sum(n for n, _ in drawn) / len(rows),
                                            n=sum(n for n, _ in drawn) / len(rows),
                                            seed_rates=[sum(s) / len(s) for s in per_seed])
    return out


def best_of_n_curve(result: dict) -> list[float]:
    """The best-of-N success rate (over prompts and seeds) for N = 1, 2, ... up to the fewest samples
    any prompt drew: the mean of "one of the first N samples had the keyword"."""
    rows = result["rows"]
    hits = [first for r in rows for first in r["best_of_n_first_hit"]]
    return [sum(f is not None and f < n for f in hits) / len(hits)
            for n in range(1, min(r["best_of_n_drawn"] for r in rows) + 1)]
