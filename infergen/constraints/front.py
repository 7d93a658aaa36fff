"""``make_constraint``: one front door from a pattern to a compiled :class:`~.base.Constraint`.

It checks the arguments (exactly one of ``regex``, ``json_schema``, ``grammar``, ``choices``), turns a
pydantic model into its JSON schema and a choice list into a regex, and hands the pattern to a
backend. A pattern the backend rejects comes back as a ``ValueError`` that names the parameter and
quotes the backend's own message.

The per-tokenizer work of a backend (reading 49k token strings, building llguidance's token trie:
about a second) is done once per tokenizer object and kept while that tokenizer lives
(:func:`get_compiler`); compiling a pattern is then milliseconds for llguidance.
"""
from __future__ import annotations

import json
import weakref
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Protocol

from .base import Constraint
from .schema import DEFAULT_OPTIONS, UNBOUNDED, SchemaOptions, bound_schema, explain_refusal
from .vocabulary import TokenVocabulary

__all__ = ["BACKENDS", "DEFAULT_BACKEND", "Compiler", "escape_literal", "get_compiler", "make_constraint"]

DEFAULT_BACKEND = "llguidance"
BACKENDS = ("llguidance", "teaching")  # by name; any other backend is given as its compiler class

# tokenizer -> {(compiler class or "vocabulary", repr(eos_token_id)): compiler or TokenVocabulary}; a pure
# cache (results are the same without it), whose entries go away with their tokenizer (held by a weak
# reference, as every Python object but a few builtins can be)
_compilers: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class Compiler(Protocol):
    """A backend: made once per tokenizer, as ``SomeCompiler(tokenizer, vocab)`` (``vocab`` its
    :class:`~.vocabulary.TokenVocabulary`, which every backend shares), it compiles patterns.

    :func:`make_constraint` takes the core's backends by name (``"llguidance"``, ``"teaching"``)
    and any other as its compiler class (``infergen.interop.outlines.OutlinesCompiler``)."""

    kinds: tuple[str, ...]  # the kinds of pattern it compiles: "regex", "json_schema", "grammar", "choices"

    def compile(self, kind: str, source, pattern) -> Constraint:
        """``source`` as given (a schema as a dict), ``pattern`` the regex (a str) of a regex or choices
        (else None); a ``ValueError`` with the library's own message when the pattern is invalid."""


def escape_literal(text: str) -> str:
    """``text`` as a regex that matches exactly it (the same in Python, Rust and the teaching subset)."""
    return "".join("\\" + c if c in "\\.^$|?*+()[]{}" else c for c in text)  # the metacharacters


def get_compiler(tokenizer, backend=DEFAULT_BACKEND, eos_token_id=None) -> Compiler:
    """The backend's compiler for ``tokenizer`` (built on first use, then reused): ``backend`` is a name
    of :data:`BACKENDS` or a :class:`Compiler` class (any callable ``(tokenizer, vocab)``)."""
    factory, eos = backend, repr(eos_token_id)
    if backend == "teaching":
        from .teaching import TeachingCompiler as factory
    elif backend == "llguidance":
        try:  # a production backend needs its package, an optional dependency (the constraints extra)
            from .llguidance_backend import LLGuidanceCompiler as factory
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("backend='llguidance' needs the llguidance package: "
                              "pip install 'infergen[constraints]' (or pip install llguidance)") from e
    elif isinstance(backend, str) or not callable(backend):
        raise ValueError(f"backend must be one of {BACKENDS} or a compiler class, cls(tokenizer, vocab) "
                         f"(outlines-core: infergen.interop.outlines.OutlinesCompiler), got {backend!r}")
    cache = _compilers.setdefault(tokenizer, {})
    if (factory, eos) not in cache:  # the vocabulary is shared by the backends
        vocab = cache.get(("vocabulary", eos)) or TokenVocabulary.from_tokenizer(tokenizer, eos_token_id)
        cache[("vocabulary", eos)], cache[(factory, eos)] = vocab, factory(tokenizer, vocab)
    return cache[(factory, eos)]


def _schema_dict(json_schema):
    """A JSON-schema dict from a dict, a JSON string or a pydantic model class."""
    if isinstance(json_schema, type) and hasattr(json_schema, "model_json_schema"):
        return json_schema.model_json_schema()
    if isinstance(json_schema, str):
        try:
            json_schema = json.loads(json_schema)
        except json.JSONDecodeError as e:
            raise ValueError(f"json_schema is a string but not valid JSON: {e}") from None
    if not isinstance(json_schema, dict):
        raise TypeError("json_schema must be a dict, a JSON string or a pydantic model class, got "
                        f"{type(json_schema).__name__}")
    try:
        json.dumps(json_schema)
    except (TypeError, ValueError) as e:
        raise ValueError(f"json_schema must be JSON-serialisable: {e}") from None
    return json_schema


