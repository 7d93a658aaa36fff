"""JSON schemas as infergen compiles them: no runaway loops, oneOf on request, refusals that point.

A small model writing JSON under a real-world schema loops wherever the schema leaves it free: digits
that never stop, arrays inside arrays, the same extra key again and again. :func:`bound_schema`
rewrites the schema (a copy) before a backend compiles it, so that every output of the rewrite is also
valid under the original schema, only less open-ended (:class:`SchemaOptions`, each bound switchable):

* ``unique_keys``: object keys are unique (RFC 8259: names SHOULD be unique). Declared properties
  already appear at most once (llguidance writes them in the schema's order); an object whose schema
  leaves ``additionalProperties`` unspecified or ``true`` gets no extra keys, where llguidance would
  let an extra key repeat. (Schemas that use ``allOf`` are left open: closing one part of an
  intersection could forbid another part's keys. An explicit ``additionalProperties`` subschema keeps
  its extra keys, which may then repeat: a grammar cannot make an open set of keys unique.)
* ``max_string_length``, ``max_items``: ``maxLength`` / ``maxItems`` where the schema sets none;
* ``max_integer``: ``|x| <= max_integer`` for integers and numbers without a ``minimum`` / ``maximum``
  (default ``2**53 - 1``, the range RFC 8259 calls interoperable); ``max_decimals``: numbers get a
  ``multipleOf`` of ``10**-max_decimals`` unless they have one;
* a value the schema leaves entirely open (``{}``, ``true``, an array without ``items``) becomes a
  scalar or an array of scalars, under the bounds above: no nesting without end. A schema without
  ``"type"`` (``{"properties": ...}``, ``{"title": ...}``) admits every type: it gets the bounds of
  every type (each applies to values of its own type only).

A schema's own bounds always win; ``enum`` and ``const`` are left alone. :data:`UNBOUNDED` switches
every rewrite off (the schema exactly as given). ``coerce_one_of`` (off by default) lets llguidance
compile ``oneOf`` as ``anyOf``. Its cost: an output matching two branches is *invalid* under ``oneOf``
("exactly one"), and nothing stops the decoder from writing one -- check outputs with a validator.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .._validation import check_number

__all__ = ["DEFAULT_OPTIONS", "UNBOUNDED", "SchemaOptions", "bound_schema", "explain_refusal"]

_SCALARS = ["null", "boolean", "integer", "number", "string"]
# keywords whose value is one subschema (not "not" and "if": narrowing those would widen the schema),
# and those whose value is a list or a name -> subschema map
_ONE = ("items", "additionalProperties", "then", "else", "contains", "propertyNames",
        "additionalItems", "unevaluatedItems", "unevaluatedProperties")
# a schema without "type" admits every type, and each bound applies to its own type only, so all of them
# are added; unless the schema combines others (its parts are bounded, and "not"/"if" must stay as given)
_COMBINED = {"$ref", "anyOf", "oneOf", "allOf", "not", "if"}
_MANY = ("anyOf", "oneOf", "allOf", "prefixItems", "properties", "patternProperties", "$defs", "definitions",
         "dependentSchemas")


@dataclass(frozen=True)
class SchemaOptions:
    """How :func:`bound_schema` rewrites a JSON schema (see the module docstring); ``None`` switches a
    bound off, ``unique_keys=False`` keeps objects as open as the schema leaves them."""

    unique_keys: bool = True
    max_string_length: int | None = 256
    max_items: int | None = 32
    max_integer: int | None = 2**53 - 1
    max_decimals: int | None = 6
    coerce_one_of: bool = False

    def __post_init__(self):
        for name in ("max_string_length", "max_items", "max_integer", "max_decimals"):  # None: no bound
            check_number(f"SchemaOptions.{name}", getattr(self, name), low=0, integer=True, allow_none=True)


#: the defaults: unique keys and every bound on, oneOf refused
DEFAULT_OPTIONS = SchemaOptions()
#: the schema exactly as given (llguidance's own semantics)
UNBOUNDED = SchemaOptions(unique_keys=False, max_string_length=None, max_items=None, max_integer=None,
                          max_decimals=None)


def _open_value(opts: SchemaOptions) -> dict:
    scalar = _bound({"type": _SCALARS}, opts, False)
    return {"anyOf": [scalar, _bound({"type": "array", "items": scalar}, opts, False)]}


def _bound(s, opts: SchemaOptions, close: bool):
    """One subschema, rewritten (its subschemas first)."""
    if s is True or s == {}:
        return _open_value(opts)
    if not isinstance(s, dict):
        return s
    s = dict(s)
    for k in _ONE:
        if k in s and not (k == "additionalProperties" and (s[k] is True or s[k] == {})):
            s[k] = _bound(s[k], opts, close)
    for k in _MANY:
        if isinstance(s.get(k), list):
            s[k] = [_bound(x, opts, close) for x in s[k]]
        elif isinstance(s.get(k), dict):
            s[k] = {n: _bound(x, opts, close) for n, x in s[k].items()}
    if "enum" in s or "const" in s:
        return s
    types = s.get("type", [*_SCALARS, "array", "object"] if not _COMBINED & s.keys() else [])  # none: any
    types = {types} if isinstance(types, str) else set(types)
    if "object" in types and close and s.get("additionalProperties", True) in (True, {}):
        s["additionalProperties"] = False
    if "string" in types and opts.max_string_length is not None and "format" not in s:
        s.setdefault("maxLength", max(opts.max_string_length, s.get("minLength", 0)))
    if "array" in types and opts.max_items is not None:
        s.setdefault("maxItems", max(opts.max_items, s.get("minItems", 0), len(s.get("prefixItems", []))))
        if "items" not in s and "prefixItems" not in s:
            s["items"] = _open_value(opts)
    if types & {"integer", "number"} and opts.max_integer is not None:
        lo, hi = s.get("minimum", s.get("exclusiveMinimum")), s.get("maximum", s.get("exclusiveMaximum"))
        if lo is None:
            s["minimum"] = min(-opts.max_integer, hi if isinstance(hi, (int, float)) else 0)
        if hi is None:
            s["maximum"] = max(opts.max_integer, lo if isinstance(lo, (int, float)) else 0)
    if "number" in types and opts.max_decimals is not None and "multipleOf" not in s:
        s["multipleOf"] = 10.0 ** -opts.max_decimals
    return s


def bound_schema(schema, opts: SchemaOptions = DEFAULT_OPTIONS) -> dict:
    """A rewritten copy of ``schema`` under ``opts`` (the input is not changed); every output valid
    under the copy is valid under ``schema``. ``coerce_one_of`` goes in as llguidance's ``x-guidance``."""
    close = opts.unique_keys and '"allOf"' not in json.dumps(schema)  # see unique_keys, above
    out = schema if opts == UNBOUNDED else _bound(schema, opts, close)
    if opts.coerce_one_of:
        out = {**out, "x-guidance": {**schema.get("x-guidance", {}), "coerce_one_of": True}}
    return out


