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

import llguidance
import llguidance.hf
import numpy as np
import torch

from .base import BackendConstraint
from .budget import closing_rank
from .vocabulary import TokenVocabulary

__all__ = ["LLGuidanceCompiler", "LLGuidanceConstraint"]


class LLGuidanceCompiler:
    """Turns patterns into llguidance grammars for one tokenizer (its token trie is built once, here)."""

    kinds: tuple[str, ...] = ("regex", "json_schema", "grammar", "choices")

    def __init__(self, tokenizer, vocab: TokenVocabulary):
        self.vocab = vocab
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab.size,
                                                      eos_token=list(vocab.eos_token_ids))
        self.closing_rank = closing_rank(vocab.token_bytes)  # budget closing's token order (per tokenizer)

    def compile(self, kind: str, source, pattern: str | None, forcing: bool = True) -> "LLGuidanceConstraint":
        """``ValueError`` with llguidance's own message when the pattern is invalid.

        ``forcing=False`` switches off llguidance's *forcing*: where the pattern leaves only one way
        forward (``name`` in ``\\{"name": ...``), llguidance normally allows only the canonical tokens of
        that text (``name``, not ``n`` then ``ame``). Without it the mask is exactly "every token that
        keeps a match possible", as in the teaching automaton. (Regex, choices and Lark grammars.)
        """
        if kind in ("regex", "choices"):  # the grammar text (checked below), from a regex, a schema or Lark
            assert pattern is not None, "a regex or choices constraint comes with its pattern"
            grammar = llguidance.LLMatcher.grammar_from_regex(pattern)
        elif kind == "json_schema":  # JSON the way json.dumps writes it ({"a": 1, "b": [1, 2]}): one layout,
            # so a small model cannot wander into endless whitespace (a schema's "x-guidance" overrides it)
            grammar = llguidance.LLMatcher.grammar_from_json_schema(source, defaults={
                "whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "})
        else:
            grammar = llguidance.LLMatcher.grammar_from_lark(source)
        if not forcing:  # llguidance's directive, before the Lark text (a regex's: start: /regex/)
            if kind == "json_schema":
                raise ValueError(f"forcing=False needs a regex, choices or a grammar, not {kind}")
            lark = source if kind == "grammar" else json.loads(grammar)["grammars"][0]["lark_grammar"]
            grammar = '%llguidance {"no_forcing": true}\n' + lark
        matcher = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)
        if matcher.is_error():  # the grammar is invalid
            raise ValueError(matcher.get_error().strip())
        return LLGuidanceConstraint(kind, source, matcher, self.vocab, self.closing_rank)


class LLGuidanceConstraint(BackendConstraint):
    """A compiled llguidance grammar. A row's position is an ``LLMatcher``: ``initial`` (never advanced)
    is deep-copied for every row and every fork."""

    backend = "llguidance"

    def __init__(self, kind: str, source, matcher, vocab: TokenVocabulary, closing_rank=None):
        super().__init__(kind, source, vocab, matcher)
        self.closing_rank = closing_rank

    def allowed_at(self, matcher) -> torch.Tensor:
        """The matcher's mask, computed now (EOS iff it accepts)."""
        bits = np.zeros(((self.vocab_size + 31) // 32) * 4, dtype=np.uint8)  # one bit per token, 32-bit words
        matcher.unsafe_compute_mask_ptr(bits.ctypes.data, bits.size)
        out = np.unpackbits(bits, bitorder="little")[:self.vocab_size].astype(np.bool_)  # numpy: no threads
        return torch.from_numpy(out)  # llguidance allows our EOS ids (its eos_token) exactly when it accepts

    def accepts(self, matcher) -> bool:
        """Does the matcher accept?"""
        return matcher.is_accepting()

    def step(self, matcher, token_id: int):
        """The matcher after consuming ``token_id`` (in place); None if it refuses it (then in error)."""
        return matcher if matcher.consume_token(token_id) else None

    def copy(self, matcher):
        """A deep copy of the matcher."""
        return matcher.deep_copy()
