"""Tests for infergen.decoding.beam: parity with transformers' beam search, EOS handling, the cache,
diverse (group) beam search against a plain reference loop, and parameter validation.

Most cases run on a tiny random Llama with a logit bias on its EOS id (2), so hypotheses finish at
many different steps and every branch of the finishing / early-stopping logic is exercised. Its weights
are drawn 10x larger than the default (``initializer_range=0.2``): the default tiny model predicts an
almost uniform distribution that barely depends on the context, so a search that reorders the cache
wrongly, or mixes up beams, would still pass. This one has peaked, context-dependent predictions. The bundled
model checks real text: 4 prompts x 12 new tokens, two of them chat prompts that end with EOS early.
"""
import math

import pytest
import torch

from infergen.decoding.beam import apply_hamming_diversity, beam_search, diverse_beam_search
from infergen.decoding.sampling import greedy_search
from infergen.models.hf import HFModel
from infergen.registry import get_decoder

EOS, PAD = 2, 0


@pytest.fixture(scope="module")
def sharp():
    """(transformers model, native model) with the same weights: a tiny Llama with peaked predictions."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from infergen.models.llama import LlamaModel

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, bos_token_id=1,
                      eos_token_id=EOS, pad_token_id=PAD, initializer_range=0.2)
    hf = LlamaForCausalLM(cfg).eval()
    return hf, LlamaModel.from_hf(hf)


@pytest.fixture(scope="module")
def batch():
    """4 left-padded prompts of lengths 7, 4, 2, 6 for the tiny models (vocabulary 96)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 96, (4, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :5] = 0
    mask[3, :1] = 0
    return ids.masked_fill(mask == 0, PAD), mask


def hf_beam(hf_model, ids, mask, max_new, bias=0.0, pad=EOS, **kw):
    """transformers' own beam search. Its output fill value is ``pad_token_id or eos``, so pad is EOS here."""
    out = hf_model.generate(ids, attention_mask=mask, max_new_tokens=max_new, eos_token_id=EOS, pad_token_id=pad,
                            sequence_bias={(EOS,): bias} if bias else None, return_dict_in_generate=True,
                            output_scores=True, **kw)
    return out.sequences, out.sequences_scores


# ---------------------------------------------------------------------------------------------------------
# Parity with transformers
# ---------------------------------------------------------------------------------------------------------
TINY_SETTINGS = [  # (eos bias, num_beams, length_penalty, early_stopping, num_return_sequences)
    (0.0, 4, 1.0, False, 1), (2.0, 4, 1.0, False, 2), (3.0, 4, 0.5, True, 1), (3.0, 3, 2.0, False, 3),
    (2.0, 4, 2.0, "never", 2), (3.0, 4, -1.0, "never", 1), (3.0, 2, 0.0, True, 2), (2.0, 5, 1.0, True, 4),
]


@pytest.mark.parametrize("bias,nb,lp,es,nrs", TINY_SETTINGS)
def test_tiny_matches_transformers(sharp, batch, bias, nb, lp, es, nrs):
    tiny_hf, tiny_native = sharp
    ids, mask = batch
    kw = dict(num_beams=nb, length_penalty=lp, early_stopping=es, num_return_sequences=nrs)
    ref_seq, ref_scores = hf_beam(tiny_hf, ids, mask, 12, bias, do_sample=False, **kw)
    for model in (tiny_native, HFModel(tiny_hf)):
        out = beam_search(model, ids, 12, attention_mask=mask, eos_token_id=EOS, pad_token_id=EOS,
                          logit_bias={EOS: bias} if bias else None, return_dict=True, **kw)
        assert out.sequences.shape == ref_seq.shape
        assert torch.equal(out.sequences, ref_seq), type(model).__name__
        torch.testing.assert_close(out.scores, ref_scores, atol=1e-5, rtol=1e-5)
    if bias:  # the settings with a bias must really exercise EOS, or they prove little
        assert "eos" in out.finish_reason


