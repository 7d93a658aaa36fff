"""Registries: how ``infergen.generate(..., strategy="name")`` finds a decoder.

A decoder is any function ``decoder(model, input_ids, max_new_tokens, **params)`` that returns a
:class:`~infergen.decoding.base.GenerationOutput` when called with ``return_dict=True`` (see
``infergen.decoding.base`` for the full protocol). Registering one makes it reachable by name::

    @infergen.register_decoder("my_search")
    def my_search(model, input_ids, max_new_tokens, *, attention_mask=None, eos_token_id=None,
                  return_dict=False, **params):
        ...

    infergen.generate(model, tokenizer, "Once upon a time", strategy="my_search")

Processors register the same way (``register_processor``) and can then join a
:class:`~infergen.LogitsPipeline` by name.
"""
from __future__ import annotations

from typing import Callable

from ._validation import check_callable

DECODERS: dict[str, Callable] = {}
PROCESSORS: dict[str, Callable] = {}


def _register(table: dict, kind: str, name: str, fn: Callable | None, overwrite: bool):
    if not isinstance(name, str) or not name:
        raise ValueError(f"{kind} name must be a non-empty string, got {name!r}")

    def add(f: Callable) -> Callable:
        check_callable(f"{kind} {name!r}", f)
        if name in table and table[name] is not f and not overwrite:
            raise ValueError(f"{kind} {name!r} is already registered; pass overwrite=True to replace it")
        table[name] = f
        return f

    return add if fn is None else add(fn)


def register_decoder(name: str, fn: Callable | None = None, *, overwrite: bool = False):
    """Register ``fn`` as decoding strategy ``name`` (usable as a decorator)."""
    return _register(DECODERS, "decoder", name, fn, overwrite)


def register_processor(name: str, fn: Callable | None = None, *, overwrite: bool = False):
    """Register a logits processor ``fn(logits, context) -> logits`` under ``name``."""
    return _register(PROCESSORS, "processor", name, fn, overwrite)


def _get(table: dict, kind: str, name: str) -> Callable:
    if name not in table:
        raise ValueError(f"{kind} must be one of: {', '.join(sorted(table)) or '(none registered)'}; got {name!r}")
    return table[name]


def get_decoder(name: str) -> Callable:
    """The decoder registered as ``name``; a clear error lists the valid names otherwise."""
    return _get(DECODERS, "strategy", name)


def get_processor(name: str) -> Callable:
    """The processor registered as ``name``; a clear error lists the registered names otherwise."""
    return _get(PROCESSORS, "processor", name)
