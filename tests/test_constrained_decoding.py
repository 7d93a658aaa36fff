"""Constrained decoding end to end on the bundled model: every strategy that takes a constraint, beam
forking, ragged batches with one constraint per row, EOS only in accepting states, finish reasons, the
order with the processors, streaming, and the refusals.

Kept short: few new tokens, short prompts; the model is loaded once per session (``smollm``).
"""
from __future__ import annotations

import json
import re

import pytest
import torch

import infergen
from infergen.constraints import RowConstraints, make_constraint

pytest.importorskip("llguidance")
pytestmark = pytest.mark.slow

DATE = r"[0-9]{2}-[0-9]{2}"
SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
          "additionalProperties": False}
STRATEGIES = {"greedy": {}, "sample": {"seed": 0, "temperature": 0.8},
              "beam": {"num_beams": 3}, "diverse_beam": {"num_beams": 4, "num_beam_groups": 2}}


@pytest.fixture(scope="module")
def mt(smollm):
    return smollm


@pytest.fixture(scope="module")
def eos(mt):
    return list(mt[0].defaults.eos_token_ids)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_every_strategy_fullmatches_the_regex(mt, strategy):
    model, tok = mt
    r = infergen.generate(model, tok, "The date:", strategy=strategy, max_new_tokens=8, regex=DATE,
                          **STRATEGIES[strategy])
    assert re.fullmatch(DATE, r.text), r.text
    assert r.finish_reason == "constraint"
    assert len(r.token_ids) == len(r.logprobs) <= 8


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_json_schema_output_parses_and_validates(mt, strategy):
    jsonschema = pytest.importorskip("jsonschema")
    pydantic = pytest.importorskip("pydantic")

    class Answer(pydantic.BaseModel):  # extra="forbid": additionalProperties false, as in SCHEMA
        model_config = pydantic.ConfigDict(extra="forbid")
        ok: bool

    model, tok = mt
    for schema in (SCHEMA, Answer):
        r = infergen.generate(model, tok, "Reply in JSON:", strategy=strategy, max_new_tokens=12,
                              json_schema=schema, **STRATEGIES[strategy])
        jsonschema.validate(json.loads(r.text), SCHEMA)
        assert r.finish_reason == "constraint"


def test_beam_forks_states_per_beam(mt):
    """Three beams over three choices: each hypothesis is a whole choice, and they differ. With states
    shared between beams (not forked), one beam's tokens would advance the others' states."""
    model, tok = mt
    choices = ["yes please", "no thanks", "maybe later"]
    out = infergen.generate(model, tok, "Do you want tea?", strategy="beam", num_beams=3,
                            num_return_sequences=3, max_new_tokens=6, choices=choices)
    texts = [r.text for r in out]
    assert sorted(texts) == sorted(choices)
    assert all(r.finish_reason == "constraint" for r in out)
    scores = [r.score for r in out]
    assert scores == sorted(scores, reverse=True)


def test_ragged_batch_with_one_constraint_per_row(mt):
    model, tok = mt
    prompts = ["A number:", "Is the sky blue? Answer:", "Hello"]
    regexes = ["[0-9]{3}", " ?(yes|no)", None]
    out = infergen.generate(model, tok, prompts, max_new_tokens=4, regex=regexes)
    assert re.fullmatch(regexes[0], out[0].text) and out[0].finish_reason == "constraint"
    assert re.fullmatch(regexes[1], out[1].text) and out[1].finish_reason == "constraint"
    free = infergen.generate(model, tok, prompts[2], max_new_tokens=4)  # the unconstrained row is untouched
    assert out[2].token_ids == free.token_ids
    for strategy in ("beam", "sample"):
        out = infergen.generate(model, tok, prompts[:2], strategy=strategy, max_new_tokens=4, regex=regexes[:2],
                                **STRATEGIES[strategy])
        assert [bool(re.fullmatch(rx, r.text)) for rx, r in zip(regexes, out)] == [True, True]


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_eos_only_in_accepting_states(mt, eos, strategy):
    """A huge bias on EOS: the model wants to stop at once, the constraint lets it only once the text
    matches. ``[a-z]{2,4}`` accepts after two letters (EOS then wins: "eos"); ``[a-z]{3}`` is complete
    after three letters (finished without EOS: "constraint")."""
    model, tok = mt
    bias = {e: 100.0 for e in eos}
    kw = dict(strategy=strategy, max_new_tokens=6, logit_bias=bias, **STRATEGIES[strategy])
    r = infergen.generate(model, tok, "Letters:", regex="[a-z]{2,4}", **kw)
    assert r.finish_reason == "eos" and r.token_ids[-1] in eos
    assert re.fullmatch("[a-z]{2,4}", r.text) and len(r.token_ids) >= 2
    r = infergen.generate(model, tok, "Letters:", regex="[a-z]{3}", **kw)
    assert r.finish_reason == "constraint" and not set(r.token_ids) & set(eos)
    assert re.fullmatch("[a-z]{3}", r.text)


