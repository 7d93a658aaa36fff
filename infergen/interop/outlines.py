"""outlines-core behind the core's compiler protocol: ``make_constraint(..., backend=OutlinesCompiler)``.

An adapter to an optional second library (``pip install "infergen[constraints]"``, or
``pip install outlines-core``; imported when a compiler is made, never by the core): regex, JSON schema
and choices, no grammars. The core's own backends are llguidance (the default) and the teaching
automaton; tests/test_constraints.py checks that the three give the same masks.

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

import importlib
import json

import numpy as np
import torch

from ..constraints.base import BackendConstraint
from ..constraints.vocabulary import TokenVocabulary

__all__ = ["OutlinesCompiler", "OutlinesConstraint", "anchored"]


#: the byte read before the pattern by an extra token id (``vocab.size``) that no mask ever shows
START_BYTE = b"\x00"


def anchored(regex: str) -> str:
    """The pattern outlines-core indexes for ``regex``: every fullmatch kept (see the module docstring)."""
    return f"\\x00(?:{regex})$"


class OutlinesCompiler:
    """Builds outlines-core ``Index`` objects for one tokenizer (its ``Vocabulary`` is made once, here)."""

    kinds: tuple[str, ...] = ("regex", "json_schema", "choices")

    def __init__(self, tokenizer, vocab: TokenVocabulary):
        try:  # an optional dependency (the constraints extra)
            self.oc = importlib.import_module("outlines_core")
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("OutlinesCompiler needs the outlines-core package: pip install "
                              "'infergen[constraints]' (or pip install outlines-core)") from e
        self.vocab = vocab
        by_bytes: dict[bytes, list[int]] = {START_BYTE: [vocab.size]}  # the extra id that reads START_BYTE
        for i, b in enumerate(vocab.token_bytes):
            if b is not None:
                by_bytes.setdefault(b, []).append(i)
        self.vocabulary = self.oc.Vocabulary(vocab.eos_token_ids[0], by_bytes)

    def compile(self, kind: str, source, pattern: str | None) -> "OutlinesConstraint":
        """``ValueError`` with outlines-core's own message when the pattern is invalid. A JSON schema
        becomes outlines' own regex first, whose fullmatches are the texts valid under it."""
        try:
            if kind == "json_schema":
                pattern = self.oc.json_schema.build_regex_from_schema(json.dumps(source))
            assert pattern is not None, "a regex or choices constraint comes with its pattern"
            index = self.oc.Index(anchored(pattern), self.vocabulary)
        except (ValueError, RuntimeError) as e:
            raise ValueError(str(e).strip()) from None
        return OutlinesConstraint(kind, source, pattern, index, self.vocab)


class OutlinesConstraint(BackendConstraint):
    """An outlines-core ``Index``; a row's position is an index state number. The bool mask of each
    state is built once, when first needed."""

    backend = "outlines"

    def __init__(self, kind: str, source, regex: str, index, vocab: TokenVocabulary):
        # every row begins at the index state after START_BYTE (the index always reads it first)
        super().__init__(kind, source, vocab, index.get_next_state(index.get_initial_state(), vocab.size))
        self.regex, self.index = regex, index
        self._masks: dict[int, torch.Tensor] = {}

    def allowed_at(self, state: int) -> torch.Tensor:
        """Bool ``[vocab_size]``: the tokens allowed in index state ``state`` (EOS iff it is final)."""
        if state not in self._masks:
            out = np.zeros(self.vocab_size, dtype=np.bool_)
            out[[t for t in (self.index.get_allowed_tokens(state) or []) if t < self.vocab_size]] = True
            out[list(self.eos_token_ids)] = self.index.is_final_state(state)
            self._masks[state] = torch.from_numpy(out)
        return self._masks[state]

    def accepts(self, state: int) -> bool:
        """Is ``state`` a final state of the index?"""
        return self.index.is_final_state(state)

    def step(self, state: int, token_id: int) -> int | None:
        """The index state after ``token_id``; None for a token the state does not allow."""
        return self.index.get_next_state(state, token_id) if self.allowed_at(state)[token_id] else None
