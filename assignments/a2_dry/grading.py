"""Assignment 2 (DRY): the teacher's extra checks (``python -m infergen.course grade a2 FILE``).

The expected penalties come from a brute-force transcription of the definition (slow, obviously right).
"""
import torch

CONFORMANCE = {"kind": "processor", "points": 0.1, "function": "apply_dry", "history": True,
               "params": {"multiplier": 0.8, "base": 1.75, "allowed_length": 2, "sequence_breakers": (3,)}}


def brute_force_lengths(history, vocab, breakers=()):
    """``M[y]`` for every token ``y``: the longest repeat of the history's suffix that ``y`` would extend."""
    h = [t for t in history if t >= 0]
    T, M = len(h), [0] * vocab
    if T >= 2 and h[-1] not in breakers:
        for i in range(T - 1):
            m = 0
            while i - m >= 0 and h[i - m] == h[T - 1 - m] and h[i - m] not in breakers:
                m += 1
            if m and h[i + 1] < vocab:
                M[h[i + 1]] = max(M[h[i + 1]], m)
    return M


def brute_force(history, vocab, multiplier, base, allowed_length, breakers=()):
    M = brute_force_lengths(history, vocab, breakers)
    return torch.tensor([multiplier * base ** (m - allowed_length) if m >= allowed_length and m else 0.0
                         for m in M], dtype=torch.float64)


def _assert_penalties(got, history, vocab, multiplier, base, allowed_length, breakers=()):
    """``got``: the penalties ``[V]`` (how much each logit went down). On a mismatch, say which rule broke:
    the set of penalised tokens, or the size of a penalty (its exponent)."""
    M = brute_force_lengths(history, vocab, breakers)
    want = brute_force(history, vocab, multiplier, base, allowed_length, breakers)
    got = got.double()
    setting = (f"history {list(history)}, multiplier={multiplier}, base={base}, allowed_length={allowed_length}"
               + (f", sequence_breakers={list(breakers)}" if breakers else ""))
    got_set = [int(y) for y in torch.nonzero(got.abs() > 1e-12).flatten()]
    want_set = [int(y) for y in torch.nonzero(want).flatten()]
    if got_set != want_set:
        raise AssertionError(
            f"{setting}: penalised tokens {got_set}, expected {want_set}. The penalised token is the one that "
            "FOLLOWED an earlier occurrence of the history's current suffix (it would extend the repeat), "
            f"and only where that repeat has at least allowed_length tokens; match lengths M: "
            f"{ {y: M[y] for y in sorted(set(want_set) | set(got_set))} }")
    for y in want_set:
        if abs(float(got[y]) - float(want[y])) > 1e-9 * max(1.0, abs(float(want[y]))):
            raise AssertionError(
                f"{setting}: token {y} (match length M = {M[y]}) is penalised by {float(got[y]):.6g}, expected "
                f"multiplier * base ** (M - allowed_length) = {multiplier} * {base} ** ({M[y]} - {allowed_length})"
                f" = {float(want[y]):.6g}: check the size of the penalty (its exponent)")


def check_random_histories_match_definition(solution):
    g = torch.Generator().manual_seed(20)
    for trial in range(30):
        alphabet = 3 + trial % 5
        hist = torch.randint(0, alphabet, (int(torch.randint(2, 40, (1,), generator=g)),), generator=g)
        params = dict(multiplier=0.5 + trial % 3, base=1.25 + (trial % 4) / 4, allowed_length=1 + trial % 3,
                      sequence_breakers=(0,) if trial % 2 else ())
        logits = torch.randn(12, generator=g, dtype=torch.float64)
        got = logits - solution.apply_dry(logits, hist, **params)
        _assert_penalties(got, hist.tolist(), 12, params["multiplier"], params["base"], params["allowed_length"],
                          params["sequence_breakers"])


def check_overlapping_repeats(solution):
    """A run 'a a a a': the suffix (a, a, a) ends at i = 2 and is followed by a -> M[a] = 3."""
    logits = torch.zeros(8, dtype=torch.float64)
    got = -solution.apply_dry(logits, torch.tensor([4, 4, 4, 4]), multiplier=1.0, base=2.0, allowed_length=1)
    assert got[4] == 2.0 ** (3 - 1) and torch.count_nonzero(got) == 1, f"penalties {got.tolist()}"


