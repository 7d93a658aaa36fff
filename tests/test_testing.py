"""Tests for infergen.testing (the conformance checks, a companion the course imports; the old name
infergen.course.checks re-exports them) and for the examples of book/extending.md.

A conformance check is only worth something if it passes on correct code and fails on the bug it is
named after: every check below is run on the library's own processors/decoders (must pass) and on a
deliberately broken variant (must fail, and name the right rule).
"""
import math
import re
from pathlib import Path

import pytest
import torch

import infergen as ig
from infergen.testing import (CheckFailed, CountingModel, ScheduledEOS, check_decoder, check_names,
                             check_processor, check_value_fn, decoder_check_names, left_pad,
                             processor_check_names, run_checks, tiny_model, value_check_names)

ROOT = Path(__file__).resolve().parents[1]
NEG_INF = float("-inf")


def statuses(results):
    return {r.name: r.status for r in results}


def failing(results):
    return {r.name for r in results if r.status in ("fail", "error")}


# --------------------------------------------------------------------------------------------------------
# Processors
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn,params,history", [
    (ig.apply_top_k, dict(top_k=5), False),
    (ig.apply_top_p, dict(top_p=0.9), False),
    (ig.apply_min_p, dict(min_p=0.1), False),
    (ig.apply_temperature, dict(temperature=0.7), False),
    (ig.apply_repetition_penalty, dict(penalty=1.3), True),
    (ig.apply_frequency_penalty, dict(frequency_penalty=0.5, presence_penalty=0.2), True),
])
def test_library_processors_pass(fn, params, history):
    results = check_processor(fn, history=history, **params)
    assert [r.name for r in results] == processor_check_names()
    assert all(r.passed for r in results)


def _mutating(logits, **_):
    logits[..., 0] = NEG_INF
    return logits.clone()


def _global_max(logits, **_):
    return logits - logits.max()            # over the whole batch, not per row


BROKEN_PROCESSORS = {
    "shape": (lambda z: z[..., :-1].clone(), {"shape_1d", "shape_2d"}),
    "mutation": (_mutating, {"no_mutation"}),
    "returns input": (lambda z: z, {"new_tensor"}),
    "dtype": (lambda z: z.double() * 1.0, {"dtype_device"}),
    "empties rows": (lambda z: torch.where(z > 0, z, torch.full_like(z, NEG_INF)), {"valid_distribution"}),
    "removes the last token": (lambda z: z.masked_fill(torch.arange(z.shape[-1]) == 5, NEG_INF), {"keeps_a_token"}),
    "NaN": (lambda z: z * float("nan"), {"valid_distribution"}),
    "random": (lambda z: z + torch.rand_like(z), {"deterministic"}),
}


@pytest.mark.parametrize("bug", sorted(BROKEN_PROCESSORS))
def test_each_processor_bug_is_caught_by_its_check(bug):
    fn, expected = BROKEN_PROCESSORS[bug]
    got = failing(run_checks(fn, "processor"))
    assert expected <= got, f"{bug}: failed {got}"


def test_rows_independent_catches_a_batch_wide_statistic():
    got = failing(run_checks(_global_max, "processor"))
    assert "rows_independent" in got


def test_targeted_failures_leave_the_other_checks_passing():
    results = statuses(run_checks(lambda z: z, "processor"))
    assert results.pop("new_tensor") == "fail"
    assert set(results.values()) == {"pass"}


def test_check_processor_raises_naming_the_rule():
    with pytest.raises(CheckFailed, match=r"no_mutation \[fail\]: the caller's logits were modified in place"):
        check_processor(_mutating)


def test_history_processor_gets_token_ids():
    seen = []

    def spy(logits, token_ids, penalty):
        seen.append(token_ids)
        return ig.apply_repetition_penalty(logits, token_ids, penalty)

    check_processor(spy, history=True, penalty=1.2, only=["shape_2d"])
    assert seen and seen[0].dim() == 2 and bool((seen[0] == -1).any()), "histories include padding"


def test_not_implemented_is_reported_as_todo():
    def todo(logits):
        raise NotImplementedError

    assert set(statuses(run_checks(todo, "processor")).values()) == {"todo"}


def test_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        run_checks(ig.apply_top_k, "sampler")
    with pytest.raises(ValueError, match="kind"):
        check_names("sampler")
    with pytest.raises(ValueError, match="unknown check names"):
        run_checks(ig.apply_top_k, "processor", only=["nope"], top_k=3)
    with pytest.raises(TypeError, match="callable"):
        run_checks(3, "processor")


# --------------------------------------------------------------------------------------------------------
# Decoders
# --------------------------------------------------------------------------------------------------------
def test_greedy_and_sampling_pass():
    results = check_decoder(ig.greedy_search)
    assert [r.name for r in results] == decoder_check_names() and all(r.passed for r in results)
    results = statuses(check_decoder(ig.sample_with_temperature, deterministic=False, temperature=0.8))
    assert results.pop("batch_equals_single") == "skip" and set(results.values()) == {"pass"}


def _ignores_eos(model, ids, n, eos_token_id=None, **kw):
    return ig.greedy_search(model, ids, n, eos_token_id=[], **kw)


