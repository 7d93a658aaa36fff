"""CUDA-only checks (``make gpu-check``): every deterministic decoder gives on CUDA, in float32, the tokens
it gives on the CPU in float32; bfloat16 runs; the compiled decode step (``compile_decode``, CUDA graphs)
gives the eager tokens; the compiled step itself never synchronises with the host.

Without CUDA every test is skipped (the file is not part of ``make test``: run it with
``python -m pytest benchmarks/gpu/test_gpu.py``).
"""
from __future__ import annotations

import pytest
import torch

import infergen

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

PROMPTS = ["The future of AI is", "Once upon a time, in a small village by the sea,", "def fibonacci(n):"]
N = 24


@pytest.fixture(scope="module")
def models():
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 here
    torch.backends.cudnn.allow_tf32 = False
    cpu, tok = infergen.load_model("smollm2-135m", device="cpu", dtype=torch.float32)
    gpu, _ = infergen.load_model("smollm2-135m", device="cuda", dtype=torch.float32)
    return cpu, gpu, tok


def batch(tok, device):
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    return enc.input_ids.to(device), enc.attention_mask.to(device)


def decoders():
    from infergen.decoding.beam import beam_search
    from infergen.decoding.contrastive import contrastive_search
    from infergen.decoding.mcts import mcts_decode
    from infergen.decoding.sampling import greedy_search
    from infergen.decoding.speculative import speculative_decode

    return {
        "greedy": lambda m, ids, mask: greedy_search(m, ids, N, attention_mask=mask, eos_token_id=[]),
        "beam": lambda m, ids, mask: beam_search(m, ids, N, num_beams=4, attention_mask=mask, eos_token_id=[]),
        "contrastive": lambda m, ids, mask: contrastive_search(m, ids[:1], N, top_k=4, alpha=0.6, eos_token_id=[]),
        "speculative": lambda m, ids, mask: speculative_decode(m, ids[:1], N, draft_layers=20, num_draft_tokens=4,
                                                               eos_token_id=[]),
        "mcts": lambda m, ids, mask: mcts_decode(m, ids[:1], 4, num_simulations=16, top_k=5, eos_token_id=[]),
    }


@pytest.mark.parametrize("name", list(decoders()))
def test_cuda_float32_tokens_equal_cpu_float32(models, name):
    cpu, gpu, tok = models
    run = decoders()[name]
    on_cpu = run(cpu, *batch(tok, "cpu"))
    on_gpu = run(gpu, *batch(tok, "cuda"))
    assert torch.equal(on_cpu, on_gpu.cpu()), name


def test_cuda_batcher_tokens_equal_greedy(models):
    from infergen.bench.serving import compare_batching, mixed_workload

    _, gpu, _ = models
    res = compare_batching(gpu, mixed_workload(6, new_tokens=(4, 16)), batch_size=3)
    assert res["same_tokens"] is True


def test_bfloat16_runs_on_cuda(models):
    _, gpu, tok = models
    bf16, _ = infergen.load_model("smollm2-135m", device="cuda", dtype=torch.bfloat16)
    ids, mask = batch(tok, "cuda")
    out = infergen.greedy_search(bf16, ids, N, attention_mask=mask, eos_token_id=[], return_dict=True)
    ref = infergen.greedy_search(gpu, ids, N, attention_mask=mask, eos_token_id=[])
    assert torch.isfinite(out.logprobs).all()
    T = ids.shape[1]
    assert torch.equal(out.sequences[:, T], ref[:, T])  # the first token agrees with float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_decode_gives_the_eager_tokens(models, dtype):
    _, gpu, tok = models
    model = gpu if dtype is torch.float32 else infergen.load_model("smollm2-135m", device="cuda", dtype=dtype)[0]
    fast = infergen.compile_decode(model)  # inductor + CUDA graphs
    ids, mask = batch(tok, "cuda")
    eager = infergen.greedy_search(model, ids, N, attention_mask=mask, eos_token_id=[])
    for _ in range(2):  # the first call compiles, the second replays the graph
        assert torch.equal(infergen.greedy_search(fast, ids, N, attention_mask=mask, eos_token_id=[]), eager)
    sampled = [infergen.generate_autoregressive(m, ids, N, attention_mask=mask, eos_token_id=[], temperature=0.8,
                                                top_k=50, seed=0) for m in (model, fast)]
    assert torch.equal(*sampled)


def test_compiled_step_does_not_synchronise(models):
    _, gpu, tok = models
    fast = infergen.compile_decode(gpu)
    ids, mask = batch(tok, "cuda")
    infergen.greedy_search(fast, ids, 8, attention_mask=mask, eos_token_id=[])  # compile and capture
    cache = fast.new_cache(ids.shape[0], ids.shape[1] + 8)
    with torch.inference_mode():
        gpu(ids, cache, attention_mask=mask)
        token = torch.zeros(ids.shape[0], 1, dtype=torch.long, device="cuda")
        positions = cache.append_mask(None, 1)
        column = torch.tensor([cache.length - 1], device="cuda")
        step_mask = cache.mask.clone()[:, None, None, :]
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            fast.step(token, positions, column, step_mask, cache.k, cache.v)
        finally:
            torch.cuda.set_sync_debug_mode("default")
