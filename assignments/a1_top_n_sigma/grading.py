"""Assignment 1 (top-n-sigma): the teacher's extra checks (``python -m infergen.course grade a1 FILE``).

The expected values are computed here from the definition, in float64, independently of any solution.
"""
import torch

#: One row per rule of infergen.testing.check_processor.
CONFORMANCE = {"kind": "processor", "points": 0.2, "function": "apply_top_n_sigma", "params": {"n_sigma": 1.0}}


def _expected_kept(logits: torch.Tensor, n: float) -> torch.Tensor:
    rows = logits.double().reshape(-1, logits.shape[-1])
    out = []
    for row in rows:
        finite = row[torch.isfinite(row)]
        std = finite.std(correction=0) if finite.numel() else torch.tensor(0.0, dtype=torch.float64)
        out.append(row >= row.max() - n * std)
    return torch.stack(out).reshape(logits.shape)


def check_random_rows_match_definition(solution):
    g = torch.Generator().manual_seed(10)
    for n in (0.0, 0.5, 1.0, 2.0, 3.5):
        logits = torch.randn(8, 300, generator=g, dtype=torch.float64) * 3
        got = torch.isfinite(solution.apply_top_n_sigma(logits, n))
        want = _expected_kept(logits, n)
        assert torch.equal(got, want), f"n_sigma={n}: kept {int(got.sum())} tokens, expected {int(want.sum())}"


def check_removed_tokens_do_not_count(solution):
    """After top-k, most logits are -inf; the std must be over the finite ones (else NaN or nothing kept)."""
    logits = torch.randn(4, 100, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    logits[:, 20:] = float("-inf")
    got = solution.apply_top_n_sigma(logits, 1.0)
    assert not torch.isnan(got).any(), "NaN in the output: the std was taken over -inf entries"
    assert torch.equal(torch.isfinite(got), _expected_kept(logits, 1.0)), "std must use the finite logits only"


def check_per_row_tensor_parameter(solution):
    logits = torch.randn(4, 80, generator=torch.Generator().manual_seed(12))
    n = torch.tensor([0.0, 0.5, 1.0, 3.0])
    got = solution.apply_top_n_sigma(logits, n)
    for i in range(4):
        alone = solution.apply_top_n_sigma(logits[i], float(n[i]))
        assert torch.equal(got[i], alone), f"row {i}: the [B] tensor n_sigma differs from the scalar {float(n[i])}"


def check_half_precision(solution):
    """bfloat16 and float16 logits at the bundled model's vocabulary size (49152): the statistics must be
    computed in float32, as the specification says. Half-precision statistics shift the threshold enough to
    flip hundreds of tokens at this size (on a few hundred logits they would hardly show)."""
    g = torch.Generator().manual_seed(13)
    for dtype in (torch.bfloat16, torch.float16):
        logits = (torch.randn(4, 49152, generator=g) * 4).to(dtype)
        got = solution.apply_top_n_sigma(logits, 1.0)
        assert got.dtype == dtype, f"{dtype} logits gave {got.dtype}"
        exact = logits.double()
        want = _expected_kept(exact, 1.0)
        std = exact.std(-1, keepdim=True, correction=0)
        threshold = exact.amax(-1, keepdim=True) - std
        # a token within float32 rounding of the threshold may fall on either side
        ambiguous = (exact - threshold).abs() <= 1e-5 * (threshold.abs() + std)
        wrong = (torch.isfinite(got) != want) & ~ambiguous
        kept = int(want.sum())
        assert not wrong.any(), (
            f"{dtype} logits, 4 rows x 49152: {int(wrong.sum())} tokens kept or removed differently from the "
            f"rule computed exactly ({int(wrong.sum()) / kept:.1%} of the {kept} kept tokens): compute the mean "
            "and the standard deviation in float32, then compare in float32")


def check_registered_step_uses_its_parameter(solution):
    logits = torch.randn(3, 64, generator=torch.Generator().manual_seed(14))
    for n in (0.5, 2.0):
        got = solution.top_n_sigma_step(logits, None, n_sigma=n)
        assert torch.equal(got, solution.apply_top_n_sigma(logits, n)), f"top_n_sigma_step ignores n_sigma={n}"


def check_generation_with_the_processor(solution, tiny_model):
    """Sampling on a model with the processor in the pipeline: every sampled token was a kept token."""
    from infergen import LogitsPipeline, register_processor
    from infergen.decoding.sampling import decode_steps
    from infergen.testing import left_pad

    register_processor("a1_grading_top_n_sigma", solution.top_n_sigma_step, overwrite=True)
    pipe = LogitsPipeline.from_params(temperature=1.0).add_registered("a1_grading_top_n_sigma", n_sigma=0.5)
    ids, mask = left_pad([3, 6], seed=4)
    seen = []

    def spy(z, ctx):  # records what the step produced, to check the samples against it
        seen.append(torch.isfinite(z))
        return z

    pipe.add("spy", spy)
    gen = torch.Generator().manual_seed(0)
    tokens = [t for t, _ in decode_steps(tiny_model, ids, 6, pipe, attention_mask=mask, generator=gen)]
    assert len(tokens) == 6
    for step, (tok, kept) in enumerate(zip(tokens, seen)):
        assert kept.gather(-1, tok[:, None]).all(), f"step {step}: a removed token was sampled"
        assert (kept.sum(-1) < kept.shape[-1]).all(), f"step {step}: n_sigma=0.5 removed nothing"


# Points follow what the assignment teaches (the rule itself), not input validation or hygiene.
check_random_rows_match_definition.points = 5
check_removed_tokens_do_not_count.points = 2
check_per_row_tensor_parameter.points = 0.5
check_half_precision.points = 2
check_generation_with_the_processor.points = 2
check_registered_step_uses_its_parameter.points = 0.5
