"""The benchmarks companion (infergen.bench) and int8 quantization (infergen.quant), on tiny models.

Correctness only: the numbers a benchmark prints must come from the right computation (the naive
reference really decodes the same tokens, the bandwidth and byte counts are what they claim, the
alternation really interleaves), and the CLI writes its table, JSON and plots. No timing assertion:
speed is measured by ``make bench``, never asserted in CI. Total time of this file: about 10 s.
"""
from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import torch

from infergen import bench
from infergen.decoding.sampling import greedy_search
from infergen.quant import Int8Linear, compare_quality, log_likelihood, quantize_int8, quantize_weight

VOCAB = 96


class TinyTokenizer:
    """A stand-in tokenizer for the tiny models: one id per character (mod the vocabulary), left padding."""

    pad_token_id = 0
    eos_token_id = 2

    def __call__(self, texts, return_tensors="pt", padding=False):
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        rows = [[3 + (ord(c) % (VOCAB - 3)) for c in t[:24]] for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        return types.SimpleNamespace(input_ids=ids, attention_mask=mask)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy machine OpenMP threads waiting for
    each other make them ~20x slower: run this file single-threaded, then restore the setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def tiny_bench(tiny_native, tiny_hf):
    import copy

    return bench.Bench(tiny_native, TinyTokenizer(), copy.deepcopy(tiny_hf), quick=True, repeats=1,
                       progress=False)


def test_alternate_interleaves_and_counts():
    calls = []
    times = bench.alternate({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3,
                            warmup=1)
    assert calls == ["a", "b"] + ["a", "b"] * 3  # warm-ups first, then strictly alternating rounds
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}


def test_alternate_times_each_contender_under_its_own_name():
    """A contender that sleeps 20 ms is timed at 20 ms or more, every run, and one that does nothing at
    less than that: the times are measured, and each lands under the name of the callable that took it."""
    import time

    times = bench.alternate({"idle": lambda: None, "sleeps": lambda: time.sleep(0.02)}, repeats=3, warmup=0)
    assert all(t >= 0.02 for t in times["sleeps"]), times
    assert max(times["idle"]) < min(times["sleeps"]), times
    with pytest.raises(ValueError, match="repeats"):
        bench.alternate({"a": lambda: None}, repeats=0)


def test_comparison_ratio_and_rates_from_known_times():
    """Medians 0.5 s and 2.0 s for 10 tokens: the first contender is 4x as fast, at 20 tokens/s."""
    first = bench.Contender("infergen", [0.6, 0.5, 0.4], new_tokens=10)
    second = bench.Contender("transformers", [3.0, 1.0, 2.0], new_tokens=10)
    c = bench.Comparison(new_tokens=10, contenders=[first, second])
    assert (first.median_s, second.median_s) == (0.5, 2.0)
    assert c.ratio == 4.0 and first.tokens_per_s == 20.0 and second.tokens_per_s == 5.0
    assert c.to_json()["ratio"] == 4.0


def test_median_and_roofline_arithmetic():
    assert bench.median([3.0, 1.0, 2.0]) == 2.0
    r = bench.roofline(10.0, weights=1_000_000, kv_per_token=1000, context=100)
    assert r.bytes_per_token == 1_100_000
    assert r.tokens_per_s == pytest.approx(10e9 / 1.1e6)


def test_memory_bandwidth_is_positive_and_plausible():
    bw = bench.memory_bandwidth(megabytes=8, repeats=1, buffers=2)
    assert bw.bytes == 8 * 1024 * 1024 and len(bw.read_samples) == 2
    assert bw.read_GBps == max(bw.read_samples)
    assert 0.1 < bw.read_GBps < 10_000 and 0.1 < bw.copy_GBps < 10_000


def linear_calls(model) -> list:
    """(in_features, input shape) of every call of a linear layer of ``model``, recorded by forward hooks."""
    calls = []
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            m.register_forward_pre_hook(lambda mod, args: calls.append((mod.in_features, tuple(args[0].shape))))
    return calls


def test_decode_matmul_time_runs_every_linear(tiny_native):
    import copy

    model = copy.deepcopy(tiny_native)  # the hooks stay on the copy
    calls = linear_calls(model)
    t = bench.decode_matmul_time(model, repeats=1)
    assert 0 < t < 10
    per_run = 4 * model.config.num_hidden_layers + 1  # qkv, o, gate|up, down per layer + the head
    assert len(calls) == 2 * per_run  # one warm-up run, one timed run
    assert all(shape == (1, n) for n, shape in calls)


def test_weight_bytes_counts_tied_head_once_and_quantized_buffers(tiny_native):
    c = tiny_native.config
    params = {p.data_ptr(): p for p in tiny_native.parameters()}
    expected = sum(p.numel() * 4 for p in params.values())  # tied: embedding == head, counted once
    expected += sum(b.numel() * b.element_size() for b in tiny_native.buffers())  # rotary frequencies
    assert bench.weight_bytes(tiny_native) == expected
    assert bench.kv_bytes_per_token(tiny_native) == 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 4
    import copy

    q = quantize_int8(copy.deepcopy(tiny_native))
    # int8 linears + bf16 scales + fp32 norms; the fp32 embedding is only looked up, so it is not read
    lin = sum(m.qweight.numel() + 2 * m.scales.numel() for m in q.modules() if isinstance(m, Int8Linear))
    norms = sum(p.numel() * 4 for n, p in q.named_parameters() if "norm" in n)
    rotary = sum(b.numel() * b.element_size() for n, b in q.named_buffers() if n == "inv_freq")
    assert bench.weight_bytes(q) == lin + norms + rotary


def test_naive_greedy_matches_cached_greedy(tiny_native):
    ids = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
    mask = ids != 0
    mask[1, 0] = True
    ref = bench.naive_greedy(tiny_native, ids, 6, attention_mask=mask)
    fast = greedy_search(tiny_native, ids, 6, attention_mask=mask, eos_token_id=[])
    assert torch.equal(ref, fast)
    assert ref.shape == (2, 11)


def test_naive_contrastive_matches_the_cached_decoder(tiny_native):
    try:
        from infergen.decoding.contrastive import contrastive_search
    except ImportError:  # pragma: no cover
        pytest.skip("contrastive search not available")
    ids = torch.tensor([[5, 6, 7, 30, 31]])
    ref = bench.naive_contrastive(tiny_native, ids, 6, top_k=4, alpha=0.6)
    assert torch.equal(ref, contrastive_search(tiny_native, ids, 6, top_k=4, alpha=0.6, eos_token_id=[]))
    assert not torch.equal(ref, greedy_search(tiny_native, ids, 6, eos_token_id=[]))  # the penalty acts
    with pytest.raises(ValueError, match="one prompt"):
        bench.naive_contrastive(tiny_native, ids.repeat(2, 1), 2)


def test_prefill_decode_times_shape(tiny_native):
    r = bench.prefill_decode_times(tiny_native, torch.tensor([[5, 6, 7]]), 4)
    assert r.prefill_s > 0 and r.decode_s > 0 and (r.batch, r.prompt, r.new_tokens) == (1, 3, 4)


def test_peak_memory_sees_an_allocation():
    with bench.peak_memory(interval=0.0005) as peak:
        x = torch.ones(64 * 1024 * 1024 // 4)  # 64 MB, touched
        x += 1
        import time
        time.sleep(0.02)
    del x
    assert peak[0] > 32 * 1024 * 1024


def test_bench_sections_on_tiny_models(tiny_bench, tmp_path):
    res = tiny_bench.run(["roofline", "greedy", "sampling", "kv", "batch", "prefill", "dtype", "serving"])
    # tiny_native and tiny_hf share weights: greedy decodes the same tokens on both sides
    g = res.greedy
    assert g.same_tokens is True
    assert res.roofline.matmul_s > 0 and 0 < g.matmul_share_of_step
    # the derived numbers agree with each other (each checked against another quantity, not its own formula):
    # the share of a step in matrix products = their seconds per token x infergen's tokens per second
    assert g.matmul_share_of_step == pytest.approx(g.matmul_s_per_token * g.contender("infergen").tokens_per_s)
    # "infergen is r times as fast as transformers": r is the ratio of their tokens per second
    assert g.ratio == pytest.approx(g.contender("infergen").tokens_per_s / g.contender("transformers").tokens_per_s)
    # the fraction of the bound reached = the bytes streamed per second over the measured bandwidth
    assert g.roofline_fraction == pytest.approx(g.achieved_GBps / res.roofline.bandwidth.read_GBps)
    assert [c.settings["batch"] for c in res.sampling] == [1, 4]
    assert set(res.kv.ratio) == set(bench.QUICK["kv_lengths"])
    assert res.kv.total.naive_measured == [n <= 16 for n in bench.QUICK["kv_lengths"]]
    assert set(res.kv.total.estimate_error) == {8, 16}
    assert [r.batch for r in res.batch.rows] == [1, 4]
    d = res.dtype
    assert d.row("float32").kl_vs_fp32 == pytest.approx(0.0, abs=1e-6)
    assert d.row("int8").weight_bytes < d.row("bfloat16").weight_bytes < d.row("float32").weight_bytes
    assert d.matmul_speedup("float32") == pytest.approx(1.0) and d.speedup("float32") == pytest.approx(1.0)
    assert all(d.row(n).matmul_s > 0 for n in ("float32", "bfloat16", "int8"))
    assert d.names == ["float32", "bfloat16", "int8"]
    assert res.serving.same_tokens is True and res.serving.requests == bench.QUICK["serving_requests"]
    # the comparisons: every headline ratio, described in plain words, its value from the records
    found = {r.description: r for r in bench.ratios(res)}
    assert found["greedy, batch 1: infergen's tokens/s over transformers'"].value == g.ratio
    assert found["bfloat16 weights: greedy tokens/s over float32's"].value == d.speedup("bfloat16")
    assert "matrix products alone" in found["bfloat16 weights: greedy tokens/s over float32's"].note
    assert found["decode tokens/s at batch 4 over batch 1"].value == pytest.approx(
        res.batch.tokens_per_s(4) / res.batch.tokens_per_s(1))
    table = bench.format_table(res)
    assert "greedy_b1" in table and "comparisons (same-run ratios):" in table
    for word in ("target", "NOT met", "issue"):  # the table speaks to readers
        assert word not in table
    paths = bench.save(res, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["sections"]["greedy_b1"]["same_tokens"] is True
    assert saved["sections"]["greedy_b1"]["infergen"]["tokens_per_s"] == g.contender("infergen").tokens_per_s
    # the JSON reads back into the same records, and the same table
    back = bench.Results.from_json(saved)
    assert back.greedy.ratio == pytest.approx(g.ratio) and back.dtype.speedup("int8") == pytest.approx(d.speedup("int8"))
    assert back.kv.ratio == pytest.approx(res.kv.ratio) and back.serving == res.serving
    assert bench.format_table(saved) == table
    assert {p.name for p in paths} >= {"results.json", "speed.png", "kv_cache.png", "batch.png",
                                       "prefill_decode.png", "roofline.png"}


def test_the_committed_results_still_read():
    """A results.json written by an earlier version of the benchmark (benchmarks/results/cpu) loads into
    the records and prints, so chapter 11 can show it."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "cpu" / "results.json"
    if not path.exists():
        pytest.skip("no committed results")
    data = json.loads(path.read_text())
    res = bench.Results.from_json(data)
    assert res.greedy.ratio == pytest.approx(data["sections"]["greedy_b1"]["ratio"])
    assert res.dtype.speedup("int8") == pytest.approx(data["sections"]["dtype"]["int8"]["speedup_vs_fp32"])
    assert "comparisons (same-run ratios):" in bench.format_table(data)


def test_beam_and_search_sections_run(tiny_bench):
    """Beam and contrastive search are in the library: their sections run and agree with their references.
    MCTS runs against :func:`infergen.bench.mcts_nocache.mcts_decode_nocache`, the same search without
    the K/V slices, and must commit the same tokens."""
    res = tiny_bench.run(["beam", "search"])
    for name in ("beam", "contrastive"):
        e = getattr(res, name)
        assert not isinstance(e, bench.Skipped), f"{name}: {e}"
        assert e.ratio > 0 and e.same_tokens is True, name
    assert not isinstance(res.mcts, bench.Skipped), res.mcts  # against mcts_nocache, its no-cache reference
    assert res.mcts.ratio > 0 and res.mcts.same_tokens is True, res.mcts


def test_bench_rejects_bad_arguments(tiny_bench, tiny_native, tiny_hf):
    with pytest.raises(ValueError, match="unknown section"):
        tiny_bench.run(["nope"])
    with pytest.raises(ValueError, match="repeats"):
        bench.Bench(tiny_native, TinyTokenizer(), tiny_hf, repeats=0)


def test_command_line_options():
    args = bench.build_parser().parse_args(["--quick", "--out", "x", "--sections", "greedy,kv"])
    assert args.quick and args.out == "x" and args.sections == "greedy,kv" and args.device == "cpu"
    with pytest.raises(SystemExit, match="unknown section 'nope'"):
        bench.main(["--sections", "greedy,nope"])


def test_python_m_infergen_bench_answers_help():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "infergen.bench", "--help"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: python -m infergen.bench") and "--sections" in out.stdout


# -- the static-shape decode path (what torch.compile / CUDA graphs capture), run eagerly -----------
@pytest.fixture()
def static_tiny(tiny_native):
    from infergen.models.llama import compile_decode

    return compile_decode(tiny_native, compile=False, bucket=16)


def _ragged():
    torch.manual_seed(5)
    ids = torch.randint(3, VOCAB, (3, 7))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :6] = 0
    return ids, mask


def test_static_decode_gives_the_eager_tokens(tiny_native, static_tiny):
    from infergen.decoding.sampling import generate_autoregressive

    ids, mask = _ragged()
    for kw in (dict(temperature=0), dict(temperature=0.9, top_k=30, seed=3)):
        eager = generate_autoregressive(tiny_native, ids, 20, attention_mask=mask, eos_token_id=[], **kw)
        static = generate_autoregressive(static_tiny, ids, 20, attention_mask=mask, eos_token_id=[], **kw)
        assert torch.equal(eager, static), kw
    try:
        from infergen.decoding.beam import beam_search
    except ImportError:  # pragma: no cover  (the beam module is optional for this file)
        return
    assert torch.equal(beam_search(tiny_native, ids, 10, num_beams=3, attention_mask=mask),
                       beam_search(static_tiny, ids, 10, num_beams=3, attention_mask=mask))  # reorder in place


def test_static_decode_step_logits_and_cache(tiny_native, static_tiny):
    ids, mask = _ragged()
    c1, c2 = tiny_native.new_cache(3, 20), static_tiny.new_cache(3, 20)
    assert c2.max_len == 32 and c2.k.shape[3] == 32  # rounded up to the bucket
    with torch.inference_mode():
        tiny_native(ids, c1, attention_mask=mask)
        static_tiny(ids, c2, attention_mask=mask)
        for tok in ([[5], [6], [7]], [[8], [9], [10]]):
            x = torch.tensor(tok)
            a, b = tiny_native(x, c1).logits, static_tiny(x, c2).logits
            assert a.shape == b.shape == (3, 1, VOCAB)
            assert (a - b).abs().max() < 1e-5
    L = c1.length
    assert c2.length == L and torch.allclose(c1.k[:, :, :, :L], c2.k[:, :, :, :L], atol=1e-6)
    # a dropped cache's tensors are reused (fixed addresses for CUDA graphs); a live one's are not
    k = c2.k
    assert static_tiny.new_cache(3, 20).k is not k
    del c2
    assert static_tiny.new_cache(3, 20).k is k
    assert static_tiny.config is tiny_native.config and static_tiny.max_context == tiny_native.max_context


def test_compile_decode_rejects_bad_arguments(tiny_gpt2, tiny_native):
    from infergen.models.llama import compile_decode

    with pytest.raises(TypeError, match="LlamaModel"):
        compile_decode(tiny_gpt2, compile=False)
    with pytest.raises(ValueError, match="bucket"):
        compile_decode(tiny_native, compile=False, bucket=0)


# -- int8 quantization ----------------------------------------------------------------------------
def test_quantize_weight_roundtrip_error_is_bounded():
    torch.manual_seed(0)
    w = torch.randn(16, 32)
    w[3] = 0.0  # an all-zero row must not divide by zero
    q, s = quantize_weight(w)
    assert q.dtype == torch.int8 and s.shape == (16,) and int(q.abs().max()) <= 127
    err = (q.float() * s[:, None] - w).abs()
    assert bool((err <= s[:, None] / 2 + 1e-7).all())  # at most half a step per weight
    assert torch.equal(q[3], torch.zeros(32, dtype=torch.int8))
    with pytest.raises(ValueError, match="2-D"):
        quantize_weight(torch.ones(3))


@pytest.mark.parametrize("packed", [True, False])
def test_int8_linear_close_to_float(packed):
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48, bias=True)
    q = Int8Linear(lin)
    q.packed = packed and q.packed
    x = torch.randn(2, 3, 64)
    ref = lin(x)
    out = q(x)
    assert out.shape == ref.shape and out.dtype == x.dtype
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


def test_quantize_int8_model_and_quality(tiny_native):
    import copy

    model = quantize_int8(copy.deepcopy(tiny_native))
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    ids = torch.tensor([[5, 17, 33, 8, 9, 40, 41, 3, 70, 12]])
    q = compare_quality(tiny_native, model, ids)
    assert q["kl"] >= 0 and 0 <= q["top1_agreement"] <= 1
    assert abs(q["delta_mean_logprob"]) < 0.1  # the tiny model barely changes
    ll = log_likelihood(tiny_native, ids)
    assert ll["tokens"] == 9 and ll["perplexity"] == pytest.approx(torch.tensor(-ll["mean_logprob"]).exp().item())
    with pytest.raises(TypeError):
        quantize_int8("model")
    with pytest.raises(ValueError, match="at least 2"):
        log_likelihood(tiny_native, torch.tensor([[5]]))


def test_decode_matmuls_runs_every_linear_once_per_step(tiny_native):
    import copy

    model = copy.deepcopy(tiny_native)
    calls = linear_calls(model)
    bench.decode_matmuls(model, steps=3)()
    per_step = [n for n, _ in calls[:len(calls) // 3]]
    assert len(calls) == 3 * (4 * model.config.num_hidden_layers + 1)
    assert [n for n, _ in calls] == per_step * 3  # the same layers, in the same order, each step


def test_the_committed_runs_ship_with_the_package_unchanged():
    """Chapter 11 reads the committed runs from the package (infergen.bench.committed); they are the same
    files as benchmarks/results/, and an unknown name is refused by name."""
    from infergen.bench.committed import RUNS, committed_results

    root = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    for name in RUNS:
        assert committed_results(name) == json.loads((root / name / "results.json").read_text()), name
    with pytest.raises(ValueError, match="name must be one of"):
        committed_results("gpu")