def _find(s, key: str, value, at: str) -> str | None:
    """The JSON pointer of the first place in ``s`` with ``key`` (and ``value``, unless None)."""
    if isinstance(s, dict) and key in s and (value is None or s[key] == value):
        return at or "/"
    items = s.items() if isinstance(s, dict) else enumerate(s) if isinstance(s, list) else ()
    return next((where for k, v in items if (where := _find(v, key, value, f"{at}/{k}")) is not None), None)


def explain_refusal(schema, message: str) -> str | None:
    """From a backend's refusal message, ``"unsupported keyword 'K' at /json/pointer"`` (with a hint for
    ``oneOf``), or None when the message names no keyword of ``schema``."""
    found = re.search(r"Unimplemented keys: \[(.*?)\]", message)
    keys, value = (re.findall(r'"([^"]+)"', found.group(1)) if found else []), None
    if "oneOf" in message:
        keys = ["oneOf"]
    if fmt := re.search(r"Unknown format: (\S+)", message):
        keys, value = ["format"], fmt.group(1)
    if "min/maxProperties" in message:  # llguidance: only where every listed property is required
        keys = ["minProperties", "maxProperties"]
    if bad := re.search(r"regex parse error:\s*\n\s*(.+)\n", message):
        keys, value = ["pattern"], bad.group(1).strip()
    for key in keys:
        if (where := _find(schema, key, value, "")) is not None:
            hint = " (SchemaOptions(coerce_one_of=True) compiles it as anyOf)" if key == "oneOf" else ""
            return f"unsupported keyword {key!r}{'' if value is None else f' {value!r}'} at {where}{hint}"
    return None
