"""ATTACK (issue 18): prompt-lookup decoding that is plain greedy search (no drafts: find_draft finds
nothing), honest about its forward passes, with tidy input validation. Its output is right; it teaches
nothing of the assignment. Must score at most 25%."""
import infergen as ig


def find_draft(sequence, max_ngram_size, num_draft_tokens):
    return []


def prompt_lookup_decode(model, input_ids, max_new_tokens=100, *, num_draft_tokens=10, max_ngram_size=3,
                         return_dict=False, **kw):
    for name, value in [("num_draft_tokens", num_draft_tokens), ("max_ngram_size", max_ngram_size)]:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    out = ig.greedy_search(model, input_ids, max_new_tokens, return_dict=True, **kw)
    out.info["forwards"] = out.info.get("forwards", max(1, out.sequences.shape[1] - input_ids.shape[1]))
    return out if return_dict else out.sequences
