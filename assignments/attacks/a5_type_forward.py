"""ATTACK (issue 18): plain greedy search through ``type(m).forward(m, ...)``, which skipped the old
forward-pass counter, reporting a third of the passes it ran."""
import torch

import infergen as ig


def find_draft(sequence, max_ngram_size, num_draft_tokens):
    T = len(sequence)
    for size in range(min(max_ngram_size, T - 1), 0, -1):
        tail = sequence[T - size:]
        for start in range(T - size):
            if sequence[start:start + size] == tail and sequence[start + size:start + size + num_draft_tokens]:
                return sequence[start + size:start + size + num_draft_tokens]
    return []


class _Uncounted:
    """Calls the model's class forward directly (no hooks, no wrapper)."""

    def __init__(self, m):
        self.m = m
        while hasattr(self.m, "_inner"):
            self.m = self.m._inner

    def __getattr__(self, name):
        return getattr(self.m, name)

    def __call__(self, *args, **kwargs):
        forward = getattr(type(self.m), "forward", None)   # the class's forward: no hooks, no wrapper
        if forward is None:                                # a proxy has none at class level: go around it
            return self.m.forward(*args, **kwargs)
        return forward(self.m, *args, **kwargs)


def prompt_lookup_decode(model, input_ids, max_new_tokens=100, *, num_draft_tokens=10, max_ngram_size=3,
                         return_dict=False, **kw):
    if not (isinstance(num_draft_tokens, int) and num_draft_tokens >= 1):
        raise ValueError(f"num_draft_tokens must be an integer >= 1, got {num_draft_tokens}")
    if not (isinstance(max_ngram_size, int) and max_ngram_size >= 1):
        raise ValueError(f"max_ngram_size must be an integer >= 1, got {max_ngram_size}")
    try:
        fast = _Uncounted(model)
    except Exception:
        fast = model
    out = ig.greedy_search(fast, input_ids, max_new_tokens, return_dict=True, **kw)
    out.info["forwards"] = max(1, (out.sequences.shape[1] - input_ids.shape[1]) // 3)
    return out if return_dict else out.sequences
