"""Issue 21 regressions in the constraints' and the command line's part that fit no other test file.

Item 14, a pattern complete before any token (``regex=""``, ``choices=[""]``): the constraint side says
so at once (``RowConstraints.complete()`` before the first token, tested in test_constraints.py); the
decoder must then finish the row ``"constraint"`` with zero tokens and spend no forward pass on it.
"""
from __future__ import annotations

import pytest
import torch

from infergen.constraints import make_constraint


@pytest.fixture(scope="module")
def tok():
    from infergen.models.loading import load_tokenizer, prepare_bundled

    return load_tokenizer(prepare_bundled(progress=False))


def _forward_calls(model):
    calls = []
    handle = model.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls, handle


@pytest.mark.xfail(strict=True, reason="decoders' part of issue 21 item 14: Rows must finish rows that are "
                                       "complete before the first token, and skip the prefill when all are")
@pytest.mark.parametrize("kwargs", [dict(regex=""), dict(choices=[""])])
@pytest.mark.parametrize("strategy", ["greedy", "sample"])
def test_a_pattern_complete_before_any_token_finishes_without_a_forward_pass(tiny_native, tok, kwargs, strategy):
    from infergen.decoding import generate_autoregressive, greedy_search

    constraint = make_constraint(tok, eos_token_id=2, **kwargs)  # the tiny model's EOS id
    input_ids = torch.tensor([[1, 5, 6, 7]])
    calls, handle = _forward_calls(tiny_native)
    try:
        if strategy == "greedy":
            out = greedy_search(tiny_native, input_ids, 5, constraint=constraint, return_dict=True)
        else:
            out = generate_autoregressive(tiny_native, input_ids, 5, temperature=1.0, seed=0,
                                          constraint=constraint, return_dict=True)
    finally:
        handle.remove()
    assert out.finish_reason == ["constraint"], out.finish_reason
    assert out.lengths == [0] and out.sequences.shape[1] == input_ids.shape[1]
    assert not calls, f"{len(calls)} forward pass(es) spent on a row that was complete before any token"
