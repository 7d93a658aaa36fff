"""An optional production backend: outlines-core (regex and JSON schema; no grammars).

outlines-core does, in Rust and ahead of time, what :mod:`~infergen.constraints.teaching` does in
Python: regex -> DFA -> for every DFA state, the tokens that keep it alive (its ``Index``). A JSON
schema is first turned into one big regex. So compiling costs time up front (growing with the
pattern), and a row's state is a plain integer -- forking a beam is free.
"""
from __future__ import annotations

import json

import numpy as np
import torch

from .vocabulary import TokenVocabulary

__all__ = ["OutlinesCompiler", "OutlinesConstraint", "OutlinesState"]


def _import():
    try:
        import outlines_core
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("backend='outlines' needs the outlines-core package: "
                          "pip install 'infergen[constraints]' (or pip install outlines-core)") from e
    return outlines_core


class OutlinesCompiler:
    backend = "outlines"
    kinds = ("regex", "json_schema", "choices")

    def __init__(self, vocab: TokenVocabulary):
        oc = _import()
        self.oc, self.vocab = oc, vocab
        by_bytes: dict[bytes, list[int]] = {}
        for i, b in enumerate(vocab.token_bytes):
            if b is not None:
                by_bytes.setdefault(b, []).append(i)
        self.vocabulary = oc.Vocabulary(vocab.eos_token_ids[0], by_bytes)

    def regex(self, kind: str, source, pattern: str | None) -> str:
        if kind == "json_schema":
            return self.oc.json_schema.build_regex_from_schema(json.dumps(source))
        return pattern

    def compile(self, kind: str, source, pattern: str | None) -> "OutlinesConstraint":
        try:
            regex = self.regex(kind, source, pattern)
            index = self.oc.Index(regex, self.vocabulary)
        except (ValueError, RuntimeError) as e:
            raise ValueError(str(e).strip()) from None
        return OutlinesConstraint(kind, source, regex, index, self.vocab)


class OutlinesConstraint:
    """An outlines-core ``Index``; the bool mask of each DFA state is built once, when first needed."""

    backend = "outlines"

    def __init__(self, kind: str, source, regex: str, index, vocab: TokenVocabulary):
        self.kind, self.source, self.regex, self.index = kind, source, regex, index
        self.vocab_size = vocab.size
        self.eos_token_ids = vocab.eos_token_ids
        self._masks: dict[int, torch.Tensor] = {}

    def __repr__(self) -> str:
        return f"OutlinesConstraint({self.kind}={self.source!r})"

    def mask_of(self, state: int) -> torch.Tensor:
        if state not in self._masks:
            out = np.zeros(self.vocab_size, dtype=np.bool_)
            out[[t for t in (self.index.get_allowed_tokens(state) or []) if t < self.vocab_size]] = True
            out[list(self.eos_token_ids)] = self.index.is_final_state(state)
            self._masks[state] = torch.from_numpy(out)
        return self._masks[state]

    def start(self) -> "OutlinesState":
        return OutlinesState(self, self.index.get_initial_state())


class OutlinesState:
    """An ``Index`` state number; ``None`` once dead."""

    def __init__(self, constraint: OutlinesConstraint, state: int | None, ended: bool = False):
        self.constraint, self.state, self.ended = constraint, state, ended

    def allowed(self) -> torch.Tensor:
        c = self.constraint
        if self.state is None:
            return torch.zeros(c.vocab_size, dtype=torch.bool)
        if self.ended:
            out = torch.zeros(c.vocab_size, dtype=torch.bool)
            out[list(c.eos_token_ids)] = True
            return out
        return c.mask_of(self.state)

    def accepting(self) -> bool:
        return self.state is not None and (self.ended or self.constraint.index.is_final_state(self.state))

    def advance(self, token_id: int) -> None:
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
        return OutlinesState(self.constraint, self.state, self.ended)
