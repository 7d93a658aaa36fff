"""A known-WRONG solution of assignment 5, used to prove that the grading can fail.

The bug: the drafts are compared with the model's predictions *at the same position* instead of the
previous one (``block[:, 1:] == target[:, 1:]`` rather than ``target[:, :-1]``): an off-by-one that
accepts tokens the model never chose, so the text drifts away from greedy search.
"""
import torch

from infergen._validation import check_number
from infergen.decoding.base import prepare
from infergen.decoding.steps import Rows


def find_draft(sequence, max_ngram_size, num_draft_tokens):
    T = len(sequence)
    for size in range(min(max_ngram_size, T - 1), 0, -1):
        tail = sequence[T - size:]
        for start in range(T - size):
            if sequence[start:start + size] == tail and sequence[start + size:start + size + num_draft_tokens]:
                return sequence[start + size:start + size + num_draft_tokens]
    return []


def prompt_lookup_decode(model, input_ids, max_new_tokens=100, *, num_draft_tokens=10, max_ngram_size=3,
                         attention_mask=None, eos_token_id=None, pad_token_id=None, streamer=None, stopping=None,
                         return_dict=False):
    check_number("num_draft_tokens", num_draft_tokens, low=1, integer=True)
    check_number("max_ngram_size", max_ngram_size, low=1, integer=True)
    setup, cache = prepare(model, input_ids, max_new_tokens, attention_mask=attention_mask,
                           eos_token_id=eos_token_id, pad_token_id=pad_token_id, extra_len=num_draft_tokens + 1)
    model, B, n = setup.model, setup.input_ids.shape[0], setup.max_new_tokens
    progress = Rows(setup, stopping=stopping, streamer=streamer)
    rows = [setup.input_ids[b][setup.attention_mask[b]].tolist() for b in range(B)]
    forwards = 0
    last = []

    def commit(tok, logits):
        tok, all_done = progress.commit(tok, logits)
        last[:] = [tok]
        for b in range(B):
            rows[b].append(int(tok[b]))
        return all_done

    with torch.inference_mode():
        done = n == 0
        if not done:
            logits = model(setup.input_ids, cache, attention_mask=setup.attention_mask).logits[:, -1].float()
            forwards += 1
            done = commit(logits.argmax(-1), logits)
        while not done and progress.steps < n:
            budget = min(num_draft_tokens, n - progress.steps - 1)
            drafts = [find_draft(rows[b], max_ngram_size, budget) if budget > 0 else [] for b in range(B)]
            width = max(len(d) for d in drafts)
            block = torch.full((B, width + 1), setup.pad_token_id, dtype=torch.long, device=setup.input_ids.device)
            block[:, 0] = last[0]
            for b, d in enumerate(drafts):
                block[b, 1:1 + len(d)] = torch.tensor(d, dtype=torch.long)
            start = cache.length
            out = model(block, cache, logits="all").logits.float()
            forwards += 1
            target = out.argmax(-1)
            accepted = (block[:, 1:] == target[:, 1:]).long().cumprod(-1).sum(-1)   # BUG: off by one
            m = int(accepted[~progress.done].min()) if bool((~progress.done).any()) else 0
            for j in range(m + 1):
                tok = block[:, j + 1] if j < m else target[:, j]
                if commit(tok, out[:, j]) or progress.steps >= n:
                    done = True
                    break
            cache.crop(start + m + 1)
    return progress.output(return_dict, info={"forwards": forwards})
