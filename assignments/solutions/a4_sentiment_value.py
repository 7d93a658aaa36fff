"""Reference solution of assignment 4: a lexicon sentiment value function for MCTS decoding.

Teachers: this folder (``assignments/solutions``) is the answer key. Delete it before handing out.
"""
from __future__ import annotations

import math
import re

from infergen._validation import check_number

_WORD = re.compile(r"[a-z0-9']+")


def _split_lexicon(items, name):
    ids, words = set(), set()
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise TypeError(f"{name} must hold token ids (int) or words (str), got {item!r}")
        if isinstance(item, int):
            check_number(f"{name} token id", item, low=0, integer=True)
            ids.add(item)
        else:
            word = item.strip().lower()
            if not _WORD.fullmatch(word or "-"):
                raise ValueError(f"{name} words must be single words of letters/digits/apostrophes, got {item!r}")
            words.add(word)
    return ids, words


def sentiment_counts(ctx, pos_ids, pos_words, neg_ids, neg_words, tokenizer=None) -> tuple[int, int]:
    """Occurrences of positive and negative lexicon items in the continuation (prompt excluded)."""
    new = ctx.new_ids.tolist()
    pos = sum(t in pos_ids for t in new)
    neg = sum(t in neg_ids for t in new)
    if pos_words or neg_words:
        tok = tokenizer if tokenizer is not None else getattr(ctx, "tokenizer", None)
        if tok is None:
            raise ValueError("word lexicons need a tokenizer: pass tokenizer= (or use token ids)")
        words = _WORD.findall(tok.decode(new, skip_special_tokens=True).lower())
        pos += sum(w in pos_words for w in words)
        neg += sum(w in neg_words for w in words)
    return pos, neg


def sentiment_value(positive, negative, *, tokenizer=None, weight=0.5):
    """A value function ``ctx -> float in [0, 1]`` that rewards positive words and fluent text.

    ``reward = (1 + (p - n) / (p + n + 1)) / 2`` from the counts ``p``/``n`` of positive/negative
    lexicon items in the continuation; ``fluency = exp(mean(ctx.logprobs))`` (1 when empty);
    ``value = (1 - weight) * fluency + weight * reward``.
    """
    check_number("weight", weight, low=0, high=1)
    pos_ids, pos_words = _split_lexicon(positive, "positive")
    neg_ids, neg_words = _split_lexicon(negative, "negative")
    if not (pos_ids or pos_words):
        raise ValueError("positive must hold at least one token id or word")
    w = float(weight)

    def value(ctx) -> float:
        p, n = sentiment_counts(ctx, pos_ids, pos_words, neg_ids, neg_words, tokenizer)
        reward = (1.0 + (p - n) / (p + n + 1.0)) / 2.0
        lp = ctx.logprobs
        fluency = 1.0 if lp.numel() == 0 else math.exp(float(lp.float().mean()))
        return (1.0 - w) * fluency + w * reward

    return value
