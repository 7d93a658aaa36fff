"""infergen's decoders on llama.cpp (:class:`~infergen.interop.llamacpp.LlamaCppModel`).

The F32 GGUF is written from infergen's own float32 weights (benchmarks/peers/write_gguf.py), so greedy and
beam tokens must equal the native float32 model's. Skipped where llama-cpp-python is not installed (CI:
building it compiles llama.cpp, about 20 minutes on 2 cores; `make bench-peers` builds it).
"""
from __future__ import annotations

import gc
import importlib.util
from pathlib import Path

import pytest
import torch

pytest.importorskip("llama_cpp", reason='llama-cpp-python is not installed (pip install "infergen[llamacpp]")')
pytest.importorskip("gguf", reason="writing the GGUF files needs the gguf package")

from infergen import (beam_search, contrastive_search, greedy_search, mcts_decode, sample_with_temperature,  # noqa: E402
                      speculative_decode)
from infergen.cache import ColumnCache, CropCache, RowCache, require  # noqa: E402
from infergen.interop.llamacpp import LlamaCppModel  # noqa: E402
from infergen.models.loading import cache_dir  # noqa: E402
from infergen.serving import ContinuousBatcher, Request  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N = 32


def gguf_file(fmt: str) -> Path:
    """The bundled model's GGUF in ``fmt`` (F32 / Q8_0), written from infergen's weights once, in the cache."""
    path = cache_dir() / "gguf" / f"smollm2-135m-{fmt}.gguf"
    if not path.is_file():
        spec = importlib.util.spec_from_file_location("write_gguf", ROOT / "benchmarks" / "peers" / "write_gguf.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.main(["--formats", fmt, "--out", str(path.parent)])
    return path


@pytest.fixture(scope="module")
def lcpp(smollm):
    """The F32 GGUF on llama.cpp with float32 keys/values (the native model's precision throughout)."""
    return LlamaCppModel(gguf_file("F32"), n_ctx=1024, n_seq_max=16, kv_type="f32", n_threads=2)


@pytest.fixture(scope="module")
def batch(smollm, prompts):
    """Two prompts of different lengths, left-padded."""
    tok = smollm[1]
    tok.padding_side = "left"
    return tok(prompts[:2], return_tensors="pt", padding=True)


def test_the_cache_claims_only_what_llama_cpp_can_do(lcpp):
    cache = lcpp.new_cache(2, 64)
    assert require(cache, CropCache, "t") is cache and require(cache, RowCache, "t") is cache
    with pytest.raises(ValueError, match="llama.cpp keeps keys and values"):
        require(cache, ColumnCache, "mcts_decode")
    with pytest.raises(ValueError, match="n_seq_max=16"):
        lcpp.new_cache(17, 64)


def test_logits_equal_the_native_models(smollm, lcpp, batch):
    model = smollm[0]
    want = model(batch.input_ids, model.new_cache(2, 64), attention_mask=batch.attention_mask, logits="all").logits
    got = lcpp(batch.input_ids, lcpp.new_cache(2, 64), attention_mask=batch.attention_mask, logits="all").logits
    real = batch.attention_mask.bool()
    assert got.shape == want.shape and got.dtype == torch.float32
    # float32 throughout, but other matrix kernels: the logits (magnitude ~20) differ by a few hundredths
    assert (got[real] - want[real]).abs().max() < 0.1
    assert torch.equal(got[real].argmax(-1), want[real].argmax(-1))
    assert not got[~real].any()  # padding is never sent to llama.cpp: its logits stay zero


def test_greedy_tokens_equal_the_native_models(smollm, lcpp, batch):
    kw = dict(attention_mask=batch.attention_mask, eos_token_id=[])
    want = greedy_search(smollm[0], batch.input_ids, N, **kw)
    got = greedy_search(lcpp, batch.input_ids, N, **kw)
    assert torch.equal(got, want)


def test_beam_tokens_equal_the_native_models(smollm, lcpp, batch):
    kw = dict(num_beams=3, attention_mask=batch.attention_mask, return_dict=True)
    want = beam_search(smollm[0], batch.input_ids, N, **kw)
    got = beam_search(lcpp, batch.input_ids, N, **kw)
    assert torch.equal(got.sequences, want.sequences)
    torch.testing.assert_close(got.scores, want.scores, atol=1e-3, rtol=1e-3)
    gc.collect()
    assert sorted(lcpp.free) == list(range(16))  # every sequence id came back when its cache went


def test_sampling_with_a_seed_is_reproducible(lcpp, batch):
    kw = dict(attention_mask=batch.attention_mask, temperature=0.8, top_p=0.9, seed=3, eos_token_id=[])
    a = sample_with_temperature(lcpp, batch.input_ids, 16, **kw)
    b = sample_with_temperature(lcpp, batch.input_ids, 16, **kw)
    assert torch.equal(a, b) and a.shape == (2, batch.input_ids.shape[1] + 16)


def test_speculative_with_a_q8_draft_keeps_the_targets_greedy_tokens(lcpp, batch):
    draft = LlamaCppModel(gguf_file("Q8_0"), n_ctx=512, n_seq_max=4, n_threads=2)
    kw = dict(attention_mask=batch.attention_mask, eos_token_id=[])
    want = greedy_search(lcpp, batch.input_ids, N, **kw)
    out = speculative_decode(lcpp, batch.input_ids, N, draft_model=draft, num_draft_tokens=4, return_dict=True, **kw)
    assert torch.equal(out.sequences, want)
    assert 0 < sum(out.info["accepted"]) < sum(out.info["drafted"])  # some drafts were rejected: crops happened


def test_contrastive_tokens_equal_the_native_models(smollm, lcpp, batch):
    kw = dict(top_k=4, alpha=0.6, attention_mask=batch.attention_mask, eos_token_id=[])
    want = contrastive_search(smollm[0], batch.input_ids, 16, **kw)
    got = contrastive_search(lcpp, batch.input_ids, 16, **kw)
    assert torch.equal(got, want)


def test_mcts_is_refused_up_front_naming_llama_cpp(lcpp, batch):
    with pytest.raises(ValueError, match="mcts_decode .*ColumnCache.*llama.cpp keeps keys and values"):
        mcts_decode(lcpp, batch.input_ids[1:], 4, num_simulations=2)


def test_continuous_batching_equals_each_request_alone(lcpp, smollm, prompts):
    """The batcher's row operations (write_row, clear_row, compact) on llama.cpp sequences."""
    tok = smollm[1]
    reqs = [Request(prompt=tok(p).input_ids, max_new_tokens=m, id=i) for i, (p, m) in enumerate(zip(prompts, [6, 2, 9, 4]))]
    out = ContinuousBatcher(lcpp, max_batch=2, max_len=40, eos_token_id=[]).run(reqs)
    for r in out:
        alone = greedy_search(lcpp, torch.tensor([r.prompt]), r.max_new_tokens, eos_token_id=[])
        assert r.tokens == alone[0, len(r.prompt):].tolist(), r.id


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="GGUF file"):
        LlamaCppModel(tmp_path / "missing.gguf")
    with pytest.raises(ValueError, match="kv_type"):
        LlamaCppModel(gguf_file("F32"), kv_type="q4")