def test_bundled_model_matches_transformers(smollm, smollm_hf, prompts):
    model, tok = smollm
    chat = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
            for q in ("What is the capital of France? One word.", "Say hi.")]
    tok.padding_side = "left"
    enc = tok([prompts[0], prompts[1]] + chat, return_tensors="pt", padding=True, add_special_tokens=False)
    settings = [dict(length_penalty=1.0, early_stopping=False), dict(length_penalty=0.5, early_stopping=True),
                dict(length_penalty=2.0, early_stopping=False, num_return_sequences=2),
                dict(length_penalty=1.0, early_stopping="never")]
    reasons = set()
    for kw in settings:
        ref = smollm_hf.generate(**enc, max_new_tokens=12, num_beams=4, do_sample=False,
                                 return_dict_in_generate=True, output_scores=True, **kw)
        out = beam_search(model, enc.input_ids, 12, num_beams=4, attention_mask=enc.attention_mask,
                          return_dict=True, **kw)
        assert torch.equal(out.sequences, ref.sequences), kw
        torch.testing.assert_close(out.scores, ref.sequences_scores, atol=1e-4, rtol=1e-4)
        reasons.update(out.finish_reason)
    assert reasons == {"eos", "length"}  # chat rows end early, base rows run to the limit


def test_beam_sampling_matches_transformers(sharp, batch):
    """Beam sampling draws 2k candidates without replacement from softmax(scores); with the same global
    seed transformers and infergen draw the same ones."""
    tiny_hf, tiny_native = sharp
    ids, mask = batch
    kw = dict(num_beams=3, length_penalty=1.0, num_return_sequences=2)
    torch.manual_seed(123)
    ref_seq, ref_scores = hf_beam(tiny_hf, ids, mask, 10, 2.0, do_sample=True, temperature=0.7, top_k=20,
                                  top_p=0.95, **kw)
    torch.manual_seed(123)
    out = beam_search(tiny_native, ids, 10, attention_mask=mask, eos_token_id=EOS, pad_token_id=EOS, do_sample=True,
                      temperature=0.7, top_k=20, top_p=0.95, logit_bias={EOS: 2.0}, return_dict=True, **kw)
    assert torch.equal(out.sequences, ref_seq)
    torch.testing.assert_close(out.scores, ref_scores, atol=1e-5, rtol=1e-5)
    # reproducible with a seed, and different from deterministic beam search
    a = beam_search(tiny_native, ids, 10, attention_mask=mask, do_sample=True, seed=5, **kw)
    b = beam_search(tiny_native, ids, 10, attention_mask=mask, do_sample=True, seed=5, **kw)
    c = beam_search(tiny_native, ids, 10, attention_mask=mask, **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---------------------------------------------------------------------------------------------------------
# Behaviour
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("with_eos", [False, True])
def test_one_beam_is_greedy(sharp, batch, with_eos):
    tiny_native = sharp[1]
    ids, mask = batch
    eos = [EOS]
    if with_eos:  # make tokens that greedy decoding produces early in rows 0 and 3 count as EOS too
        free = greedy_search(tiny_native, ids, 6, attention_mask=mask, eos_token_id=EOS)
        eos = [EOS, int(free[0, 9]), int(free[3, 10])]
    kw = dict(attention_mask=mask, eos_token_id=eos, pad_token_id=PAD, return_dict=True)
    beam = beam_search(tiny_native, ids, 15, num_beams=1, **kw)
    greedy = greedy_search(tiny_native, ids, 15, **kw)
    width = beam.sequences.shape[1]
    assert torch.equal(beam.sequences, greedy.sequences[:, :width])
    assert (greedy.sequences[:, width:] == PAD).all()  # greedy pads to max_new_tokens, beam to the longest row
    assert beam.lengths == greedy.lengths and beam.finish_reason == greedy.finish_reason
    torch.testing.assert_close(beam.logprobs, greedy.logprobs[:, :width - 7])
    if with_eos:
        assert beam.finish_reason[0] == beam.finish_reason[3] == "eos" and max(beam.lengths[0], beam.lengths[3]) <= 4


def test_bundled_one_beam_is_greedy(smollm, prompts):
    model, tok = smollm
    tok.padding_side = "left"
    enc = tok(prompts[:3], return_tensors="pt", padding=True)
    beam = beam_search(model, enc.input_ids, 6, num_beams=1, attention_mask=enc.attention_mask)
    assert torch.equal(beam, greedy_search(model, enc.input_ids, 6, attention_mask=enc.attention_mask))


def test_rows_finish_early_and_are_padded(sharp, batch):
    tiny_native = sharp[1]
    ids, mask = batch
    out = beam_search(tiny_native, ids, 15, num_beams=3, num_return_sequences=3, attention_mask=mask,
                      eos_token_id=EOS, pad_token_id=PAD, logit_bias={EOS: 3.0}, return_dict=True)
    assert out.sequences.shape == (12, 7 + max(out.lengths))
    assert "eos" in out.finish_reason and min(out.lengths) < max(out.lengths)
    for row, (n, reason) in enumerate(zip(out.lengths, out.finish_reason)):
        new = out.new_tokens[row]
        assert (new[:n - 1] != EOS).all()
        assert (new[n - 1] == EOS) == (reason == "eos")
        assert (new[n:] == PAD).all() and (out.logprobs[row, n:] == 0).all()
    # the prompt of input row b is repeated for its 3 hypotheses, best (highest score) first
    assert torch.equal(out.sequences[:, :7], ids.repeat_interleave(3, 0))
    assert (out.scores.view(4, 3).diff(dim=1) <= 0).all()


@pytest.mark.parametrize("lp", [0.5, 1.0, 2.0])
def test_scores_are_length_normalised_logprob_sums(sharp, batch, lp):
    tiny_native = sharp[1]
    """Without processors a hypothesis' score is exactly sum(log p) / length ** length_penalty."""
    ids, mask = batch
    out = beam_search(tiny_native, ids, 10, num_beams=4, num_return_sequences=2, length_penalty=lp,
                      attention_mask=mask, eos_token_id=[EOS, 5], pad_token_id=PAD, return_dict=True)
    lengths = torch.tensor(out.lengths, dtype=torch.float)
    torch.testing.assert_close(out.scores, out.logprobs.sum(1) / lengths ** lp, atol=1e-5, rtol=1e-5)


def test_cache_reorder_keeps_each_beam_consistent(sharp, batch):
    """The log-probs recorded while searching (with the reordered cache) equal those of a fresh forward pass
    over each returned sequence: every beam's keys/values followed it."""
    tiny_hf, tiny_native = sharp
    ids, mask = batch
    out = beam_search(tiny_native, ids, 12, num_beams=4, num_return_sequences=4, attention_mask=mask,
                      eos_token_id=EOS, pad_token_id=PAD, logit_bias={EOS: 2.0}, return_dict=True)
    seq = out.sequences
    full_mask = torch.cat([mask.repeat_interleave(4, 0), torch.ones_like(out.new_tokens)], 1)
    with torch.no_grad():
        logits = tiny_hf(seq, attention_mask=full_mask, position_ids=(full_mask.cumsum(1) - 1).clamp(min=0)).logits
    logp = torch.log_softmax(logits[:, 6:-1].float(), -1).gather(-1, out.new_tokens[..., None]).squeeze(-1)
    real = torch.arange(out.new_tokens.shape[1])[None] < torch.tensor(out.lengths)[:, None]
    torch.testing.assert_close(out.logprobs[real], logp[real], atol=1e-4, rtol=1e-4)


def test_gpt2_adapter_matches_transformers(tiny_gpt2, batch):
    ids, mask = batch
    kw = dict(num_beams=3, length_penalty=1.0, num_return_sequences=2)
    ref_seq, ref_scores = hf_beam(tiny_gpt2.hf, ids, mask, 8, 2.0, do_sample=False, **kw)
    out = beam_search(tiny_gpt2, ids, 8, attention_mask=mask, eos_token_id=EOS, pad_token_id=EOS,
                      logit_bias={EOS: 2.0}, return_dict=True, **kw)
    assert torch.equal(out.sequences, ref_seq)
    torch.testing.assert_close(out.scores, ref_scores, atol=1e-5, rtol=1e-5)
    div = diverse_beam_search(tiny_gpt2, ids, 8, num_beams=4, num_beam_groups=2, diversity_penalty=1.0,
                              attention_mask=mask, return_dict=True)
    assert div.sequences.shape[0] == 4 and div.scores.isfinite().all()


def test_front_door_and_streamer(smollm):
    import infergen

    model, tok = smollm
    res = infergen.generate(model, tok, "The capital of France is", strategy="beam", max_new_tokens=5, num_beams=2)
    assert 1 <= res.num_tokens <= 5 and res.score is not None and res.strategy == "beam"
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    columns = []
    out = beam_search(model, ids, 5, num_beams=2, streamer=columns.append)
    assert torch.equal(torch.stack(columns, 1), out[:, ids.shape[1]:])  # the final tokens, column by column
    assert res.token_ids == out[0, ids.shape[1]:].tolist()
    assert get_decoder("diverse_beam") is diverse_beam_search


def test_zero_new_tokens(sharp, batch):
    tiny_native = sharp[1]
    ids, mask = batch
    out = beam_search(tiny_native, ids, 0, num_beams=3, num_return_sequences=2, attention_mask=mask,
                      return_dict=True)
    assert torch.equal(out.sequences, ids.repeat_interleave(2, 0)) and out.lengths == [0] * 8


# ---------------------------------------------------------------------------------------------------------
# Diverse beam search
# ---------------------------------------------------------------------------------------------------------
def reference_hamming(scores, current_tokens, penalty, num_beams, group_start, group_size):
    """transformers 4.x HammingDiversityLogitsProcessor, as a plain loop over input rows."""
    out = scores.clone()
    for b in range(current_tokens.shape[0] // num_beams):
        previous = current_tokens[b * num_beams: b * num_beams + group_start]
        out[b * group_size:(b + 1) * group_size] -= penalty * torch.bincount(previous, minlength=scores.shape[-1])
    return out


@pytest.mark.parametrize("group", [0, 1, 2])
def test_hamming_diversity_matches_reference_loop(group):
    g = torch.Generator().manual_seed(group)
    num_beams, size, B, V = 6, 2, 3, 50
    current = torch.randint(0, 8, (B * num_beams,), generator=g)  # small range: repeated tokens
    scores = torch.randn(B * size, V, generator=g)
    previous = current.view(B, num_beams)[:, :group * size]
    ours = apply_hamming_diversity(scores, previous, 0.7, beams_per_row=size)
    torch.testing.assert_close(ours, reference_hamming(scores, current, 0.7, num_beams, group * size, size))
    assert (ours != scores).any() == (group > 0)


def reference_diverse_beam(model, prompt, max_new, num_beams, groups, penalty, lp, es, n_return, bias):
    """Group beam search for one prompt, written as plainly as possible (transformers 4.x semantics):
    no cache (a full forward per beam), Python lists for beams and finished hypotheses."""
    size = num_beams // groups
    beams = [[(0.0 if j == 0 else -1e9, []) for j in range(size)] for _ in range(groups)]
    hyps, done = [[] for _ in range(groups)], [False] * groups

    def add(g, score, tokens):
        if len(hyps[g]) < size or score > min(s for s, _ in hyps[g]):
            hyps[g].append((score, tokens))
            if len(hyps[g]) > size:
                hyps[g].remove(min(hyps[g], key=lambda h: h[0]))

    for step in range(max_new):
        chosen = []  # tokens chosen at this step by the earlier groups
        for g in range(groups):
            if done[g]:
                chosen += [EOS] * size  # a finished group emits padding (pad = EOS here)
                continue
            rows = []
            for score, tokens in beams[g]:
                with torch.no_grad():
                    logits = model(torch.tensor([prompt + tokens])).logits[0, -1].float()
                logp = torch.log_softmax(logits, -1)
                logp[EOS] += bias
                logp -= penalty * torch.bincount(torch.tensor(chosen, dtype=torch.long), minlength=logp.shape[0])
                rows.append(logp + score)
            top, idx = torch.cat(rows).topk(2 * size)
            V = rows[0].shape[0]
            survivors = []
            for rank, (s, i) in enumerate(zip(top.tolist(), idx.tolist())):
                parent, token = beams[g][i // V], i % V
                if token == EOS:
                    if rank < size:
                        add(g, s / (step + 1) ** lp, parent[1] + [token])
                else:
                    survivors.append((s, parent[1] + [token]))
                if len(survivors) == size:
                    break
            beams[g] = survivors
            chosen += [tokens[-1] for _, tokens in survivors]
            length = max_new if (es == "never" and lp > 0) else step + 1
            worst = min(s for s, _ in hyps[g]) if hyps[g] else None
            done[g] = len(hyps[g]) == size and (es is True or worst >= top[0].item() / length ** lp)
        if all(done):
            break
    for g in range(groups):
        if not done[g]:
            for score, tokens in beams[g]:
                add(g, score / len(tokens) ** lp, tokens)
    best = sorted((h for group in hyps for h in group), key=lambda h: -h[0])[:n_return]
    return [tokens for _, tokens in best], [score for score, _ in best]


DIVERSE_SETTINGS = [  # (num_beams, num_beam_groups, diversity_penalty, length_penalty, early_stopping, n_return)
    (4, 2, 0.5, 1.0, False, 2), (6, 3, 1.0, 2.0, True, 3), (4, 4, 1.5, 0.5, "never", 4), (4, 2, 3.0, 1.0, False, 1),
    (4, 4, 1.0, 1.0, True, 2),
]


@pytest.mark.parametrize("nb,ng,dp,lp,es,nrs", DIVERSE_SETTINGS)
def test_diverse_beam_matches_reference_loop(sharp, nb, ng, dp, lp, es, nrs):
    tiny_hf, tiny_native = sharp
    prompts = [[5, 17, 33, 60, 8], [71, 9]]
    ids = torch.tensor([[PAD] * 3 + prompts[1], prompts[0]][::-1])
    mask = (torch.arange(5)[None] >= torch.tensor([0, 3])[:, None]).long()
    out = diverse_beam_search(tiny_native, ids, 8, num_beams=nb, num_beam_groups=ng, diversity_penalty=dp,
                              length_penalty=lp, early_stopping=es, num_return_sequences=nrs, attention_mask=mask,
                              eos_token_id=EOS, pad_token_id=EOS, logit_bias={EOS: 2.5}, return_dict=True)
    for b, prompt in enumerate(prompts):
        ref_tokens, ref_scores = reference_diverse_beam(tiny_hf, prompt, 8, nb, ng, dp, lp, es, nrs, 2.5)
        for j, (tokens, score) in enumerate(zip(ref_tokens, ref_scores)):
            row = b * nrs + j
            assert out.new_tokens[row, :out.lengths[row]].tolist() == tokens
            assert math.isclose(out.scores[row].item(), score, rel_tol=1e-5, abs_tol=1e-5)
    assert "eos" in out.finish_reason


@pytest.mark.parametrize("bias,lp,es", [(0.0, 1.0, False), (3.0, 1.0, False), (3.0, 2.0, True), (2.0, 0.5, "never")])
def test_one_group_is_beam_search(sharp, batch, bias, lp, es):
    tiny_native = sharp[1]
    ids, mask = batch
    kw = dict(num_beams=4, length_penalty=lp, early_stopping=es, num_return_sequences=3, attention_mask=mask,
              eos_token_id=EOS, logit_bias={EOS: bias} if bias else None, return_dict=True)
    div = diverse_beam_search(tiny_native, ids, 12, num_beam_groups=1, diversity_penalty=2.0, **kw)
    beam = beam_search(tiny_native, ids, 12, **kw)
    assert torch.equal(div.sequences, beam.sequences)
    torch.testing.assert_close(div.scores, beam.scores)


def test_groups_diversify_the_beams(smollm):
    model, tok = smollm
    ids = tok("The best way to learn a language is", return_tensors="pt").input_ids
    plain = beam_search(model, ids, 6, num_beams=4, num_return_sequences=4, return_dict=True)
    diverse = diverse_beam_search(model, ids, 6, num_beams=4, num_beam_groups=4, diversity_penalty=2.0,
                                  num_return_sequences=4, return_dict=True)

    def distinct_tokens(out):  # distinct (position, token) pairs among the 4 returned continuations
        return len({(i, t) for row in out.new_tokens.tolist() for i, t in enumerate(row)})

    assert not torch.equal(plain.sequences, diverse.sequences)
    assert distinct_tokens(diverse) > distinct_tokens(plain)
    assert sorted(diverse.info["group"]) == [0, 1, 2, 3]


# ---------------------------------------------------------------------------------------------------------
# Validation: every bad parameter fails at the call, naming the parameter
# ---------------------------------------------------------------------------------------------------------
BAD = [
    (beam_search, dict(num_beams=0), ValueError, "num_beams"),
    (beam_search, dict(num_beams=2.5), TypeError, "num_beams"),
    (beam_search, dict(num_beams="4"), TypeError, "num_beams"),
    (beam_search, dict(num_beams=3, num_return_sequences=4), ValueError, "num_return_sequences"),
    (beam_search, dict(num_return_sequences=0), ValueError, "num_return_sequences"),
    (beam_search, dict(length_penalty=float("nan")), ValueError, "length_penalty"),
    (beam_search, dict(length_penalty=float("inf")), ValueError, "length_penalty"),
    (beam_search, dict(early_stopping="sometimes"), ValueError, "early_stopping"),
    (beam_search, dict(early_stopping=1), ValueError, "early_stopping"),
    (beam_search, dict(do_sample="yes"), TypeError, "do_sample"),
    (beam_search, dict(temperature=0.7), ValueError, "temperature"),
    (beam_search, dict(top_p=0.9), ValueError, "top_p"),
    (beam_search, dict(seed=1), ValueError, "seed"),
    (beam_search, dict(do_sample=True, temperature=-1.0), ValueError, "temperature"),
    (beam_search, dict(do_sample=True, top_k=3), ValueError, "top_k"),
    (beam_search, dict(max_new_tokens=-1), ValueError, "max_new_tokens"),
    (beam_search, dict(repetition_penalty=0.0), ValueError, "repetition_penalty"),
    (diverse_beam_search, dict(num_beams=4, num_beam_groups=3), ValueError, "num_beam_groups"),
    (diverse_beam_search, dict(num_beams=4, num_beam_groups=0), ValueError, "num_beam_groups"),
    (diverse_beam_search, dict(num_beams=4, num_beam_groups=8), ValueError, "num_beam_groups"),
    (diverse_beam_search, dict(diversity_penalty=-0.5), ValueError, "diversity_penalty"),
    (diverse_beam_search, dict(diversity_penalty=float("nan")), ValueError, "diversity_penalty"),
    (diverse_beam_search, dict(num_beams=0), ValueError, "num_beams"),
    (diverse_beam_search, dict(length_penalty=float("nan")), ValueError, "length_penalty"),
    (diverse_beam_search, dict(early_stopping="maybe"), ValueError, "early_stopping"),
    (diverse_beam_search, dict(num_return_sequences=5), ValueError, "num_return_sequences"),
    (diverse_beam_search, dict(do_sample=True), ValueError, "do_sample"),
]


@pytest.mark.parametrize("fn,kw,exc,name", BAD, ids=[f"{f.__name__}-{n}-{i}" for i, (f, _, _, n) in enumerate(BAD)])
def test_bad_parameters_are_rejected(tiny_native, fn, kw, exc, name):
    kw = dict(kw)
    max_new = kw.pop("max_new_tokens", 4)
    with pytest.raises(exc, match=name):
        fn(tiny_native, torch.tensor([[5, 6, 7]]), max_new, **kw)


def test_apply_hamming_diversity_rejects_negative_penalty():
    with pytest.raises(ValueError, match="diversity_penalty"):
        apply_hamming_diversity(torch.zeros(2, 5), torch.zeros(1, 2, dtype=torch.long), -1.0, beams_per_row=2)
