"""Contrastive search (Su et al., 2022): pick a likely token that does not repeat what was said.

Greedy and beam search degenerate into loops ("the the the", a sentence repeated forever) because the
most probable continuation of a repetitive text is more repetition. Contrastive search adds a
*degeneration penalty*: a candidate token is worse when its representation is too similar to a
representation the model already produced. At every step, with ``V_k`` the ``k`` most probable tokens::

    x_t = argmax_{v in V_k}  (1 - alpha) * p(v | x_<t)  -  alpha * max_{j < t} cos(h_v, h_j)
                             \\_ model confidence _/          \\_ degeneration penalty _/

``h_v`` is the last-layer hidden state the model computes *for the candidate token v itself* (at
position t), and ``h_j`` are the last-layer hidden states of every earlier position, prompt included.
``alpha = 0`` (or ``k = 1``) is greedy search; typical settings are ``k`` in 4..10, ``alpha`` 0.5..0.8.

**The pitfall of the naive version.** ``h_v`` depends on ``v``: it only exists after running ``v``
through the model. A sketch that compares the *context's* last hidden state with earlier ones gets the
same penalty for every candidate, so the ranking is by ``p(v)`` alone -- greedy search in disguise.
The correct method needs one extra forward pass per step over the ``k`` candidates.

**How this implementation keeps that pass cheap.** The ``k`` candidates of each row go through the
model as one batch of ``B * k`` single-token rows that reuse the KV cache (each row's cache is repeated
``k`` times once, after the prefill). That one pass gives, for every candidate, its hidden state (for
the penalty), its next-token logits and its keys/values. After choosing, the winner's cache row is
copied over its ``k`` siblings (``cache.reorder``) and its logits become the next step's logits, so a
step costs exactly one model call -- the same count as greedy search, with a ``k`` times larger batch.
The hidden states of all earlier positions are kept (L2-normalised) in a buffer, so each penalty is
one batched matrix product; padded prompt positions are masked out of the max.

The behaviour matches transformers 4.x ``generate(penalty_alpha=..., top_k=...)`` (removed from the
core in v5): probabilities from the softmax over the full vocabulary, penalty over prompt and
generated positions, ties broken towards the more probable candidate (checked token for token against
transformers 4.55 on SmolLM2-135M, single prompts and left-padded batches).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._validation import check_number
from ..processors import check_finite_row
from ..registry import register_decoder
from .base import prepare
from .steps import Rows, decode_one, last_logits, prefill


def degeneration_penalty(candidates: torch.Tensor, context: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``max_j cos(candidates[b, i], context[b, j])`` over the valid positions ``j``; returns [B, k].

    ``candidates`` [B, k, D] and ``context`` [B, L, D] must already be L2-normalised (then the cosine is
    a dot product and the whole step is one ``bmm``); ``valid`` [B, L] is False for padding.
    """
    cos = torch.bmm(candidates, context.transpose(1, 2))  # [B, k, L]
    return cos.masked_fill(~valid.unsqueeze(1), float("-inf")).amax(-1)


@register_decoder("contrastive")
def contrastive_search(model, input_ids, max_new_tokens=100, top_k=5, alpha=0.6, *, attention_mask=None,
                       eos_token_id=None, pad_token_id=None, streamer=None, stopping=None, return_dict=False):
    """Contrastive search: ``argmax_{v in top-k} (1 - alpha) * p(v) - alpha * max_j cos(h_v, h_j)``.

    ``top_k`` (int >= 1, at most the vocabulary size) is the number of candidates scored per step;
    ``alpha`` in ``[0, 1]`` weighs the degeneration penalty against the model's probability (0 = greedy;
    the default 0.6 is what Su et al. recommend with ``top_k`` about 5).
    ``input_ids`` [B, T] may be left-padded with ``attention_mask``; each row stops at its own EOS and
    is padded after it. ``streamer`` receives each chosen column of tokens. Returns [B, T + n] token ids,
    or with ``return_dict=True`` a :class:`~infergen.decoding.base.GenerationOutput` whose
    ``info["penalty"]`` [B, n] holds the degeneration penalty of every chosen token (0 for padding).

    Cost per step: one forward of ``B * top_k`` single tokens, plus a ``[k, D] x [D, L]`` product per row.
    """
    alpha = float(check_number("alpha", alpha, low=0, high=1))
    setup, cache = prepare(model, input_ids, max_new_tokens, attention_mask=attention_mask,
                           eos_token_id=eos_token_id, pad_token_id=pad_token_id, who="contrastive_search")
    model, (B, T), n = setup.model, setup.input_ids.shape, setup.max_new_tokens
    k = int(check_number("top_k", top_k, low=1, high=model.config.vocab_size, integer=True))  # at most the vocab
    progress = Rows(setup, stopping=stopping, streamer=streamer)
    rows = torch.arange(B, device=setup.input_ids.device)
    penalties = torch.zeros(B, n, device=rows.device)  # of each chosen token
    with torch.inference_mode():
        if n > 0:
            out = prefill(model, setup.input_ids, cache, setup.attention_mask, hidden=True)
            logits = last_logits(out)
            # Normalised last-layer hidden states of every position (T prompt + n generated); padding invalid.
            context = F.pad(F.normalize(out.hidden.float(), dim=-1), (0, 0, 0, n))  # [B, T + n, D]
            valid = F.pad(setup.attention_mask, (0, n), value=True)  # [B, T + n]
            cache.repeat(k)  # row b -> rows b*k .. b*k+k-1, one per candidate
        for step in range(n):
            check_finite_row(logits)
            top_probs, top_ids = logits.softmax(-1).topk(k, dim=-1)  # [B, k], most probable first
            out = decode_one(model, top_ids.reshape(B * k), cache, hidden=True)  # all candidates in one batch
            cand = F.normalize(out.hidden[:, -1].float(), dim=-1).view(B, k, -1)
            L = T + step
            penalty = degeneration_penalty(cand, context[:, :L], valid[:, :L])  # [B, k]
            # the first maximum: ties go to the more probable candidate
            choice = ((1.0 - alpha) * top_probs - alpha * penalty).argmax(-1)
            penalties[:, step] = penalty[rows, choice].masked_fill(progress.done, 0.0)
            _, all_done = progress.commit(top_ids[rows, choice], logits)
            # Keep the winner: its hidden state joins the context, its logits are the next step's.
            context[:, L] = cand[rows, choice]
            winners = rows * k + choice
            logits = out.logits[winners, -1].float()
            if all_done or step == n - 1:
                break
            cache.reorder(winners.repeat_interleave(k))  # every candidate row now holds the winner
    return progress.output(return_dict, info={"top_k": k, "alpha": alpha,
                                              "penalty": penalties[:, :progress.steps]})
