"""Greedy and sampling generation: parity with transformers, the cache, batches, EOS, seeds, streaming."""
import pytest
import torch

import infergen
from infergen.processors import LogitsPipeline

N_NEW = 64


def _naive_greedy(model, ids, n):
    """The document's loop, corrected only for no_grad: re-run the whole sequence every step."""
    with torch.inference_mode():
        for _ in range(n):
            cache = model.new_cache(ids.shape[0], ids.shape[1])
            logits = model(ids, cache).logits[:, -1]
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], 1)
    return ids


def test_greedy_equals_transformers_generate_single(smollm, smollm_hf, prompts):
    model, tok = smollm
    for prompt in prompts:
        enc = tok(prompt, return_tensors="pt")
        ours = infergen.greedy_search(model, enc.input_ids, N_NEW)
        ref = smollm_hf.generate(**enc, max_new_tokens=N_NEW, do_sample=False, pad_token_id=tok.pad_token_id)
        assert ours.tolist() == ref.tolist(), prompt


def test_greedy_equals_transformers_generate_batched(smollm, smollm_hf, prompts):
    model, tok = smollm
    enc = tok(prompts, return_tensors="pt", padding=True)
    assert (enc.attention_mask == 0).any(), "the prompt set should need padding"
    ours = infergen.greedy_search(model, enc.input_ids, N_NEW, attention_mask=enc.attention_mask)
    ref = smollm_hf.generate(**enc, max_new_tokens=N_NEW, do_sample=False, pad_token_id=tok.pad_token_id)
    assert ours.shape == ref.shape
    assert ours.tolist() == ref.tolist()


def test_cached_and_uncached_decoding_agree(tiny_native, smollm):
    ids = torch.randint(3, 96, (2, 7), generator=torch.Generator().manual_seed(0))
    assert infergen.greedy_search(tiny_native, ids, 20, eos_token_id=[]).tolist() == \
        _naive_greedy(tiny_native, ids, 20).tolist()
    model, tok = smollm
    ids = tok("The future of AI is", return_tensors="pt").input_ids
    assert infergen.greedy_search(model, ids, 12, eos_token_id=[]).tolist() == _naive_greedy(model, ids, 12).tolist()


