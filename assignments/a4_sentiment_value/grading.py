"""Assignment 4 (sentiment value for MCTS): the teacher's extra checks (``python -m infergen.course grade a4 FILE``)."""
import math

import torch

from infergen.testing import left_pad, value_contexts

POS, NEG = list(range(10, 22)), list(range(22, 34))   # token-id lexicons on the tiny model (vocabulary 96)


def _make_value(solution):
    return solution.sentiment_value(POS, NEG, weight=0.8)


#: infergen.testing's value-function rules, on the value function the submission builds. ``factory``
#: turns the submitted ``sentiment_value`` into the callable to check.
CONFORMANCE = {"kind": "value", "points": 0.25, "function": "sentiment_value", "factory": _make_value, "params": {}}


def _expected(ctx, weight):
    new = ctx.new_ids.tolist()
    p, n = sum(t in POS for t in new), sum(t in NEG for t in new)
    fluency = 1.0 if ctx.logprobs.numel() == 0 else math.exp(float(ctx.logprobs.mean()))
    return (1 - weight) * fluency + weight * (1 + (p - n) / (p + n + 1)) / 2


def check_formula_on_varied_contexts(solution):
    for weight in (0.0, 0.25, 1.0):
        value = solution.sentiment_value(POS, NEG, weight=weight)
        for i, ctx in enumerate(value_contexts()):
            got, want = float(value(ctx)), _expected(ctx, weight)
            assert abs(got - want) < 1e-6, f"weight={weight}, context {i}: value {got:.6f}, expected {want:.6f}"


def check_rollout_tokens_count(solution):
    """The continuation includes the greedy rollout: its words and log-probabilities count too."""
    ctx = [c for c in value_contexts() if c.rollout_length][0]
    value = solution.sentiment_value(POS, NEG, weight=0.6)
    assert abs(float(value(ctx)) - _expected(ctx, 0.6)) < 1e-6


def _reward(row):
    p, n = sum(t in POS for t in row), sum(t in NEG for t in row)
    return (1 + (p - n) / (p + n + 1)) / 2


def check_mcts_beats_sampling(solution, tiny_model):
    """The measured improvement: mean reward of MCTS with the value function vs plain sampling, on 4
    prompts x 10 tokens (sampling averaged over 4 seeds). Required: at least +0.1."""
    import infergen as ig
    from infergen.decoding.mcts import mcts_decode

    lengths = [3, 5, 8, 6]
    ids, mask = left_pad(lengths, seed=0)
    T = ids.shape[1]
    value = _make_value(solution)
    searched = []
    for i, L in enumerate(lengths):
        out = mcts_decode(tiny_model, ids[i:i + 1, T - L:], 10, num_simulations=16, top_k=20, c_puct=3.0, seed=0,
                          value_fn=value)
        searched.append(_reward(out[0, L:].tolist()))
    sampled = []
    for seed in range(4):
        out = ig.sample_with_temperature(tiny_model, ids, 10, attention_mask=mask, seed=seed)
        sampled += [_reward(r) for r in out[:, T:].tolist()]
    mcts, base = sum(searched) / len(searched), sum(sampled) / len(sampled)
    assert mcts >= base + 0.1, f"mean reward {mcts:.3f} with MCTS vs {base:.3f} with sampling: expected +0.1"
    return f"mean reward {mcts:.3f} with MCTS vs {base:.3f} with sampling"


check_mcts_beats_sampling.points = 2


# Points follow what the assignment teaches (the rule itself), not input validation or hygiene.
check_formula_on_varied_contexts.points = 4
