"""Assignment 5 -- prompt-lookup decoding: speculative decoding whose draft is copied from the context.

Specification: book/assignments/a5_prompt_lookup.md. Replace each ``raise NotImplementedError``.

Check:  python -m infergen.course check a5 path/to/this_file.py   (the public tests)
Grade:  python -m infergen.course grade a5 path/to/this_file.py   (your teacher adds the hidden checks)
"""
from __future__ import annotations


def find_draft(sequence: list[int], max_ngram_size: int, num_draft_tokens: int) -> list[int]:
    """Propose up to ``num_draft_tokens`` tokens for one row.

    For ``n = max_ngram_size, ..., 1``: look for the *earliest* earlier occurrence of the last ``n`` tokens
    of ``sequence`` (the final n-gram itself does not count); if one is found and tokens follow it, return
    those following tokens (at most ``num_draft_tokens``). Return ``[]`` when no n-gram matches.
    """
    raise NotImplementedError("find_draft: your code here")


def prompt_lookup_decode(model, input_ids, max_new_tokens=100, *, num_draft_tokens=10, max_ngram_size=3,
                         attention_mask=None, eos_token_id=None, pad_token_id=None, streamer=None, stopping=None,
                         return_dict=False):
    """Greedy decoding, faster: each round, verify a draft from :func:`find_draft` with ONE forward pass
    over ``[last token, draft...]`` and commit every draft token that equals the model's argmax, plus the
    model's own next token. The output must equal ``infergen.greedy_search`` token for token.

    The decoder protocol of ``infergen.decoding.base`` (left padding + ``attention_mask``, per-row EOS and
    padding, ``streamer`` gets each committed column, ``stopping``, ``return_dict``). With
    ``return_dict=True``, ``info`` holds at least ``"forwards"`` (model calls, prefill included).
    ``num_draft_tokens`` and ``max_ngram_size`` are integers ``>= 1``.
    """
    raise NotImplementedError("prompt_lookup_decode: your code here")