def check_last_token_is_a_breaker(solution):
    logits = torch.zeros(8, dtype=torch.float64)
    got = solution.apply_dry(logits, torch.tensor([2, 3, 5, 2, 3]), multiplier=1.0, base=2.0, allowed_length=1,
                             sequence_breakers=[3])
    assert torch.equal(got, logits), "a history ending in a breaker extends no repeat: nothing is penalised"


def check_history_longer_than_allowed_range(solution):
    """Long, very repetitive histories must stay fast (vectorize over positions) and finite."""
    import time

    hist = torch.tensor([7, 8] * 600)
    logits = torch.zeros(2, 32)
    start = time.perf_counter()
    out = solution.apply_dry(logits, torch.stack([hist, hist.flip(0)]), multiplier=0.8, base=1.75, allowed_length=2)
    seconds = time.perf_counter() - start
    assert not torch.isnan(out).any() and (out == float("inf")).sum() == 0, "NaN or +inf for a long repeat"
    assert out[0, 7] < -1e6 or out[0, 7] == float("-inf"), "a 1199-token repeat must be penalised enormously"
    assert seconds < 20, f"{seconds:.1f} s for two histories of 1200 tokens: vectorize the matching"


def check_registered_step_sees_prompt_and_generated(solution):
    """dry_step on a context: DRY over prompt + generated ids. Its two rules are checked apart, so the
    message names the one that broke: the history it uses, then the penalties themselves."""
    from infergen.processors import LogitsContext

    prompt, generated = [5, 6, 7, 8], [5, 6, 7]
    params = dict(multiplier=1.0, base=2.0, allowed_length=2)
    ctx = LogitsContext(prompt_ids=torch.tensor([prompt]), generated_ids=torch.tensor([generated]))
    logits = torch.zeros(1, 16)
    got = -solution.dry_step(logits, ctx, **params)
    direct = -solution.apply_dry(logits, torch.tensor([prompt + generated]), **params)
    if not torch.equal(got, direct):
        only_generated = -solution.apply_dry(logits, torch.tensor([generated]), **params)
        hint = " (it used the generated ids only)" if torch.equal(got, only_generated) else ""
        raise AssertionError(f"dry_step must apply DRY to context.all_ids, prompt + generated{hint}: its "
                             f"penalties {got[0].tolist()} differ from apply_dry(logits, prompt + generated) "
                             f"{direct[0].tolist()}")
    _assert_penalties(got[0], prompt + generated, 16, **params)


def _rep4(row):
    grams = [tuple(row[i:i + 4]) for i in range(len(row) - 3)]
    return 1 - len(set(grams)) / len(grams)


def check_reduces_repetition_in_generation(solution, tiny_model):
    """Greedy decoding of the tiny model loops; with DRY in the pipeline, far fewer 4-grams repeat."""
    from infergen import LogitsPipeline, register_processor
    from infergen.decoding.sampling import decode_steps
    from infergen.testing import left_pad

    register_processor("a2_grading_dry", solution.dry_step, overwrite=True)
    ids, mask = left_pad([3, 5, 7, 4], seed=6)

    def run(pipe):
        cols = [t for t, _ in decode_steps(tiny_model, ids, 40, pipe, attention_mask=mask)]
        return torch.stack(cols, 1).tolist()

    plain = run(LogitsPipeline.from_params(temperature=0.0))
    # before="temperature": a penalty must act before temperature 0 keeps only the argmax
    dry = run(LogitsPipeline.from_params(temperature=0.0).add_registered(
        "a2_grading_dry", before="temperature", multiplier=2.0, base=1.75, allowed_length=2))
    before = sum(map(_rep4, plain)) / len(plain)
    after = sum(map(_rep4, dry)) / len(dry)
    assert before > 0.5, f"the baseline should repeat (rep-4 {before:.2f}); the check is not meaningful"
    assert after < 0.5 * before, f"rep-4 {before:.2f} without DRY, {after:.2f} with it: expected at least halved"
    return f"rep-4 {before:.2f} without DRY, {after:.2f} with it"


# Points follow what the assignment teaches (the rule itself), not input validation or hygiene.
check_random_histories_match_definition.points = 4
check_overlapping_repeats.points = 2
check_last_token_is_a_breaker.points = 0.5   # a processor that penalises nothing passes it too
check_reduces_repetition_in_generation.points = 2
