"""The continuous batcher as a server (issue 21, item 17): every request carries its own settings, seed,
stop strings and structured-output constraint, and a client can cancel it.

The invariant of tests/test_serving.py, kept under all of these: a request's tokens (and finish reason,
and text) equal running it alone with the same settings and seed. A cancelled request's tokens are a
prefix of that run. Tiny model (vocabulary 96: ids 17..95 are single printable characters of the bundled
tokenizer, id 2 is its ``<|im_end|>``), so the whole file takes a few seconds.
"""
from __future__ import annotations

import re
import threading

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infergen.constraints import make_constraint
from infergen.decoding.sampling import generate_autoregressive
from infergen.params import SamplingParams
from infergen.bench.serving import static_batching
from infergen.serving import ContinuousBatcher, Request
from infergen.decoding.steps import StopStrings

pytest.importorskip("llguidance")

SETTINGS = [SamplingParams(temperature=0), SamplingParams(temperature=0, repetition_penalty=1.5),
            SamplingParams(temperature=0.9, top_k=20, seed=7), SamplingParams(temperature=1.1, top_p=0.8),
            SamplingParams(temperature=0.7, min_p=0.1, frequency_penalty=1.0, logit_bias={40: 4.0})]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (tests/conftest.py)


@pytest.fixture(scope="module")
def tok():
    from infergen.interop.gguf import prepare_bundled
    from infergen.models.loading import load_tokenizer

    return load_tokenizer(prepare_bundled(progress=False))


def alone(model, tok, req: Request, default: SamplingParams, eos) -> tuple[list[int], str, str]:
    """``req`` run by itself with generate_autoregressive: its tokens, finish reason and text (cut as
    infergen.generate cuts it)."""
    p = default if req.params is None else req.params
    stopper = StopStrings(tok, p.stop) if p.stop else None
    seed = p.seed if req.seed is None else req.seed
    out = generate_autoregressive(model, torch.tensor([req.prompt]), req.max_new_tokens, eos_token_id=eos,
                                  params=p.replace(stop=(), seed=seed), stopping=stopper,
                                  constraint=req.constraint, return_dict=True)
    ids = out.new_tokens[0, :out.lengths[0]].tolist()
    text = tok.decode(ids, skip_special_tokens=True)
    return ids, out.finish_reason[0], stopper.cut(text) if stopper else text


def _prompts(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 96, (int(k),), generator=g).tolist() for k in torch.randint(2, 10, (n,), generator=g)]


def test_mixed_settings_and_seeds_per_request(tiny_native, tok):
    reqs = [Request(p, max_new_tokens=5 + i % 4, id=i, params=SETTINGS[i % len(SETTINGS)], seed=100 + i)
            for i, p in enumerate(_prompts(9))]
    reqs[3].params = None  # the batcher's own settings
    default = SamplingParams(temperature=0.8, top_k=10)
    batcher = ContinuousBatcher(tiny_native, max_batch=3, max_len=24, eos_token_id=[], params=default)
    out = batcher.run(reqs)
    for r in out:
        assert (r.tokens, r.finish_reason) == alone(tiny_native, tok, r, default, [])[:2], r.id
    assert batcher.stats["dropped_columns"] > 0  # the cache was compacted under the mixed rows
    # a request's settings really apply to it: the same prompt greedy and sampled differ
    two = ContinuousBatcher(tiny_native, max_batch=2, eos_token_id=[]).run(
        [Request(reqs[0].prompt, 8, params=SETTINGS[0]), Request(reqs[0].prompt, 8, params=SETTINGS[3], seed=1)])
    assert two[0].tokens != two[1].tokens


