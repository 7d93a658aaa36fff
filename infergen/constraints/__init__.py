"""Constrained decoding: output that is guaranteed to match a regex, a JSON schema or a grammar.

    from infergen.constraints import make_constraint, as_row_constraints
    c = make_constraint(tokenizer, regex=r"[0-9]{4}-[0-9]{2}-[0-9]{2}")     # compiled once
    rows = as_row_constraints(c, batch_size)                                # one state per row
    logits = rows.mask(logits); ...; rows.advance(tokens, active=~done)     # every decode step

* :mod:`.base` -- the interface (:class:`Constraint`, :class:`ConstraintState`, :class:`RowConstraints`)
  and its semantics: EOS exactly in accepting states, finish reasons ``"constraint"`` and
  ``"no_valid_token"`` (:class:`~infergen.decoding.steps.FinishReason` owns every finish reason), forking for beam search, ragged batches.
* :mod:`.front` -- :func:`make_constraint`, which checks the arguments and picks a backend:
  llguidance (default), the teaching automaton, or any :class:`Compiler` class (outlines-core's is
  ``infergen.interop.outlines.OutlinesCompiler``).
* :mod:`.schema` -- :class:`SchemaOptions`: unique keys, default bounds, ``oneOf`` coercion, refusals.
* :mod:`.budget` -- budget closing: finish inside ``max_new_tokens`` whenever a completion fits.
* :mod:`.teaching` -- regex -> NFA -> DFA -> per-state token masks, from scratch in one file.
* :mod:`.vocabulary` -- the bytes behind each token id (byte-level BPE and SentencePiece).
"""
from .base import Constraint, ConstraintState, RowConstraints, as_row_constraints, is_complete
from .schema import DEFAULT_OPTIONS, UNBOUNDED, SchemaOptions
from .front import BACKENDS, DEFAULT_BACKEND, Compiler, escape_literal, get_compiler, make_constraint
from .vocabulary import TokenVocabulary, byte_level_alphabet

__all__ = ["BACKENDS", "DEFAULT_BACKEND", "DEFAULT_OPTIONS", "UNBOUNDED", "Compiler", "Constraint",
           "ConstraintState", "RowConstraints", "SchemaOptions", "TokenVocabulary", "as_row_constraints",
           "byte_level_alphabet", "escape_literal", "get_compiler", "is_complete", "make_constraint"]