def make_constraint(tokenizer, *, regex: str | None = None, json_schema=None, grammar: str | None = None,
                    choices=None, backend: str | Callable[..., Compiler] = DEFAULT_BACKEND, eos_token_id=None,
                    json_options: SchemaOptions = DEFAULT_OPTIONS) -> Constraint:
    """Compile one pattern for ``tokenizer`` into a :class:`~infergen.constraints.base.Constraint`.

    Give exactly one of:

    * ``regex``: the whole output must match it (Python's ``re.fullmatch``; llguidance and outlines use
      Rust regex syntax, where ``\\d`` also matches non-ASCII digits -- write ``[0-9]`` for ASCII);
    * ``json_schema``: a dict, a JSON string or a pydantic model class; the output is JSON valid under
      it (llguidance writes it in ``json.dumps``'s layout, ``{"a": 1, "b": 2}``);
    * ``grammar``: a Lark-style context-free grammar (llguidance only), e.g.
      ``start: expr\\nexpr: NUMBER | expr "+" expr\\n%import common.NUMBER``;
    * ``choices``: a list of strings; the output is exactly one of them.

    ``backend``: ``"llguidance"`` (default; all four kinds), ``"teaching"`` (regex and choices, the
    from-scratch automaton of :mod:`infergen.constraints.teaching`), or a :class:`Compiler` class
    for any other library, e.g. ``infergen.interop.outlines.OutlinesCompiler`` (outlines-core: regex,
    json_schema, choices). ``eos_token_id`` (int or list) defaults to the tokenizer's.
    ``json_options`` (:class:`~infergen.constraints.schema.SchemaOptions`): how a JSON schema is bounded
    before compiling -- unique keys and default bounds on open-ended values (``UNBOUNDED``: none), and
    the opt-in ``oneOf`` coercion; a schema the bounds make uncompilable is compiled as given.
    """
    given = {k: v for k, v in (("regex", regex), ("json_schema", json_schema), ("grammar", grammar),
                               ("choices", choices)) if v is not None}
    if len(given) != 1:  # (a JSON schema already fixes the text: a regex cannot be added to it)
        raise ValueError("make_constraint needs exactly one of regex=, json_schema=, grammar= or choices=, "
                         f"got {' and '.join(given) or 'none'}")
    (kind, source), = given.items()
    pattern = source if kind == "regex" else None  # the regex a regex backend compiles (choices: built below)
    if kind in ("regex", "grammar") and not isinstance(source, str):
        raise TypeError(f"{kind} must be a str, got {type(source).__name__}")
    if kind == "json_schema":
        source = _schema_dict(source)
    elif kind == "choices":
        if isinstance(source, (str, bytes, dict)) or not isinstance(source, Iterable):
            raise TypeError("choices must be a list of strings (the texts the output may be), got "
                            f"{source!r} ({type(source).__name__})")
        source = list(source)
        if bad := [c for c in source if not isinstance(c, str)]:
            raise TypeError("choices must be a list of strings (the texts the output may be), got "
                            f"{source!r}: {bad[0]!r} is a {type(bad[0]).__name__}")
        if not source:
            raise ValueError("choices must hold at least one string, got []")
        pattern = "|".join(f"(?:{escape_literal(c)})" for c in source)
    if not isinstance(json_options, SchemaOptions):
        raise TypeError(f"json_options must be a SchemaOptions, got {type(json_options).__name__}")
    compiler = get_compiler(tokenizer, backend, eos_token_id)  # it checks ``backend``
    name = backend if isinstance(backend, str) else getattr(backend, "__name__", repr(backend))
    if kind not in compiler.kinds:
        raise ValueError(f"{kind}: backend {name!r} supports {', '.join(compiler.kinds)}; use "
                         f"backend='llguidance' for {kind}")
    # a schema is compiled bounded first; as given (but for oneOf coercion) when that fails
    as_given = replace(UNBOUNDED, coerce_one_of=json_options.coerce_one_of)
    tries = [bound_schema(source, o) for o in (json_options, as_given)] if kind == "json_schema" else [source]
    for attempt in tries:
        try:
            return compiler.compile(kind, attempt, pattern)
        except ValueError as e:
            error = e
    shown = json.dumps(source) if kind == "json_schema" else repr(source)
    shown = shown[:200] + "..." if len(shown) > 200 else shown
    where = explain_refusal(source, str(error))  # None but for a schema's keyword
    raise ValueError(f"invalid {kind} {f'-- {where} ' if where else ''}{shown} ({name}: {error})") from None