def test_stop_strings_per_request(tiny_native, tok):
    prompts = _prompts(6, seed=1)
    reqs = []
    for i, p in enumerate(prompts):
        params = SETTINGS[i % 4]
        free, _, text = alone(tiny_native, tok, Request(p, 10, params=params, seed=i), params, [])
        stop = text[2:4] if i % 3 and len(text) >= 4 else "never here"  # two characters it writes
        reqs.append(Request(p, 10, id=i, params=params.replace(stop=(stop,)), seed=i))
    out = ContinuousBatcher(tiny_native, max_batch=2, eos_token_id=[], tokenizer=tok).run(reqs)
    for r in out:
        assert (r.tokens, r.finish_reason, r.text) == alone(tiny_native, tok, r, SETTINGS[0], []), r.id
    written = [r.params.stop[0] != "never here" for r in out]
    assert sum(written) >= 2 and [r.finish_reason == "stop" for r in out] == written  # multi-token stops
    assert all(r.params.stop[0] not in r.text for r in out)
    # stop strings of the batcher's own settings apply to every request that has none of its own
    default = SamplingParams(temperature=0, stop=("".join(r.text for r in out)[:1],))
    served = ContinuousBatcher(tiny_native, max_batch=2, eos_token_id=[], tokenizer=tok, params=default).run(
        [Request(p, 10, id=i) for i, p in enumerate(prompts)])
    for r in served:
        assert (r.tokens, r.finish_reason, r.text) == alone(tiny_native, tok, r, default, []), r.id


def test_constraints_per_request(tiny_native, tok):
    date = make_constraint(tok, regex=r"[0-9]{2}-[a-f]{1,2}", eos_token_id=2)
    yes_no = make_constraint(tok, choices=["yes", "no"], eos_token_id=2)
    empty = make_constraint(tok, regex="", eos_token_id=2)  # complete before any token
    kinds = [date, None, yes_no, date, empty, None, yes_no]
    reqs = [Request(p, 8, id=i, constraint=c, params=SETTINGS[i % 3], seed=i)
            for i, (p, c) in enumerate(zip(_prompts(7, seed=2), kinds))]
    batcher = ContinuousBatcher(tiny_native, max_batch=3, eos_token_id=2, tokenizer=tok)
    out = batcher.run(reqs)
    for r in out:
        assert (r.tokens, r.finish_reason, r.text) == alone(tiny_native, tok, r, SETTINGS[0], 2), r.id
    for r in (out[0], out[3]):
        assert r.finish_reason in ("constraint", "closed") and re.fullmatch(r"[0-9]{2}-[a-f]{1,2}", r.text), r.text
    assert out[2].text in ("yes", "no") and out[6].text in ("yes", "no")
    assert out[4].tokens == [] and out[4].finish_reason == "constraint"
    assert batcher.stats["prefills"] == 6  # the request complete before any token spent no forward pass


def test_cancelled_requests_stop_and_free_their_slot(tiny_native, tok):
    prompts = _prompts(4, seed=3)
    reqs = [Request(p, 12, id=i, params=SETTINGS[i % 3], seed=i, cancel_at=c)
            for i, (p, c) in enumerate(zip(prompts, [3, None, 0, None]))]
    reqs[3].arrival = 1
    out = ContinuousBatcher(tiny_native, max_batch=1, eos_token_id=[]).run(reqs)
    whole = [alone(tiny_native, tok, r, SETTINGS[0], [])[0] for r in out]
    assert out[0].finish_reason == "cancelled" and out[0].tokens == whole[0][:len(out[0].tokens)]
    assert 0 < len(out[0].tokens) < 12 and out[0].finished_step == 3
    assert out[2].tokens == [] and out[2].admitted_step is None and out[2].finish_reason == "cancelled"
    assert out[1].tokens == whole[1] and out[3].tokens == whole[3]  # one slot: freed by the cancel, reused


def test_cancel_by_id_while_serving(tiny_native):
    batcher = ContinuousBatcher(tiny_native, max_batch=2, eos_token_id=[])
    reqs = [Request([5, 6, 7], 240, id="long"), Request([8, 9], 4, id="short")]
    serving = threading.Thread(target=batcher.run, args=(reqs,))
    serving.start()
    while reqs[0].admitted_step is None and serving.is_alive():
        threading.Event().wait(0.001)
    batcher.cancel("long")  # the client went away
    serving.join()
    assert reqs[0].finish_reason == "cancelled" and len(reqs[0].tokens) < 240 and reqs[0].cancel_at == 0
    assert reqs[1].finish_reason == "length" and len(reqs[1].tokens) == 4
    batcher.cancel("short")  # finished already: nothing to do
    with pytest.raises(ValueError, match="request_id 'nobody'"):
        batcher.cancel("nobody")