def test_adapter_and_native_generate_the_same_tokens(tiny_hf, tiny_native):
    ids = torch.randint(3, 96, (3, 5), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    a = infergen.greedy_search(tiny_native, ids, 15, attention_mask=mask, eos_token_id=[])
    b = infergen.greedy_search(tiny_hf, ids, 15, attention_mask=mask, eos_token_id=[])  # raw transformers model
    assert a.tolist() == b.tolist()


def test_batched_equals_one_by_one(tiny_native):
    """Left padding must not change any row's tokens."""
    g = torch.Generator().manual_seed(2)
    rows = [torch.randint(3, 96, (n,), generator=g) for n in (3, 8, 5)]
    T = max(len(r) for r in rows)
    ids = torch.zeros(3, T, dtype=torch.long)
    mask = torch.zeros(3, T, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, T - len(r):] = r
        mask[i, T - len(r):] = 1
    batched = infergen.greedy_search(tiny_native, ids, 12, attention_mask=mask, eos_token_id=[])
    for i, r in enumerate(rows):
        alone = infergen.greedy_search(tiny_native, r[None], 12, eos_token_id=[])
        assert batched[i, T:].tolist() == alone[0, len(r):].tolist()


def test_each_row_stops_at_its_own_eos(tiny_native):
    ids = torch.randint(3, 96, (2, 6), generator=torch.Generator().manual_seed(3))
    free = infergen.greedy_search(tiny_native, ids, 12, eos_token_id=[])[:, 6:]
    # make row 0's third token the end-of-sequence token, provided row 1 never emits it
    eos = int(free[0, 2])
    first0 = free[0].tolist().index(eos)
    assert eos not in free[1].tolist(), "pick another seed: row 1 emits the chosen token"
    out = infergen.greedy_search(tiny_native, ids, 12, eos_token_id=eos, pad_token_id=0, return_dict=True)
    new = out.new_tokens
    assert new[0, :first0 + 1].tolist() == free[0, :first0 + 1].tolist()
    assert (new[0, first0 + 1:] == 0).all()  # padded after its EOS
    assert new[1].tolist() == free[1].tolist()  # the other row carried on
    assert out.finish_reason == ["eos", "length"]
    assert out.lengths == [first0 + 1, 12]
    assert (out.logprobs[0, first0 + 1:] == 0).all()


def test_generation_stops_when_every_row_is_done(tiny_native):
    ids = torch.randint(3, 96, (1, 4), generator=torch.Generator().manual_seed(4))
    first = int(infergen.greedy_search(tiny_native, ids, 1, eos_token_id=[])[0, -1])
    out = infergen.greedy_search(tiny_native, ids, 30, eos_token_id=first)
    assert out.shape == (1, 5)


def test_logprobs_are_the_models_own(smollm):
    model, tok = smollm
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    out = infergen.generate_autoregressive(model, ids, 10, temperature=0.9, seed=0, return_dict=True,
                                           eos_token_id=[])
    cache = model.new_cache(1, out.sequences.shape[1])
    with torch.inference_mode():
        logits = model(out.sequences, cache, logits="all").logits[0, ids.shape[1] - 1:-1]
    expected = torch.log_softmax(logits, -1).gather(-1, out.new_tokens[0, :, None]).squeeze(-1)
    assert torch.allclose(out.logprobs[0], expected, atol=1e-4)


def test_temperature_zero_is_greedy(tiny_native):
    """Temperature 0 and greedy_search both equal an independent argmax loop over the model's logits
    (the reference re-runs the whole sequence each step: no infergen decoder, sampler or cache reuse)."""
    ids = torch.randint(3, 96, (2, 5), generator=torch.Generator().manual_seed(5))
    reference = _naive_greedy(tiny_native, ids, 10).tolist()
    for seed in range(3):  # a sampling bug at T=0 would draw differently with different seeds
        torch.manual_seed(seed)
        assert infergen.generate_autoregressive(tiny_native, ids, 10, temperature=0.0, eos_token_id=[]).tolist() \
            == reference
    assert infergen.greedy_search(tiny_native, ids, 10, eos_token_id=[]).tolist() == reference


def test_seed_makes_sampling_reproducible(tiny_native):
    ids = torch.randint(3, 96, (2, 5), generator=torch.Generator().manual_seed(6))
    run = lambda **kw: infergen.sample_with_temperature(tiny_native, ids, 20, temperature=1.0,
                                                         eos_token_id=[], **kw).tolist()
    assert run(seed=1) == run(seed=1)
    assert run(seed=1) != run(seed=2)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert run(generator=g1) == run(generator=g2)


def test_sampling_draws_from_the_processed_distribution(tiny_native):
    """First-token frequencies over many rows match softmax(pipeline(logits)) (chi-square bound)."""
    params = dict(temperature=0.7, top_k=20, top_p=0.9)
    prompt = torch.randint(3, 96, (1, 6), generator=torch.Generator().manual_seed(8))
    n = 6000
    out = infergen.generate_autoregressive(tiny_native, prompt.repeat(n, 1), 1, seed=9, eos_token_id=[], **params)
    counts = torch.bincount(out[:, -1], minlength=96).double()
    cache = tiny_native.new_cache(1, 6)
    with torch.inference_mode():
        logits = tiny_native(prompt, cache).logits[:, -1]
    p = torch.softmax(LogitsPipeline.from_params(**params)(logits), -1)[0].double()
    assert counts[p == 0].sum() == 0, "a filtered-out token was sampled"
    keep = p > 0
    expected = n * p[keep]
    chi2 = ((counts[keep] - expected) ** 2 / expected).sum().item()
    dof = int(keep.sum()) - 1
    assert dof >= 3
    assert chi2 < dof + 5 * (2 * dof) ** 0.5, (chi2, dof)  # ~5 sigma of the chi-square distribution
    # and the test can fail: the untempered distribution is rejected
    p_raw = torch.softmax(logits, -1)[0].double()
    expected_raw = n * p_raw[keep] / p_raw[keep].sum()
    chi2_raw = ((counts[keep] - expected_raw) ** 2 / expected_raw).sum().item()
    assert chi2_raw > dof + 5 * (2 * dof) ** 0.5


def test_penalties_reach_the_loop(smollm):
    """The processors run inside the loop, on the right history: each step's token is the argmax of
    the penalised logits, recomputed here step by step from a plain forward."""
    model, tok = smollm
    ids = tok("I like apples. I like apples. I like", return_tensors="pt").input_ids
    T = ids.shape[1]
    plain = infergen.greedy_search(model, ids, 6, eos_token_id=[])
    penal = infergen.greedy_search(model, ids, 6, eos_token_id=[], repetition_penalty=2.0)
    assert plain.tolist() != penal.tolist()
    for step in range(6):
        prefix = penal[:, :T + step]
        cache = model.new_cache(1, prefix.shape[1])
        with torch.inference_mode():
            logits = model(prefix, cache).logits[:, -1]
        expected = infergen.apply_repetition_penalty(logits, prefix, 2.0).argmax(-1)
        assert int(penal[0, T + step]) == int(expected)


def test_front_door_generate(smollm):
    model, tok = smollm
    r = infergen.generate(model, tok, "The capital of France is", max_new_tokens=12)
    assert isinstance(r, infergen.GenerationResult)
    assert r.text == tok.decode(r.token_ids, skip_special_tokens=True)
    assert len(r.logprobs) == len(r.token_ids) == r.num_tokens <= 12
    assert r.finish_reason in ("eos", "length")
    rs = infergen.generate(model, tok, ["Hello", "The sky is"], strategy="sample", temperature=0.8, seed=0,
                           max_new_tokens=8)
    assert [x.prompt for x in rs] == ["Hello", "The sky is"]
    with pytest.raises(ValueError, match="strategy must be one of"):
        infergen.generate(model, tok, "Hi", strategy="telepathy")


def test_stop_strings(smollm):
    model, tok = smollm
    free = infergen.generate(model, tok, "Count: 1, 2, 3,", max_new_tokens=20)
    assert " 6" in free.text
    r = infergen.generate(model, tok, "Count: 1, 2, 3,", max_new_tokens=20, stop=" 6")
    assert r.finish_reason == "stop"
    assert " 6" not in r.text and free.text.startswith(r.text)
    assert r.num_tokens < free.num_tokens


def test_streaming_yields_the_same_text(smollm):
    model, tok = smollm
    pieces = list(infergen.stream(model, tok, "The future of AI is", strategy="greedy", max_new_tokens=16))
    assert len(pieces) > 3
    assert "".join(pieces) == infergen.generate(model, tok, "The future of AI is", max_new_tokens=16).text
    seen = []
    ids = tok("Hello", return_tensors="pt").input_ids
    out = infergen.greedy_search(model, ids, 5, streamer=seen.append, eos_token_id=[])
    assert torch.cat(seen).tolist() == out[0, ids.shape[1]:].tolist()


def test_max_new_tokens_zero_returns_the_prompt(tiny_native):
    ids = torch.randint(3, 96, (2, 4))
    assert infergen.greedy_search(tiny_native, ids, 0).tolist() == ids.tolist()


def test_cli_generate(smollm, capsys):
    from infergen.interop.cli import main

    main(["generate", "The capital of France is", "--max-new-tokens", "5"])
    out = capsys.readouterr().out
    assert out.startswith("The capital of France is") and "finish:" in out
    main(["generate", "Hi", "--strategy", "sample", "--temperature", "0.8", "--seed", "0", "--stream",
          "--max-new-tokens", "5"])
    assert capsys.readouterr().out.startswith("Hi")
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    assert "--temperature" in capsys.readouterr().out


def test_greedy_applies_logit_bias(tiny_native):
    ids = torch.randint(3, 96, (2, 5), generator=torch.Generator().manual_seed(10))
    out = infergen.greedy_search(tiny_native, ids, 4, eos_token_id=[], logit_bias={17: 100.0})
    assert (out[:, 5:] == 17).all()


def test_generate_with_several_sequences_per_prompt(smollm):
    model, tok = smollm
    rs = infergen.generate(model, tok, ["The sky is", "Water is"], strategy="beam", num_beams=3,
                           num_return_sequences=2, max_new_tokens=6)
    assert [r.prompt for r in rs] == ["The sky is", "The sky is", "Water is", "Water is"]
    assert rs[0].token_ids != rs[1].token_ids
