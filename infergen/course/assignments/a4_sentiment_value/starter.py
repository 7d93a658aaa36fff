"""Assignment 4 -- a value function that steers MCTS decoding towards positive sentiment.

Specification: book/assignments/a4_sentiment_value.md. Replace each ``raise NotImplementedError``.

Check:  python -m infergen.course check a4 path/to/this_file.py   (the public tests)
Grade:  python -m infergen.course grade a4 path/to/this_file.py   (your teacher adds the hidden checks)
"""
from __future__ import annotations


def sentiment_value(positive, negative, *, tokenizer=None, weight=0.5):
    """Return a value function ``value(ctx) -> float in [0, 1]`` for ``infergen.mcts_decode(value_fn=...)``.

    ``positive`` / ``negative``: lexicons, each a list of token ids (``int``, matched among the
    continuation's ids) and/or words (``str``, matched as whole words, case-insensitively, in the decoded
    continuation -- needs ``tokenizer`` here or ``ctx.tokenizer``). With ``p`` / ``n`` the number of
    positive / negative occurrences in the continuation ``ctx.new_ids`` (the prompt does not count)::

        reward  = (1 + (p - n) / (p + n + 1)) / 2
        fluency = exp(mean(ctx.logprobs))            (1.0 when ctx.logprobs is empty)
        value   = (1 - weight) * fluency + weight * reward

    ``weight`` in ``[0, 1]``; an empty ``positive`` lexicon or a bad item raises ``ValueError``/``TypeError``.
    """
    raise NotImplementedError("sentiment_value: your code here")
