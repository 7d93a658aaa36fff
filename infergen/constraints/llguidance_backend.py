"""The default production backend: llguidance (regex, JSON schema, Lark grammars).

llguidance (the engine behind guidance, also used by vLLM, SGLang and llama.cpp) parses with an
Earley parser over a lexer and computes each mask *lazily*, when it is asked for, walking a trie of
the vocabulary -- so compiling a pattern takes milliseconds, whatever its size, and a mask costs
tens of microseconds to a few milliseconds. A matcher holds one row's position; ``deep_copy`` forks it.

One difference from the teaching automaton, on purpose: *forcing*. Where the pattern allows only one
text next (the key ``"name"`` of a schema), llguidance allows only that text's canonical tokens (the
ones the tokenizer itself would produce), not every split of it (``n`` + ``ame``): a model never saw the
odd splits in training. Its masks are therefore a subset of the teaching masks; with
``compile(..., forcing=False)`` they are equal (tests/test_constraints.py checks both).
"""
from __future__ import annotations

import json

import numpy as np
import torch

from .budget import closing_rank
from .vocabulary import TokenVocabulary

__all__ = ["LLGuidanceCompiler", "LLGuidanceConstraint", "LLGuidanceState"]

# JSON output the way json.dumps writes it ({"a": 1, "b": [1, 2]}): one layout, so a small model
# cannot wander into endless whitespace. A schema may override these with its own "x-guidance" key.
JSON_DEFAULTS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _import():
    try:
        import llguidance
        import llguidance.hf
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("backend='llguidance' needs the llguidance package: "
                          "pip install 'infergen[constraints]' (or pip install llguidance)") from e
    return llguidance


class LLGuidanceCompiler:
    """Turns patterns into llguidance grammars for one tokenizer (its token trie is built once, here)."""

    backend = "llguidance"
    kinds = ("regex", "json_schema", "grammar", "choices")

    def __init__(self, tokenizer, vocab: TokenVocabulary):
        llg = _import()
        self.llg, self.vocab = llg, vocab
        self.tokenizer = llg.hf.from_tokenizer(tokenizer, n_vocab=vocab.size, eos_token=list(vocab.eos_token_ids))
        self.closing_rank = closing_rank(vocab.token_bytes)  # budget closing's token order, once per tokenizer

    def grammar(self, kind: str, source, pattern: str | None) -> str:
        """The llguidance grammar text (not yet checked) for a regex, a schema dict or Lark text."""
        M = self.llg.LLMatcher
        if kind in ("regex", "choices"):
            return M.grammar_from_regex(pattern)
        if kind == "json_schema":
            return M.grammar_from_json_schema(source, defaults=JSON_DEFAULTS)
        return M.grammar_from_lark(source)

    def compile(self, kind: str, source, pattern: str | None, forcing: bool = True) -> "LLGuidanceConstraint":
        """``ValueError`` with llguidance's own message when the pattern is invalid.

        ``forcing=False`` switches off llguidance's *forcing*: where the pattern leaves only one way
        forward (``name`` in ``\\{"name": ...``), llguidance normally allows only the canonical tokens of
        that text (``name``, not ``n`` then ``ame``). Without it the mask is exactly "every token that
        keeps a match possible", as in the teaching automaton. (Regex, choices and Lark grammars.)
        """
        grammar = self.grammar(kind, source, pattern)
        if not forcing:
            spec = json.loads(grammar)
            for g in spec["grammars"]:
                if g.get("lark_grammar") is None:
                    raise ValueError(f"forcing=False needs a regex, choices or a grammar, not {kind}")
                g["lark_grammar"] = '%llguidance {"no_forcing": true}\n' + g["lark_grammar"]
            grammar = json.dumps(spec)
        error = self.llg.LLMatcher.validate_grammar(grammar, self.tokenizer)
        if error:
            raise ValueError(error.strip())
        matcher = self.llg.LLMatcher(self.tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise ValueError(matcher.get_error().strip())
        return LLGuidanceConstraint(kind, source, matcher, self.vocab, self.closing_rank)


class LLGuidanceConstraint:
    """A compiled llguidance grammar: an ``LLMatcher`` at the start, forked for every row."""

    backend = "llguidance"

    def __init__(self, kind: str, source, matcher, vocab: TokenVocabulary, closing_rank=None):
        self.kind, self.source, self.closing_rank = kind, source, closing_rank
        self._initial = matcher  # never advanced: start() forks it
        self.vocab_size = vocab.size
        self.eos_token_ids = vocab.eos_token_ids

    def __repr__(self) -> str:
        return f"LLGuidanceConstraint({self.kind}={self.source!r})"

    def start(self) -> "LLGuidanceState":
        """A fresh row state (a deep copy of the initial matcher)."""
        return LLGuidanceState(self, self._initial.deep_copy())


class LLGuidanceState:
    """One ``LLMatcher``. Ended (EOS consumed) and dead (a wrong token) are tracked here."""

    def __init__(self, constraint: LLGuidanceConstraint, matcher, ended: bool = False, dead: bool = False):
        self.constraint, self.matcher, self.ended, self.dead = constraint, matcher, ended, dead

    def allowed(self) -> torch.Tensor:
        """Bool ``[vocab_size]``: the matcher's mask (computed now), EOS iff accepting."""
        n = self.constraint.vocab_size
        out = np.zeros(n, dtype=np.bool_)
        if self.ended:
            out[list(self.constraint.eos_token_ids)] = True
        elif not self.dead:
            bits = np.zeros(((n + 31) // 32) * 4, dtype=np.uint8)  # one bit per token, 32-bit words
            self.matcher.unsafe_compute_mask_ptr(bits.ctypes.data, bits.size)
            out[:] = np.unpackbits(bits, bitorder="little")[:n]  # numpy: no thread pool for a 49k vector
            out[list(self.constraint.eos_token_ids)] = self.matcher.is_accepting()
        return torch.from_numpy(out)

    def accepting(self) -> bool:
        """Is the text so far a complete match?"""
        return self.ended or (not self.dead and self.matcher.is_accepting())

    def advance(self, token_id: int) -> None:
        """Consume one token: EOS ends the state, a token the matcher refuses kills it."""
        if self.dead:
            return
        if token_id in self.constraint.eos_token_ids:
            if self.accepting():
                self.ended = True
            else:
                self.dead = True
        elif self.ended or not 0 <= token_id < self.constraint.vocab_size:
            self.ended, self.dead = False, True
        elif not self.matcher.consume_token(token_id):  # a disallowed token puts the matcher in error
            self.dead = True

    def fork(self) -> "LLGuidanceState":
        """An independent copy (the matcher deep-copied)."""
        return LLGuidanceState(self.constraint, self.matcher.deep_copy(), self.ended, self.dead)
