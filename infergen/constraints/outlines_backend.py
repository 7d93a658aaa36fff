"""An optional production backend: outlines-core (regex and JSON schema; no grammars).

outlines-core does, in Rust and ahead of time, what :mod:`~infergen.constraints.teaching` does in
Python: regex -> DFA -> for every DFA state, the tokens that keep it alive (its ``Index``). A JSON
schema is first turned into one big regex. So compiling costs time up front (growing with the
pattern), and a row's state is a plain integer -- forking a beam is free.

**Leftmost-first, and how we get the whole language back.** outlines-core builds its DFA with the
Rust ``regex`` crate's default *leftmost-first* match semantics: once a higher-priority branch has
matched, lower-priority threads are dropped. For a search that is right; for constrained decoding it
loses texts: ``yes|yesterday`` (what ``choices=["yes", "yesterday"]`` builds), ``a|ab``, ``x|x+``,
``yes(terday)?`` all stop at the first match. We index ``\x00(?:R)$`` instead of ``R``: with the end
anchor ``$`` no thread can *match* before the end of the text, so none is ever dropped and the DFA
accepts exactly the texts ``R`` fullmatches. The leading ``\x00`` (read through an extra token id,
``vocab.size``, past the real vocabulary, that no mask shows) keeps ``$`` away from the start state, whose
lookahead would otherwise make the index refuse any pattern that matches the empty text.
"""
from __future__ import annotations

import json

import numpy as np
import torch

from .vocabulary import TokenVocabulary

__all__ = ["OutlinesCompiler", "OutlinesConstraint", "OutlinesState", "anchored"]


def _import():
    try:
        import outlines_core
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("backend='outlines' needs the outlines-core package: "
                          "pip install 'infergen[constraints]' (or pip install outlines-core)") from e
    return outlines_core


#: the byte read before the pattern by an extra token id (``vocab.size``) that no mask ever shows
START_BYTE = b"\x00"


def anchored(regex: str) -> str:
    """The pattern outlines-core indexes for ``regex``: every fullmatch kept (see the module docstring)."""
    return f"\\x00(?:{regex})$"


class OutlinesCompiler:
    """Builds outlines-core ``Index`` objects for one tokenizer (its ``Vocabulary`` is made once, here)."""

    backend = "outlines"
    kinds = ("regex", "json_schema", "choices")

    def __init__(self, vocab: TokenVocabulary):
        oc = _import()
        self.oc, self.vocab = oc, vocab
        by_bytes: dict[bytes, list[int]] = {}
        for i, b in enumerate(vocab.token_bytes):
            if b is not None:
                by_bytes.setdefault(b, []).append(i)
        by_bytes.setdefault(START_BYTE, []).append(vocab.size)  # the extra id that reads START_BYTE
        self.vocabulary = oc.Vocabulary(vocab.eos_token_ids[0], by_bytes)

    def regex(self, kind: str, source, pattern: str | None) -> str:
        """The regex (outlines' own for a JSON schema) whose fullmatches are the allowed texts."""
        if kind == "json_schema":
            return self.oc.json_schema.build_regex_from_schema(json.dumps(source))
        assert pattern is not None, "a regex or choices constraint comes with its pattern"
        return pattern

    def compile(self, kind: str, source, pattern: str | None) -> "OutlinesConstraint":
        """``ValueError`` with outlines-core's own message when the pattern is invalid."""
        try:
            regex = self.regex(kind, source, pattern)
            index = self.oc.Index(anchored(regex), self.vocabulary)
        except (ValueError, RuntimeError) as e:
            raise ValueError(str(e).strip()) from None
        start = index.get_next_state(index.get_initial_state(), self.vocab.size)
        if start is None:  # pragma: no cover - the index always reads START_BYTE first
            raise ValueError("outlines-core built no state after the start byte")
        return OutlinesConstraint(kind, source, regex, index, self.vocab, start)


class OutlinesConstraint:
    """An outlines-core ``Index``; the bool mask of each DFA state is built once, when first needed."""

    backend = "outlines"

    def __init__(self, kind: str, source, regex: str, index, vocab: TokenVocabulary, start_state: int):
        self.kind, self.source, self.regex, self.index = kind, source, regex, index
        self.start_state = start_state  # the index state after START_BYTE: where every row begins
        self.vocab_size = vocab.size
        self.eos_token_ids = vocab.eos_token_ids
        self._masks: dict[int, torch.Tensor] = {}

    def __repr__(self) -> str:
        return f"OutlinesConstraint({self.kind}={self.source!r})"

    def mask_of(self, state: int) -> torch.Tensor:
        """Bool ``[vocab_size]``: the tokens allowed in index state ``state`` (EOS iff it is final)."""
        if state not in self._masks:
            out = np.zeros(self.vocab_size, dtype=np.bool_)
            out[[t for t in (self.index.get_allowed_tokens(state) or []) if t < self.vocab_size]] = True
            out[list(self.eos_token_ids)] = self.index.is_final_state(state)
            self._masks[state] = torch.from_numpy(out)
        return self._masks[state]

    def start(self) -> "OutlinesState":
        """A fresh row state at the beginning of the pattern."""
        return OutlinesState(self, self.start_state)


class OutlinesState:
    """An ``Index`` state number; ``None`` once dead."""

    def __init__(self, constraint: OutlinesConstraint, state: int | None, ended: bool = False):
        self.constraint, self.state, self.ended = constraint, state, ended

    def allowed(self) -> torch.Tensor:
        """Bool ``[vocab_size]``: which ids may come next (EOS iff accepting); shared, do not modify."""
        c = self.constraint
        if self.state is None:
            return torch.zeros(c.vocab_size, dtype=torch.bool)
        if self.ended:
            out = torch.zeros(c.vocab_size, dtype=torch.bool)
            out[list(c.eos_token_ids)] = True
            return out
        return c.mask_of(self.state)

    def accepting(self) -> bool:
        """Is the text so far a complete match?"""
        return self.state is not None and (self.ended or self.constraint.index.is_final_state(self.state))

    def advance(self, token_id: int) -> None:
        """Consume one token: EOS ends the state, a token that was not allowed kills it."""
        c = self.constraint
        if self.state is None:
            return
        if token_id in c.eos_token_ids:
            if self.accepting():
                self.ended = True
            else:
                self.state = None
        elif self.ended or not 0 <= token_id < c.vocab_size or not bool(self.allowed()[token_id]):
            self.state, self.ended = None, False
        else:
            self.state = c.index.get_next_state(self.state, token_id)

    def fork(self) -> "OutlinesState":
        """An independent copy."""
        return OutlinesState(self.constraint, self.state, self.ended)
