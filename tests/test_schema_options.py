"""JSON schemas as infergen compiles them (infergen.constraints.schema): unique keys by default, default
bounds on open-ended values that the schema's own bounds override and that can be switched off, the
opt-in oneOf coercion, and refusals that lead with the keyword and where it is. Tokenizer only."""
from __future__ import annotations

import pytest

from infergen.constraints import UNBOUNDED, SchemaOptions, make_constraint
from infergen.constraints.schema import bound_schema

pytest.importorskip("llguidance")


@pytest.fixture(scope="module")
def tok():
    from infergen.interop.gguf import prepare_bundled
    from infergen.models.loading import load_tokenizer

    return load_tokenizer(prepare_bundled(progress=False))


def accepts(tok, schema, text, **options):
    """Does the constraint compiled from ``schema`` take ``text`` to the end, token by token?"""
    state = make_constraint(tok, json_schema=schema, json_options=SchemaOptions(**options)).start()
    for t in tok.encode(text, add_special_tokens=False):
        if not state.allowed()[t]:
            return False
        state.advance(t)
    return state.accepting()


OPEN = {"type": "object", "properties": {"a": {"type": "integer"}}}


def test_keys_are_unique_by_default_with_a_switch(tok):
    assert accepts(tok, OPEN, '{"a": 1}')
    assert not accepts(tok, OPEN, '{"b": 3, "b": 4}')
    assert accepts(tok, OPEN, '{"b": 3, "b": 4}', unique_keys=False)  # llguidance's own: a key repeats
    assert not accepts(tok, OPEN, '{"a": 1, "a": 2}', unique_keys=False)  # declared keys: once anyway


@pytest.mark.parametrize("schema, runaway, own", [
    ({"type": "integer"}, "12345678901234567", {"maximum": 10**18}),
    ({"type": "number"}, "0.12345678", {"multipleOf": 1e-9}),
    ({"type": "string"}, '"' + "x" * 300 + '"', {"maxLength": 400}),
    ({"type": "array", "items": {"type": "integer"}}, "[" + ", ".join(["1"] * 40) + "]", {"maxItems": 50}),
    ({"type": "array"}, "[[[1]]]", {"items": {"type": "array", "items": {"type": "array"}}}),
])
def test_default_bounds_stop_runaway_values(tok, schema, runaway, own):
    assert not accepts(tok, schema, runaway)
    assert accepts(tok, {**schema, **own}, runaway)  # the schema's own bound wins
    assert accepts(tok, schema, runaway, **{k: v for k, v in vars(UNBOUNDED).items()})


@pytest.mark.parametrize("schema", [{"description": "any value"}, {"properties": {"a": {"type": "number"}}}])
def test_a_schema_without_type_gets_the_bounds_of_every_type(tok, schema):
    runaway = "-10." + "0" * 60 + "1"  # JSONSchemaBench: a number whose digits never stop, under no "type"
    assert not accepts(tok, schema, runaway)
    assert accepts(tok, schema, runaway, **vars(UNBOUNDED))
    assert accepts(tok, schema, "-10.5") and accepts(tok, schema, '"text"') and accepts(tok, schema, "[1, 2]")


def test_bounds_are_options_and_the_input_is_not_changed():
    schema = {"type": "string"}
    assert bound_schema(schema, SchemaOptions(max_string_length=5)) == {"type": "string", "maxLength": 5}
    assert bound_schema(schema, UNBOUNDED) is schema and schema == {"type": "string"}
    assert bound_schema({"type": "string", "minLength": 300})["maxLength"] == 300  # never unsatisfiable
    with pytest.raises(ValueError, match=r"SchemaOptions.max_items must be in \[0, inf\), got -1"):
        SchemaOptions(max_items=-1)
    with pytest.raises(TypeError, match=r"SchemaOptions.max_decimals must be an integer, got 1.5"):
        SchemaOptions(max_decimals=1.5)


ONE_OF = {"type": "object", "properties": {"x": {"oneOf": [{"type": "integer"}, {"type": "number"}]}}}


def test_one_of_is_opt_in_and_the_refusal_points_at_it(tok):
    with pytest.raises(ValueError, match=r"^invalid json_schema -- unsupported keyword 'oneOf' at /properties/x "
                                         r".*coerce_one_of"):
        make_constraint(tok, json_schema=ONE_OF)
    assert accepts(tok, ONE_OF, '{"x": 1.5}', coerce_one_of=True)


@pytest.mark.parametrize("schema, lead", [
    ({"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}},
     "unsupported keyword 'uniqueItems' at /properties/tags"),
    ({"$defs": {"d": {"type": "string", "format": "color"}}, "$ref": "#/$defs/d"},
     "unsupported keyword 'format' 'color' at /$defs/d"),
])
def test_refusal_leads_with_the_keyword_and_where(tok, schema, lead):
    with pytest.raises(ValueError) as e:
        make_constraint(tok, json_schema=schema)
    assert str(e.value).startswith(f"invalid json_schema -- {lead}"), str(e.value)


@pytest.mark.parametrize("schema, lead", [  # refused as given (the defaults close the object, which compiles)
    ({"type": "object", "properties": {"a": {"type": "string"}}, "minProperties": 1},
     "unsupported keyword 'minProperties' at /"),
    ({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string", "pattern": "(?=x)"}}},
     "unsupported keyword 'pattern' '(?=x)' at /properties/b"),
])
def test_refusal_of_a_schema_as_given_leads_with_the_keyword(tok, schema, lead):
    with pytest.raises(ValueError) as e:
        make_constraint(tok, json_schema=schema, json_options=UNBOUNDED)
    assert str(e.value).startswith(f"invalid json_schema -- {lead}"), str(e.value)