def test_bad_request_settings_are_refused_naming_them(tiny_native, tok):
    with pytest.raises(TypeError, match="params must be an infergen.SamplingParams, got dict"):
        Request([5], params={"temperature": 0})
    with pytest.raises(TypeError, match="temperature"):
        Request([5], params=SamplingParams(temperature=torch.tensor([0.5, 1.0])))
    with pytest.raises(TypeError, match="constraint must be .*got str"):
        Request([5], constraint="[0-9]+")
    with pytest.raises(ValueError, match="cancel_at"):
        Request([5], cancel_at=-1)
    with pytest.raises(ValueError, match="request 'x' has stop strings.*tokenizer"):
        ContinuousBatcher(tiny_native).run([Request([5], id="x", params=SamplingParams(stop="a"))])
    with pytest.raises(ValueError, match="ids must be unique.*'a'"):
        ContinuousBatcher(tiny_native).run([Request([5], id="a"), Request([6], id="a")])
    with pytest.raises(TypeError, match="tokenizer"):
        ContinuousBatcher(tiny_native, tokenizer="gpt2")
    with pytest.raises(ValueError, match="request_id 'x' names no request"):
        ContinuousBatcher(tiny_native).cancel("x")  # no run yet: set Request.cancel_at instead
    with pytest.raises(ValueError, match="static_batching serves every request with one set of settings"):
        static_batching(tiny_native, [Request([5], params=SETTINGS[1])])  # it would ignore them silently


# -- the property: random workloads ---------------------------------------------------------------
@st.composite
def workloads(draw):
    reqs = []
    for i in range(draw(st.integers(1, 6))):
        arrival, cancel_after = draw(st.integers(0, 4)), draw(st.one_of(st.none(), st.integers(0, 5)))
        reqs.append(dict(prompt=draw(st.lists(st.integers(3, 95), min_size=1, max_size=8)),
                         max_new_tokens=draw(st.integers(1, 8)), arrival=arrival,
                         which=draw(st.integers(0, len(SETTINGS) - 1)), seed=draw(st.integers(0, 2**32)),
                         stop_at=draw(st.one_of(st.none(), st.integers(0, 6))),
                         constrained=draw(st.booleans()) and draw(st.booleans()),
                         cancel_at=None if cancel_after is None else arrival + cancel_after, id=i))
    return reqs


@settings(max_examples=15, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(work=workloads(), max_batch=st.integers(1, 3), eos=st.sampled_from([[], [2], [2, 45]]))
def test_every_served_request_equals_the_request_alone(tiny_native, tok, work, max_batch, eos):
    """Random arrivals, mixed greedy and seeded sampling, stop strings, constraints and cancellations:
    every request that was not cancelled equals its run alone; a cancelled one is a prefix of it."""
    digits = make_constraint(tok, regex=r"[0-9]{1,3}(-[a-z]{1,3})?", eos_token_id=2)
    reqs, want = [], {}
    for w in work:
        params = SETTINGS[w["which"]]
        req = Request(w["prompt"], w["max_new_tokens"], arrival=w["arrival"], seed=w["seed"], id=w["id"],
                      constraint=digits if w["constrained"] else None)
        if w["stop_at"] is not None:  # a stop string the request writes (or, past its end, one it does not)
            text = alone(tiny_native, tok, req, params, eos)[2]
            params = params.replace(stop=(text[w["stop_at"]:w["stop_at"] + 2] or "not written",))
        req.params = params
        want[req.id] = alone(tiny_native, tok, req, params, eos)
        req.cancel_at = w["cancel_at"]
        reqs.append(req)
    out = ContinuousBatcher(tiny_native, max_batch=max_batch, eos_token_id=eos, tokenizer=tok).run(reqs)
    for r in out:
        tokens, reason, text = want[r.id]
        if r.cancel_at is not None and r.finished_step is not None and r.finished_step >= r.cancel_at \
                and (r.tokens, r.finish_reason) != (tokens, reason):
            assert r.finish_reason == "cancelled" and r.tokens == tokens[:len(r.tokens)], (r.id, r.tokens, tokens)
        else:
            assert (r.tokens, r.finish_reason, r.text) == (tokens, reason, text), r.id
