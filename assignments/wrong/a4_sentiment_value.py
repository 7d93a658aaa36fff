"""A known-WRONG solution of assignment 4, used to prove that the grading can fail.

The bug: words are matched as *substrings* of the decoded text (``"good" in text``), so "goodbye" counts
as positive -- the pitfall of naive keyword matching. Token-id lexicons are handled correctly.
"""
import math

from infergen._validation import check_number


def sentiment_value(positive, negative, *, tokenizer=None, weight=0.5):
    check_number("weight", weight, low=0, high=1)
    if not positive:
        raise ValueError("positive must hold at least one token id or word")
    for item in list(positive) + list(negative):
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise TypeError(f"lexicon items must be token ids or words, got {item!r}")
    pos_ids = {t for t in positive if isinstance(t, int)}
    neg_ids = {t for t in negative if isinstance(t, int)}
    pos_words = [w.lower() for w in positive if isinstance(w, str)]
    neg_words = [w.lower() for w in negative if isinstance(w, str)]

    def value(ctx):
        new = ctx.new_ids.tolist()
        p = sum(t in pos_ids for t in new)
        n = sum(t in neg_ids for t in new)
        if pos_words or neg_words:
            tok = tokenizer or ctx.tokenizer
            text = tok.decode(new, skip_special_tokens=True).lower()
            p += sum(text.count(w) for w in pos_words)           # BUG: substring, not whole words
            n += sum(text.count(w) for w in neg_words)
        fluency = 1.0 if ctx.logprobs.numel() == 0 else math.exp(float(ctx.logprobs.mean()))
        return (1 - weight) * fluency + weight * (1 + (p - n) / (p + n + 1)) / 2

    return value
