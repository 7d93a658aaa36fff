"""One test per bug of the user-style probe run: each failed before its fix and passes now.

The bugs: weights dropped by ``from_hf`` (1), sliding windows ignored (2), ``logit_bias`` lost by the
greedy continuous batcher (3), one-beam beam sampling that was not sampling (4), one seed for a whole
static batch (5), right padding taken silently (6), stream and final text disagreeing (7, 8), unchecked
``pad_token_id`` (9), errors that did not name the argument (10), cache operations found missing only
deep inside a decoder (11).
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import infergen
from infergen.models.llama import LlamaModel
from infergen.bench.serving import static_batching
from infergen.serving import ContinuousBatcher, Request

VOCAB = 96


def _llama(**overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
               tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    cfg.update(overrides)
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**cfg)).eval()


def _mistral(vocab=VOCAB, window=4):
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                        sliding_window=window, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                        pad_token_id=0)
    return MistralForCausalLM(cfg).eval()


def _all_logits(model, ids):
    cache = model.new_cache(ids.shape[0], ids.shape[1])
    with torch.inference_mode():
        return model(ids, cache, logits="all").logits


# -- 1. every weight of the source model is loaded, or the conversion refuses ---------------------------
@pytest.mark.parametrize("flag", ["attention_bias", "mlp_bias"])
def test_from_hf_loads_every_bias(flag):
    hf = _llama(**{flag: True})
    with torch.no_grad():
        biases = [p for n, p in hf.named_parameters() if n.endswith(".bias")]
        assert biases
        for p in biases:
            p.normal_(0, 0.5)  # transformers initialises biases to 0: make them matter
    native = LlamaModel.from_hf(hf)
    ids = torch.randint(3, VOCAB, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = hf(input_ids=ids).logits
    assert (_all_logits(native, ids) - ref).abs().max() <= 1e-4


def test_from_hf_refuses_a_weight_it_does_not_know():
    hf = _llama()
    hf.model.layers[1].self_attn.register_parameter("extra_scale", nn.Parameter(torch.ones(4)))
    with pytest.raises(ValueError, match=r"layers\.1\.self_attn\.extra_scale"):
        LlamaModel.from_hf(hf)


# -- 2. sliding-window configs are not run by the full-attention native model ---------------------------
def test_sliding_window_model_from_a_directory_matches_transformers(tmp_path):
    from infergen.models.loading import cache_dir, load_tokenizer

    tok = load_tokenizer(cache_dir() / "smollm2-135m")
    hf = _mistral(vocab=len(tok), window=4)
    hf.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model, _ = infergen.load_model(str(tmp_path), device="cpu")
    ids = torch.randint(3, len(tok), (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = hf(input_ids=ids).logits
    ours = _all_logits(model, ids)
    assert (ours - ref).abs().max() <= 1e-4  # positions 4..11 attend past the window
    # decoding beyond the window, token by token through the cache
    out = infergen.greedy_search(model, ids, 8, eos_token_id=[])
    with torch.inference_mode():
        want = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, min_new_tokens=8,
                           do_sample=False, pad_token_id=0)
    assert torch.equal(out, want)


def test_native_model_refuses_sliding_windows():
    from transformers import Qwen2Config

    with pytest.raises(ValueError, match="sliding"):
        LlamaModel.from_hf(_mistral())
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      use_sliding_window=True, sliding_window=8, max_window_layers=0)
    with pytest.raises(ValueError, match="sliding"):
        LlamaModel(cfg)


# -- 3. the greedy continuous batcher applies logit_bias -------------------------------------------------
def test_continuous_batcher_greedy_honours_logit_bias(tiny_native):
    bias = {7: 4.0, 11: -100.0}
    prompts = [[5, 17, 33], [40, 41, 42, 43, 44], [9]]
    reqs = [Request(prompt=p, max_new_tokens=6, id=i) for i, p in enumerate(prompts)]
    served = ContinuousBatcher(tiny_native, max_batch=2, eos_token_id=[], temperature=0,
                               logit_bias=bias).run(reqs)
    changed = False
    for r, p in zip(served, prompts):
        alone = infergen.greedy_search(tiny_native, torch.tensor([p]), 6, eos_token_id=[], logit_bias=bias)
        plain = infergen.greedy_search(tiny_native, torch.tensor([p]), 6, eos_token_id=[])
        assert r.tokens == alone[0, len(p):].tolist()
        changed |= alone.tolist() != plain.tolist()
    assert changed  # the bias matters for this workload


# -- 4. beam_search(num_beams=1, do_sample=True) is plain sampling ---------------------------------------
def test_one_beam_sampling_is_plain_sampling(tiny_native):
    ids = torch.tensor([[5, 17, 33, 8], [9, 9, 12, 40]])
    for seed in (0, 1, 2):
        a = infergen.beam_search(tiny_native, ids, 8, num_beams=1, do_sample=True, seed=seed, eos_token_id=[])
        b = infergen.sample_with_temperature(tiny_native, ids, 8, seed=seed, eos_token_id=[])
        assert torch.equal(a, b)


def test_one_beam_sampling_frequencies(tiny_native):
    # two tokens share nearly all the mass (the bias); sampling must choose each as often as p says
    bias = {5: 60.0, 6: 60.0}
    prompt = torch.tensor([[17, 33, 8]])
    logits = _all_logits(tiny_native, prompt)[0, -1].float()
    p5 = torch.softmax(logits + torch.zeros(VOCAB).index_put_((torch.tensor([5, 6]),), torch.tensor([60.0, 60.0])),
                       -1)[5].item()
    assert 0.2 < p5 < 0.8
    n = 3000
    out = infergen.beam_search(tiny_native, prompt.expand(n, 3).contiguous(), 1, num_beams=1, do_sample=True,
                               seed=0, eos_token_id=[], logit_bias=bias)
    first = out[:, -1]
    assert set(first.tolist()) <= {5, 6}
    freq = (first == 5).float().mean().item()
    assert abs(freq - p5) < 4 * math.sqrt(p5 * (1 - p5) / n), (freq, p5)


# -- 5. static batching gives every request its own seed -------------------------------------------------
def test_static_batching_honours_every_seed(tiny_native):
    prompts = [[5, 17, 33], [40, 41, 42, 43, 44], [9, 10], [60, 61, 62, 63]]
    reqs = [Request(prompt=p, max_new_tokens=6, seed=100 + i, id=i) for i, p in enumerate(prompts)]
    served = static_batching(tiny_native, reqs, batch_size=4, eos_token_id=[], temperature=1.0)
    for r, p in zip(served, prompts):
        alone = infergen.sample_with_temperature(tiny_native, torch.tensor([p]), 6, temperature=1.0, seed=r.seed,
                                                 eos_token_id=[])
        assert r.tokens == alone[0, len(p):].tolist(), r.id


# -- 6. right padding is refused, saying to left-pad -----------------------------------------------------
@pytest.mark.parametrize("decoder", ["greedy_search", "beam_search", "contrastive_search"])
def test_right_padding_is_refused(tiny_native, decoder):
    ids = torch.tensor([[5, 17, 33, 0], [9, 12, 40, 41]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    with pytest.raises(ValueError, match="left"):
        getattr(infergen, decoder)(tiny_native, ids, 3, attention_mask=mask)


# -- 7, 8. the stream never shows text the final result lacks --------------------------------------------
def test_stream_cuts_at_stop_strings(smollm):
    model, tok = smollm
    prompt = "The capital of France is"
    full = infergen.generate(model, tok, prompt, strategy="greedy", max_new_tokens=16).text
    words = full.split()
    assert len(words) > 3
    # a stop string inside the text (it may begin or end inside a token)
    stop = words[2][1:] + " " + words[3][:2] if len(words[2]) > 1 else words[3]
    want = infergen.generate(model, tok, prompt, strategy="greedy", max_new_tokens=16, stop=stop).text
    pieces = list(infergen.stream(model, tok, prompt, strategy="greedy", max_new_tokens=16, stop=stop))
    assert stop not in "".join(pieces)
    assert "".join(pieces) == want
    for i in range(1, len(pieces) + 1):  # every prefix the reader saw is a prefix of the final text
        assert want.startswith("".join(pieces[:i]))


def test_stream_keeps_a_trailing_partial_character(smollm):
    model, tok = smollm
    prompt = "请用中文介绍一下北京的历史"
    for n in (3, 4, 5):
        want = infergen.generate(model, tok, prompt, strategy="greedy", max_new_tokens=n).text
        got = "".join(infergen.stream(model, tok, prompt, strategy="greedy", max_new_tokens=n))
        assert got == want, n


# -- 9. pad_token_id is a token id, checked by every decoder ---------------------------------------------
BAD_PAD = [-1, 2.7, True, "0", float("nan"), VOCAB, 10**30]
DECODERS = {
    "greedy_search": {},
    "sample_with_temperature": {"seed": 0},
    "beam_search": {"num_beams": 2},
    "diverse_beam_search": {"num_beams": 2, "num_beam_groups": 2},
    "contrastive_search": {"top_k": 3},
    "mcts_decode": {"num_simulations": 2},
    "speculative_decode": {"draft_layers": 1},
}


@pytest.mark.parametrize("name", list(DECODERS))
@pytest.mark.parametrize("pad", BAD_PAD, ids=repr)
def test_every_decoder_checks_pad_token_id(tiny_native, name, pad):
    ids = torch.tensor([[0, 5, 17], [9, 12, 40]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    with pytest.raises((TypeError, ValueError), match="pad_token_id"):
        getattr(infergen, name)(tiny_native, ids, 3, attention_mask=mask, pad_token_id=pad, **DECODERS[name])


@pytest.mark.parametrize("pad", BAD_PAD, ids=repr)
def test_continuous_batcher_checks_pad_token_id(tiny_native, pad):
    with pytest.raises((TypeError, ValueError), match="pad_token_id"):
        ContinuousBatcher(tiny_native, pad_token_id=pad).run([Request(prompt=[5, 6], max_new_tokens=2)])


# -- 10. errors name the argument ------------------------------------------------------------------------
def test_generate_without_a_tokenizer_names_it(tiny_native):
    with pytest.raises(TypeError, match="tokenizer"):
        infergen.generate(tiny_native, None, "hi")


def test_huge_seed_is_refused_naming_seed(tiny_native):
    with pytest.raises(ValueError, match="seed"):
        infergen.sample_with_temperature(tiny_native, torch.tensor([[5, 6]]), 2, seed=2**70)


@pytest.mark.parametrize("prompt", [[1.5, 2.7], ["a"], [True, 3]], ids=repr)
def test_request_prompt_must_be_token_ids(prompt):
    with pytest.raises((TypeError, ValueError), match="prompt"):
        Request(prompt=prompt)


def test_speculative_at_temperature_zero_refuses_sampling_settings_like_greedy(tiny_native):
    ids = torch.tensor([[5, 17, 33]])
    with pytest.raises(ValueError, match="top_k"):
        infergen.greedy_search(tiny_native, ids, 3, top_k=5, top_p=0.5)
    with pytest.raises(ValueError, match="top_k"):
        infergen.speculative_decode(tiny_native, ids, 3, draft_layers=1, temperature=0, top_k=5, top_p=0.5)


# -- 11. a cache that cannot do what the decoder needs is refused up front -------------------------------
def test_sliding_window_cache_is_refused_up_front():
    hf = _mistral(window=4)
    ids = torch.tensor([[5, 17, 33, 8, 9, 10]])
    with pytest.raises(ValueError, match="read_column"):
        infergen.mcts_decode(hf, ids, 3, num_simulations=2)
    with pytest.raises(ValueError, match="crop"):
        infergen.speculative_decode(hf, ids, 3, draft_model=hf)
    # what needs no such operation still runs
    assert infergen.greedy_search(hf, ids, 3).shape == (1, 9)
