"""Assignment 5 (prompt-lookup decoding): the teacher's extra checks (``python -m infergen.course grade a5 FILE``).

The speed-up is graded on *forward passes* (CountingModel), which do not depend on the machine or its
load; the wall-clock speed-up on the bundled model is measured and reported in the message. The passes
are counted in the grader, on ``unseen_model`` (weights from a secret seed): a submission that rebuilt a
known model in its own process and decoded there, uncounted, would not reproduce its outputs.
"""
import functools
import time

import torch

import infergen as ig
from infergen.testing import CountingModel, ScheduledEOS, left_pad, tiny_gpt2

CONFORMANCE = {"kind": "decoder", "points": 0.1, "function": "prompt_lookup_decode", "params": {}}


def check_identical_to_greedy_for_all_settings(solution, tiny_model):
    ids, mask = left_pad([2, 4, 7, 9, 5], seed=8)
    models = {"the tiny Llama": tiny_model, "a tiny GPT-2 (transformers adapter)": tiny_gpt2(),
              "the tiny Llama with EOS after 14 tokens": ScheduledEOS(tiny_model, 14)}
    for what, model in models.items():
        want = ig.greedy_search(model, ids, 24, attention_mask=mask)
        for k, n in [(1, 1), (3, 2), (10, 3), (24, 5)]:
            got = solution.prompt_lookup_decode(model, ids, 24, attention_mask=mask, num_draft_tokens=k,
                                                max_ngram_size=n)
            assert torch.equal(got, want), (f"num_draft_tokens={k}, max_ngram_size={n} on {what}: output "
                                            "differs from greedy")


def check_streamer_gets_each_committed_column(solution, tiny_model):
    ids, mask = left_pad([3, 6], seed=9)
    columns = []
    out = solution.prompt_lookup_decode(tiny_model, ids, 20, attention_mask=mask, streamer=columns.append)
    new = out[:, ids.shape[1]:]
    assert len(columns) == new.shape[1], f"{len(columns)} streamer calls for {new.shape[1]} new columns"
    assert torch.equal(torch.stack([c.reshape(-1) for c in columns], 1), new), "streamed tokens differ from the output"


def check_forwards_reported(solution, unseen_model):
    """info['forwards'] is the number of forward passes the decoder ran, and the drafts cut them (on a model
    whose weights the submission cannot rebuild)."""
    ids, _ = left_pad([5], seed=2)
    want = ig.greedy_search(unseen_model, ids, 30)
    with CountingModel(unseen_model) as counter:
        out = solution.prompt_lookup_decode(counter, ids, 30, return_dict=True)
    assert torch.equal(out.sequences, want), "the output differs from greedy search"
    assert out.info.get("forwards") == counter.calls, (
        f"info['forwards'] = {out.info.get('forwards')} but the model was called {counter.calls} times")
    assert counter.calls <= 15, f"{counter.calls} forward passes for 30 tokens of a looping greedy output"


@functools.lru_cache(maxsize=2)
def _greedy_baseline(model, text):
    tok = model[1]
    ids = tok(text, return_tensors="pt").input_ids
    start = time.perf_counter()
    with CountingModel(model[0]) as counter:
        out = ig.greedy_search(counter, ids, 24)
    return ids, out, counter.calls, time.perf_counter() - start


PROMPT = "The cat sat on the mat. The dog sat on the log. The cat sat on the"


def check_speedup_on_the_bundled_model(solution, smollm):
    """On a prompt whose continuation copies from the context, SmolLM2's output is unchanged and needs at
    most 70% of greedy's forward passes. Wall-clock times are reported, not graded."""
    ids, want, greedy_calls, greedy_s = _greedy_baseline(smollm, PROMPT)
    start = time.perf_counter()
    with CountingModel(smollm[0]) as counter:
        got = solution.prompt_lookup_decode(counter, ids, 24)
    seconds = time.perf_counter() - start
    assert torch.equal(got, want), "on the bundled model the output differs from greedy search"
    assert counter.calls <= 0.7 * greedy_calls, f"{counter.calls} forward passes vs {greedy_calls} for greedy"
    return (f"{counter.calls} forward passes vs {greedy_calls} for greedy ({greedy_calls / counter.calls:.1f}x "
            f"fewer); wall clock {seconds:.2f} s vs {greedy_s:.2f} s ({greedy_s / seconds:.1f}x)")


# Points follow what the assignment teaches: fewer forward passes for the same output. Plain greedy search
# passes the output checks and the conformance rows too: they weigh little.
check_forwards_reported.points = 3
check_speedup_on_the_bundled_model.points = 3
check_identical_to_greedy_for_all_settings.points = 0.5
check_streamer_gets_each_committed_column.points = 0.5