class _DeadState:
    """A constraint state that allows nothing (a pattern no token can continue)."""

    def __init__(self, constraint):
        self.constraint = constraint

    def allowed(self):
        return torch.zeros(self.constraint.vocab_size, dtype=torch.bool)

    def accepting(self):
        return False

    def advance(self, token_id):
        pass

    def fork(self):
        return _DeadState(self.constraint)


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_no_valid_token_finishes_the_row_without_nan(mt, strategy):
    model, tok = mt
    live = make_constraint(tok, regex="[0-9]{2}", eos_token_id=list(model.defaults.eos_token_ids))
    rows = RowConstraints([_DeadState(live), live.start()])
    ids = tok(["Number:", "Number:"], return_tensors="pt")
    decoder = infergen.get_decoder(strategy)
    out = decoder(model, ids.input_ids, 4, constraint=rows, return_dict=True, **STRATEGIES[strategy])
    step = 1 if strategy == "beam" else 1  # beam returns one hypothesis per row by default
    assert out.finish_reason[::step] == ["no_valid_token", "constraint"]
    assert out.lengths[0] == 0 and torch.isfinite(out.logprobs).all()
    assert re.fullmatch("[0-9]{2}", tok.decode(out.new_tokens[1, :out.lengths[1]]))


def test_mask_comes_before_the_processors(mt):
    """top_k=1 after the mask is the best *allowed* token (= constrained greedy); were top-k applied
    first, the model's favourite (a forbidden token) would be the only candidate left."""
    model, tok = mt
    greedy = infergen.generate(model, tok, "My favourite number is", max_new_tokens=3, regex="[0-9]{3}")
    sampled = infergen.generate(model, tok, "My favourite number is", strategy="sample", max_new_tokens=3,
                                top_k=1, seed=0, regex="[0-9]{3}")
    free = infergen.generate(model, tok, "My favourite number is", max_new_tokens=1)
    assert not re.fullmatch("[0-9]", free.text.strip()[:1] or "x")  # the model's own first choice is not a digit
    assert sampled.token_ids == greedy.token_ids and re.fullmatch("[0-9]{3}", sampled.text)


def test_decoders_take_the_same_constraint_object(mt):
    model, tok = mt
    c = make_constraint(tok, regex=DATE, eos_token_id=list(model.defaults.eos_token_ids))
    ids = tok(["The date:"], return_tensors="pt").input_ids
    via_text = infergen.generate(model, tok, "The date:", max_new_tokens=8, constraint=c)
    direct = infergen.greedy_search(model, ids, 8, constraint=c, return_dict=True)
    assert direct.new_tokens[0, :direct.lengths[0]].tolist() == via_text.token_ids
    assert re.fullmatch(DATE, via_text.text)


def test_stream_with_a_constraint(mt):
    model, tok = mt
    pieces = list(infergen.stream(model, tok, "The date:", strategy="greedy", max_new_tokens=8, regex=DATE))
    assert len(pieces) >= 2 and re.fullmatch(DATE, "".join(pieces))


@pytest.mark.parametrize("kw, name", [({"regex": "[0-9"}, "regex"),
                                      ({"json_schema": {"type": "nonsense"}}, "json_schema"),
                                      ({"grammar": "start: ???"}, "grammar")])
def test_invalid_pattern_names_the_parameter(mt, kw, name):
    model, tok = mt
    with pytest.raises(ValueError, match=rf"invalid {name} .*llguidance: .+"):
        infergen.generate(model, tok, "x", max_new_tokens=2, **kw)


def test_refusals(mt):
    model, tok = mt
    with pytest.raises(ValueError, match="regex and json_schema"):
        infergen.generate(model, tok, "x", max_new_tokens=2, regex="a", json_schema=SCHEMA)
    for strategy, why in (("contrastive", "degeneration"), ("mcts", "tree node"), ("speculative", "draft")):
        with pytest.raises(ValueError, match=rf"strategy='{strategy}' does not support regex=: .*{why}"):
            infergen.generate(model, tok, "x", strategy=strategy, max_new_tokens=2, regex="a")
    with pytest.raises(ValueError, match="regex holds 3 entries for 2 prompts"):
        infergen.generate(model, tok, ["x", "y"], max_new_tokens=2, regex=["a", "b", "c"])
    c = make_constraint(tok, regex="a")
    with pytest.raises(ValueError, match="either constraint="):
        infergen.generate(model, tok, "x", max_new_tokens=2, regex="a", constraint=c)
