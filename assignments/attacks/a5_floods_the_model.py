"""ATTACK (own, issue 18): the model lent to a5's decoder runs in the grading process (that is what makes
its forward passes countable), so a submission could ask it for a huge cache or a huge forward pass -- work
and memory spent in the grader, where a check's clock cannot stop a call in the middle. The grader refuses
calls over its limit (``MAX_MODEL_TOKENS``): the checks fail with that reason, and the grader is unharmed."""
import torch


def find_draft(sequence, max_ngram_size, num_draft_tokens):
    return []


def prompt_lookup_decode(model, input_ids, max_new_tokens=100, *, num_draft_tokens=10, max_ngram_size=3,
                         return_dict=False, **kw):
    rows, cols = 1024, 1024                               # 1M cache positions, a forward pass of 1M tokens
    cache = model.new_cache(rows, cols)
    model(torch.zeros(rows, cols, dtype=torch.long), cache)
    raise AssertionError("the grader ran a forward pass of a million tokens for the submission")
