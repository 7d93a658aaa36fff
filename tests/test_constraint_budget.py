"""Budget closing (infergen.constraints.budget): a constrained output finishes complete inside
``max_new_tokens`` whenever a completion fits, for greedy, sampling and beam search, per row; a budget
too small for any completion ends the row at once with ``"budget"``. The decoders close within their
``max_new_tokens`` by default; a :class:`RowConstraints` built with ``budget=None`` switches it off.

Runs the bundled model with a few new tokens (marked slow)."""
from __future__ import annotations

import json

import pytest
import torch

import infergen
from infergen.constraints import UNBOUNDED, as_row_constraints, make_constraint
from infergen.constraints.budget import closing_path

pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")
pytestmark = pytest.mark.slow

# open-ended on purpose (no bounds): the small model runs on inside "note" or "ids"
SCHEMA = {"type": "object", "properties": {"id": {"type": "integer"}, "note": {"type": "string"},
                                           "ids": {"type": "array", "items": {"type": "integer"}}},
          "required": ["id", "note", "ids"]}
STRATEGIES = {"greedy": {}, "sample": {"seed": 0, "temperature": 1.0},
              "beam": {"num_beams": 3}}


@pytest.fixture(scope="module")
def mt(smollm):
    return smollm


@pytest.fixture(scope="module")
def constraint(mt):
    return make_constraint(mt[1], json_schema=SCHEMA, json_options=UNBOUNDED)


def shortest(constraint):
    return len(closing_path(constraint.start(), 10_000, constraint.closing_rank))


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("extra", [0, 12])
def test_a_budget_that_fits_gives_a_complete_valid_object(mt, constraint, strategy, extra):
    model, tok = mt
    n = shortest(constraint) + extra  # extra=0: just enough for the shortest completion
    rows = as_row_constraints(constraint, 1, budget=n)
    r = infergen.generate(model, tok, "Write a long note as JSON:", strategy=strategy, max_new_tokens=n,
                          constraint=rows, **STRATEGIES[strategy])
    jsonschema.validate(json.loads(r.text), SCHEMA)
    assert r.finish_reason in ("constraint", "closed") and len(r.token_ids) <= n


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_the_decoders_close_within_max_new_tokens_by_default(mt, constraint, strategy):
    """No budget given: the decoder's own max_new_tokens is the budget, and the finish reason says that
    closing had to steer the output (the model alone would write a longer note)."""
    model, tok = mt
    n = shortest(constraint)
    r = infergen.generate(model, tok, "Write a long note as JSON:", strategy=strategy, max_new_tokens=n,
                          constraint=constraint, **STRATEGIES[strategy])
    jsonschema.validate(json.loads(r.text), SCHEMA)
    assert len(r.token_ids) <= n
    assert r.finish_reason == ("closed" if strategy == "greedy" else "constraint")


def test_an_eos_that_closing_forces_is_reported_as_closed(mt):
    """A number may always take one more digit: the model would go on, and closing ends it with EOS. The
    finish reason says closing did it ("closed"), not the model ("eos")."""
    model, tok = mt
    r = infergen.generate(model, tok, "Reply with a JSON object only.\n", max_new_tokens=16, regex=r"-?[0-9]+(\.[0-9]+)?")
    assert r.finish_reason == "closed" and len(r.token_ids) <= 16, (r.finish_reason, r.text)


def test_without_a_budget_the_same_run_is_cut(mt, constraint):
    """The control: the same prompt and limit with closing switched off (a RowConstraints without a
    budget) ends inside the object."""
    model, tok = mt
    n = shortest(constraint) + 12
    r = infergen.generate(model, tok, "Write a long note as JSON:", max_new_tokens=n,
                          constraint=as_row_constraints(constraint, 1))
    assert r.finish_reason == "length"
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.text)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_a_budget_too_small_ends_the_row_with_a_clear_reason(mt, constraint, strategy):
    model, tok = mt
    n = shortest(constraint) - 1
    rows = as_row_constraints(constraint, 1, budget=n)
    r = infergen.generate(model, tok, "Write JSON:", strategy=strategy, max_new_tokens=n, constraint=rows,
                          **STRATEGIES[strategy])
    assert r.finish_reason == "budget" and r.token_ids == []


def test_closing_is_per_row_and_reported(mt, constraint):
    """Two rows, two budgets: each closes inside its own; ``closed()`` says where closing overrode the
    model's choice, and an unconstrained row is untouched."""
    model, tok = mt
    n = shortest(constraint)
    rows = as_row_constraints([constraint, constraint], 2, budget=[n + 4, n + 20])
    out = infergen.generate(model, tok, ["Write a long note as JSON:", "JSON please:"], max_new_tokens=n + 20,
                            constraint=rows)
    for r, limit in zip(out, (n + 4, n + 20)):
        jsonschema.validate(json.loads(r.text), SCHEMA)
        assert len(r.token_ids) <= limit
    with pytest.raises(ValueError, match="budget must be"):
        as_row_constraints(constraint, 2, budget=[3])


def argmax_loop(constraint, tok, budget, limit):
    """A greedy loop without a model: the logits always favour the token ``a`` (so a string never
    ends by itself). Returns the text, whether the row completed, and ``closed()``."""
    favour = torch.zeros(constraint.vocab_size)
    favour[tok.convert_tokens_to_ids("a")] = 10.0
    rows = as_row_constraints(constraint, 1, budget=budget)
    out = []
    for _ in range(limit):
        t = rows.mask(favour[None]).argmax(-1)
        if rows.dead()[0]:
            break
        out.append(int(t))
        rows.advance(t)
        if rows.complete()[0]:
            break
    return tok.decode(out), bool(rows.complete()[0]), bool(rows.closed()[0])


def test_closing_overrides_a_runaway_choice_and_says_so(mt, constraint):
    tok = mt[1]
    n = shortest(constraint) + 6
    text, complete, closed = argmax_loop(constraint, tok, None, n)
    assert not complete and not closed and text.endswith("aaaa")  # runs on inside "note"
    text, complete, closed = argmax_loop(constraint, tok, n, n)
    assert complete and closed
    jsonschema.validate(json.loads(text), SCHEMA)
