"""Assignment 3 (stochastic beam search): the teacher's extra checks (``python -m infergen.course grade a3 FILE``)."""
import torch

from infergen.testing import left_pad

CONFORMANCE = {"kind": "decoder", "points": 0.1, "function": "stochastic_beam_search", "deterministic": False,
               "params": {"num_beams": 3}}


def _next_token_probs(model, ids, temperature):
    with torch.inference_mode():
        cache = model.new_cache(1, ids.shape[1] + 1)
        return torch.softmax(model(ids, cache).logits[0, -1].float() / temperature, -1)


def check_one_beam_is_ancestral_sampling(solution, tiny_model):
    """k = 1: the top of the Gumbel-perturbed tree is an exact sample. 400 identical prompts in one batch
    give 400 independent first tokens; their histogram must match softmax(logits / T)."""
    ids, _ = left_pad([5], seed=0)
    p = _next_token_probs(tiny_model, ids, 0.05)          # about 0.46 / 0.41 / 0.04 / 0.04 on this prompt
    n = 400
    out = solution.stochastic_beam_search(tiny_model, ids.repeat(n, 1), 1, num_beams=1, temperature=0.05, seed=3)
    counts = torch.bincount(out[:, -1], minlength=p.shape[0]).double() / n
    tv = float((counts - p.double()).abs().sum() / 2)
    assert tv < 0.1, f"first-token frequencies are {tv:.2f} away (total variation) from the model's distribution"


def check_beams_differ_from_sampling_with_replacement(solution, tiny_model):
    """On a peaked distribution plain sampling repeats itself; stochastic beam search never does."""
    import infergen as ig

    ids, mask = left_pad([4, 7, 5], seed=4)
    T = ids.shape[1]
    plain = ig.sample_with_temperature(tiny_model, ids.repeat_interleave(4, 0), 3, temperature=0.1, seed=0,
                                       attention_mask=mask.repeat_interleave(4, 0))
    dup = sum(len({tuple(r) for r in plain[4 * b:4 * b + 4, T:].tolist()}) < 4 for b in range(3))
    assert dup > 0, "the baseline should repeat itself here; the check would prove nothing"
    out = solution.stochastic_beam_search(tiny_model, ids, 3, num_beams=4, num_return_sequences=4,
                                          temperature=0.1, attention_mask=mask, seed=0)
    for b in range(3):
        assert len({tuple(r) for r in out[4 * b:4 * b + 4, T:].tolist()}) == 4, f"prompt {b}: duplicates"


def check_scores_are_sequence_logprobs(solution, tiny_model):
    ids, mask = left_pad([3, 6], seed=5)
    out = solution.stochastic_beam_search(tiny_model, ids, 5, num_beams=3, num_return_sequences=2, temperature=1.0,
                                          attention_mask=mask, seed=1, return_dict=True)
    assert out.scores is not None and out.scores.shape == (4,), "scores: one summed log-probability per sequence"
    for i, n in enumerate(out.lengths):
        assert abs(float(out.scores[i]) - float(out.logprobs[i, :n].sum())) < 1e-3, (
            f"sequence {i}: score {float(out.scores[i]):.4f} != sum of its log-probs {float(out.logprobs[i, :n].sum()):.4f}")


def check_rows_grouped_by_prompt(solution, tiny_model):
    """With num_return_sequences = r, prompt b owns output rows b*r .. b*r + r - 1 (as beam search)."""
    ids, mask = left_pad([2, 8], seed=6)
    out = solution.stochastic_beam_search(tiny_model, ids, 3, num_beams=3, num_return_sequences=3,
                                          attention_mask=mask, seed=2)
    T = ids.shape[1]
    for b in range(2):
        assert torch.equal(out[3 * b:3 * b + 3, :T], ids[b:b + 1].expand(3, T)), f"rows of prompt {b} misplaced"


def check_reproducible_and_seed_sensitive(solution, tiny_model):
    ids, mask = left_pad([4, 6], seed=7)
    kw = dict(num_beams=3, temperature=1.0, attention_mask=mask)
    a = solution.stochastic_beam_search(tiny_model, ids, 6, seed=11, **kw)
    b = solution.stochastic_beam_search(tiny_model, ids, 6, seed=11, **kw)
    c = [solution.stochastic_beam_search(tiny_model, ids, 6, seed=s, **kw) for s in (12, 13, 14)]
    assert torch.equal(a, b), "the same seed must give the same samples"
    assert any(not torch.equal(a, x) for x in c), "different seeds always gave the same output: is it sampling?"


# Points follow what the assignment teaches (the rule itself), not input validation or hygiene.
check_one_beam_is_ancestral_sampling.points = 4
check_scores_are_sequence_logprobs.points = 2
check_reproducible_and_seed_sensitive.points = 2
# Deterministic beam search passes these two as well (distinct rows, grouped by prompt): they weigh little.
check_beams_differ_from_sampling_with_replacement.points = 1
check_rows_grouped_by_prompt.points = 0.25