def _mutates_input(model, ids, n, **kw):
    out = ig.greedy_search(model, ids, n, **kw)
    ids[:, -1] = 5
    return out


def _drops_prompt(model, ids, n, return_dict=False, **kw):
    return ig.greedy_search(model, ids, n, **kw)[:, ids.shape[1]:]


def _rewrites_padding(model, ids, n, attention_mask=None, pad_token_id=None, **kw):
    ids.masked_fill_(~attention_mask.bool(), pad_token_id)       # "normalises" the caller's padding in place
    return ig.greedy_search(model, ids, n, attention_mask=attention_mask, pad_token_id=pad_token_id, **kw)


def _ignores_mask(model, ids, n, attention_mask=None, **kw):
    return ig.greedy_search(model, ids, n, **kw)


def _ignores_seed(model, ids, n, seed=None, **kw):
    return ig.sample_with_temperature(model, ids, n, **kw)


def _fake_logprobs(model, ids, n, return_dict=False, **kw):
    out = ig.greedy_search(model, ids, n, return_dict=return_dict, **kw)
    if return_dict:
        out.logprobs = out.logprobs.masked_fill(out.logprobs != 0, -1.0)
    return out


BROKEN_DECODERS = {
    "ignores EOS": (_ignores_eos, True, ["eos_per_row", "works_on_hf_adapter"]),
    "mutates input_ids": (_mutates_input, True, ["no_input_mutation"]),
    "rewrites the padding of input_ids": (_rewrites_padding, True, ["no_input_mutation"]),
    "drops the prompt": (_drops_prompt, True, ["output_shape", "prompt_preserved"]),
    "ignores attention_mask": (_ignores_mask, True, ["batch_equals_single"]),
    "ignores the seed": (_ignores_seed, False, ["determinism"]),
    "fake logprobs": (_fake_logprobs, True, ["logprobs_match_model"]),
}


@pytest.mark.parametrize("bug", sorted(BROKEN_DECODERS))
def test_each_decoder_bug_is_caught_by_its_check(bug):
    fn, deterministic, expected = BROKEN_DECODERS[bug]
    results = statuses(run_checks(fn, "decoder", deterministic=deterministic, only=expected))
    assert all(results[name] == "fail" for name in expected), results


def test_check_decoder_raises_with_the_rows_story():
    with pytest.raises(CheckFailed, match=r"eos_per_row \[fail\]: row \d .* padded with pad_token_id=0"):
        check_decoder(_ignores_eos, only=["eos_per_row"])


def test_scheduled_eos_model():
    model = tiny_model()
    ids, mask = left_pad([2, 5, 8])
    out = ig.greedy_search(ScheduledEOS(model, 10), ids, 12, attention_mask=mask, return_dict=True)
    assert out.finish_reason == ["eos"] * 3
    assert out.lengths == [10 - 2 + 1, 10 - 5 + 1, 10 - 8 + 1]
    never = ig.greedy_search(ScheduledEOS(model, None), ids, 12, attention_mask=mask, return_dict=True)
    assert never.finish_reason == ["length"] * 3 and 2 not in never.new_tokens.tolist()


def test_counting_model():
    counter = CountingModel(tiny_model())
    ids, mask = left_pad([3, 4])
    ig.greedy_search(ScheduledEOS(counter, None), ids, 7, attention_mask=mask)
    assert counter.calls == 7 and counter.tokens == 2 * ids.shape[1] + 2 * 6


def test_tiny_model_is_reproducible():
    a, b = tiny_model(0), tiny_model(1)
    assert a is tiny_model(0) and not torch.equal(a.embed.weight, b.embed.weight)
    assert a.defaults.eos_token_ids == (2,) and a.config.vocab_size == 96


# --------------------------------------------------------------------------------------------------------
# Value functions
# --------------------------------------------------------------------------------------------------------
def test_value_function_checks():
    from infergen.decoding.mcts import likelihood_value

    results = check_value_fn(likelihood_value)
    assert [r.name for r in results] == value_check_names() and all(r.passed for r in results)
    assert "number_in_range" in failing(run_checks(lambda ctx: 2.0, "value", only=["number_in_range"]))
    assert "number_in_range" in failing(run_checks(lambda ctx: math.nan, "value", only=["number_in_range"]))

    def mutates(ctx):
        ctx.logprobs.zero_()
        return 0.5

    assert "no_mutation" in failing(run_checks(mutates, "value", only=["no_mutation"]))


# --------------------------------------------------------------------------------------------------------
# The book's extension page: every python block runs
# --------------------------------------------------------------------------------------------------------
def test_extending_page_examples_run(capsys):
    text = (ROOT / "book" / "extending.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 3
    namespace = {}
    for block in blocks:
        exec(compile(block, "book/extending.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "Paris" in out and "LogitsPipeline(['temperature', 'top_k', 'ban'])" in out
    assert ig.get_decoder("my_greedy") is namespace["my_greedy"]


def test_the_old_module_name_gives_the_same_checks():
    import infergen.course.checks as checks
    import infergen.testing as testing

    assert testing.__all__ == checks.__all__ and all(getattr(testing, n) is getattr(checks, n) for n in checks.__all__)
