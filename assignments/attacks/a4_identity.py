"""ATTACK (issue 18): a value function that ignores the text -- a constant 0.5 for every context, with tidy
input validation. Must score at most 25%."""


def sentiment_value(positive, negative, *, tokenizer=None, weight=0.5):
    if not positive:
        raise ValueError("positive must name at least one token id or word")
    for item in list(positive) + list(negative):
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise TypeError(f"lexicon items must be token ids or words, got {item!r}")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 1:
        raise ValueError(f"weight must be in [0, 1], got {weight!r}")

    def value(ctx):
        return 0.5

    return value
