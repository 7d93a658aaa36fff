"""A known-WRONG solution of assignment 5: it "normalises" the caller's padding in place.

The bug: before decoding, it writes ``pad_token_id`` into the padded positions of the caller's
``input_ids`` (``input_ids.masked_fill_(...)``). On prompts that were already padded with the pad id the
write changes no value, so only a mutation check whose padding holds *another* id catches it. Everything
else is the reference solution (``solutions/a5_prompt_lookup.py``, copied in: a submission is one file).
"""
from __future__ import annotations

import torch

from infergen._validation import check_number
from infergen.decoding.base import prepare
from infergen.decoding.steps import Rows


def find_draft(sequence: list[int], max_ngram_size: int, num_draft_tokens: int) -> list[int]:
    """Draft tokens for one row: the tokens that followed the earliest occurrence of the sequence's last
    ``n`` tokens (the tail itself excluded), trying ``n = max_ngram_size .. 1``; ``[]`` when nothing matches."""
    T = len(sequence)
    for size in range(min(max_ngram_size, T - 1), 0, -1):
        tail = sequence[T - size:]
        for start in range(T - size):                        # earliest occurrence first, never the tail itself
            if sequence[start:start + size] == tail:
                follow = sequence[start + size:start + size + num_draft_tokens]
                if follow:
                    return follow
    return []


def _reference_decode(model, input_ids, max_new_tokens=100, *, num_draft_tokens=10, max_ngram_size=3,
                         attention_mask=None, eos_token_id=None, pad_token_id=None, streamer=None, stopping=None,
                         return_dict=False):
    """Greedy decoding that verifies n-gram drafts copied from the context; output equals greedy search."""
    check_number("num_draft_tokens", num_draft_tokens, low=1, integer=True)
    check_number("max_ngram_size", max_ngram_size, low=1, integer=True)
    setup, cache = prepare(model, input_ids, max_new_tokens, attention_mask=attention_mask,
                           eos_token_id=eos_token_id, pad_token_id=pad_token_id, extra_len=num_draft_tokens)
    model = setup.model
    B, n = setup.input_ids.shape[0], setup.max_new_tokens
    dev = setup.input_ids.device
    progress = Rows(setup, stopping=stopping, streamer=streamer)   # per-row EOS, padding, stop criteria
    rows = [setup.input_ids[b][setup.attention_mask[b]].tolist() for b in range(B)]   # real tokens per row
    info = {"forwards": 0, "drafted": 0, "accepted": 0}
    last: list[torch.Tensor] = []                                  # the newest committed column

    def commit(tokens: torch.Tensor, logits: torch.Tensor) -> bool:
        """Commit one column (the shared commit step), and keep each row's text for the lookups."""
        tokens, all_done = progress.commit(tokens, logits)
        last[:] = [tokens]
        for b in range(B):
            rows[b].append(int(tokens[b]))
        return all_done

    with torch.inference_mode():
        done = n == 0
        if not done:
            logits = model(setup.input_ids, cache, attention_mask=setup.attention_mask).logits[:, -1].float()
            info["forwards"] += 1
            done = commit(logits.argmax(-1), logits)
        while not done and progress.steps < n:
            # The cache holds everything but the last committed token; feed it plus the drafts.
            budget = min(num_draft_tokens, n - progress.steps - 1)
            drafts = [find_draft(rows[b], max_ngram_size, budget) if not progress.done[b] and budget > 0 else []
                      for b in range(B)]
            width = max(len(d) for d in drafts)
            block = torch.full((B, width + 1), setup.pad_token_id, dtype=torch.long, device=dev)
            block[:, 0] = last[0]
            for b, d in enumerate(drafts):
                block[b, 1:1 + len(d)] = torch.tensor(d, dtype=torch.long, device=dev)
            start = cache.length
            out = model(block, cache, logits="all").logits.float()   # [B, width + 1, V]
            info["forwards"] += 1
            target = out.argmax(-1)                                  # the greedy token after each position
            match = (block[:, 1:] == target[:, :-1])                 # draft j accepted if it is the argmax
            live = ~progress.done
            accepted = match.long().cumprod(-1).sum(-1)              # accepted prefix length per row
            m = int(accepted[live].min()) if bool(live.any()) else 0
            info["drafted"] += sum(len(d) for b, d in enumerate(drafts) if live[b])
            info["accepted"] += m * int(live.sum())
            for j in range(m + 1):                                   # the m accepted drafts, then one more
                if commit(target[:, j], out[:, j]) or progress.steps >= n:
                    done = True
                    break
            cache.crop(start + m + 1)                                # keep last + the m accepted drafts
    info["acceptance_rate"] = info["accepted"] / info["drafted"] if info["drafted"] else 0.0
    return progress.output(return_dict, info=info)


def prompt_lookup_decode(model, input_ids, max_new_tokens=100, *, attention_mask=None, pad_token_id=None, **kw):
    if attention_mask is not None and pad_token_id is not None:
        input_ids.masked_fill_(~attention_mask.bool(), pad_token_id)          # BUG: writes into the caller's tensor
    return _reference_decode(model, input_ids, max_new_tokens, attention_mask=attention_mask,
                             pad_token_id=pad_token_id, **kw)
