"""Budget closing: finish a constrained output inside ``max_new_tokens`` whenever a completion fits.

A JSON object cut off by the token limit does not parse. So each row keeps an estimate of how many
tokens its shortest completion needs (:func:`closing_path`: a greedy walk that, from a fork of the row's
state, always takes the allowed token ranked best by :func:`closing_rank` -- ``""``, ``"}``, ``"``,
``}``, ``]``, ``0``, ... -- until the pattern accepts, plus one EOS unless the row is complete). With
``r`` tokens left (this one included):

* far from the limit (``estimate + MARGIN < r``) nothing changes and nothing is computed: the estimate
  is refreshed only when it could have grown into the margin (each token assumed to grow it by at most
  ``MARGIN``), about ``MARGIN * ln(max_new_tokens / MARGIN)`` times per generation;
* near it (the *closing window*) a row may take only those of its ``TOP_K`` most likely allowed tokens
  after which a closing path still fits, plus the first token of its own closing path (which fits);
* when no closing path fits at all the row allows nothing: it is *dead* and the decoder finishes it
  with ``"no_valid_token"`` at once, instead of spending the rest of the budget on a cut-off output.

Cost: one mask per step of a walk; in the window ``TOP_K + 1`` walks per step and a copy of the row's
logits to the host (a device synchronisation, in the window only), and sampling there chooses among at
most ``TOP_K + 1`` tokens. The walk is greedy, so its length bounds the shortest completion from above
(closing may start early, never late) -- unless one token lengthens it by more than ``MARGIN`` tokens
before the window starts (a key whose value is a large required object), which can still cut a row.
"""
from __future__ import annotations

import numpy as np

from .base import ConstraintState, is_complete

__all__ = ["CLOSERS", "MARGIN", "TOP_K", "closing_path", "closing_rank"]

#: texts a closing walk prefers, best first: end a string, close brackets, the shortest values
# (a quote first: inside a string it closes it, where ``}}`` would only be more text; a comma before
# the digits: after ``1`` it ends the number, where ``0`` would go on forever)
CLOSERS = ('""', '"}', '"]', '"', "}}", "]}", "}]", "]]", "}", "]", ", ", ",", "0", "1", "[]", "{}",
           "null", "true", "false", " ", "a")
#: by how many tokens one token is assumed to lengthen the shortest completion at most
MARGIN = 8
#: how many of the model's most likely allowed tokens the closing window considers
TOP_K = 4


def closing_rank(token_bytes) -> np.ndarray:
    """int64 ``[vocab_size]``: each id's rank for a closing walk (lower is taken first): an id whose text
    is one of the :data:`CLOSERS` its place in them, every other id after them by its number (BPE numbers
    shorter merges first)."""
    closer = {text.encode(): r for r, text in enumerate(CLOSERS)}
    return np.array([closer.get(b, i + len(CLOSERS)) for i, b in enumerate(token_bytes)], dtype=np.int64)


def closing_path(state: ConstraintState, limit: int, rank: np.ndarray | None) -> list[int] | None:
    """A short completion of ``state`` (which is not changed): token ids, ending with an EOS id unless
    the pattern is then complete; ``None`` when the walk needs more than ``limit`` tokens or dies.
    ``rank``: the constraint's ``closing_rank`` (:func:`closing_rank`), or None for the ids' order."""
    s, path = state.fork(), list[int]()
    while len(path) <= limit:
        allowed = s.allowed().numpy()
        if is_complete(s, allowed):  # the decoder ends it without a token
            return path
        if s.accepting():
            return [*path, *s.constraint.eos_token_ids[:1]] if len(path) < limit else None
        # not accepting, so no EOS id is allowed: the best allowed token, if there is one
        ranked = np.where(allowed, np.arange(allowed.size) if rank is None else rank, np.iinfo(np.int64).max)
        token = int(ranked.argmin())
        if not allowed[token]:
            return None
        path.append(token)
        s.advance(token)
    return None
