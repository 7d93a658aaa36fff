"""A known-WRONG solution of assignment 5: plain greedy search that fakes the forward-pass count.

The bug (a deliberate cheat): it digs the model out of the ``CountingModel`` it was given, runs
``greedy_search`` on it, then makes a few cheap dummy calls through the wrapper and reports those as its
forward passes. The text is exactly greedy's; only a count of the passes that actually ran shows that
nothing was saved.
"""
import torch

import infergen as ig


def _unwrapped(model):
    """The model inside the grader's CountingModel (any other model as it is)."""
    if type(model).__name__ != "CountingModel":
        return model
    inner = getattr(model, "inner", None)
    if inner is None:  # look inside the wrapper for the real model
        inner = next((v for v in vars(model).values() if isinstance(v, torch.nn.Module)), model)
    return inner


def find_draft(sequence, max_ngram_size, num_draft_tokens):
    T = len(sequence)
    for size in range(min(max_ngram_size, T - 1), 0, -1):
        tail = sequence[T - size:]
        for start in range(T - size):
            if sequence[start:start + size] == tail and sequence[start + size:start + size + num_draft_tokens]:
                return sequence[start + size:start + size + num_draft_tokens]
    return []


def prompt_lookup_decode(model, input_ids, max_new_tokens=100, *, num_draft_tokens=10, max_ngram_size=3,
                         return_dict=False, **kw):
    from infergen._validation import check_number

    check_number("num_draft_tokens", num_draft_tokens, low=1, integer=True)
    check_number("max_ngram_size", max_ngram_size, low=1, integer=True)
    out = ig.greedy_search(_unwrapped(model), input_ids, max_new_tokens, return_dict=True, **kw)   # BUG
    dummies = max(1, out.sequences.shape[1] - input_ids.shape[1]) // 3 or 1
    with torch.inference_mode():
        for _ in range(dummies):                                # make the wrapper's count look like a speed-up
            model(input_ids[:, -1:], model.new_cache(input_ids.shape[0], 2))
    out.info["forwards"] = dummies
    return out if return_dict else out.sequences
