"""Beam search and diverse (group) beam search, with a KV cache, on batches of ragged prompts.

Greedy decoding commits to the best *token* at every step; beam search keeps the ``k`` best *prefixes*
("beams") and extends all of them, so a token that looks second-best now can win later. Scores are
sums of log-probabilities, ``log p(y_1..y_t) = sum_i log p(y_i | y_<i)``. One step, for every input row::

    logp   = log_softmax(logits)                 # [k, V]: one next-token distribution per beam
    logp   = processors(logp)                    # repetition penalty, logit bias, ... (on log-probs)
    total  = running_score[:, None] + logp       # [k, V]: score of every one-token extension
    cands  = top 2k of total.flatten()           # over beams x vocabulary, not per beam
    ended  = cands ending in EOS (among the top k)  -> finished hypotheses, score / length ** alpha
    beams  = the best k candidates that did not end
    cache.reorder(parent beam of each survivor)  # the survivors' keys/values move with them

The semantics are transformers' (v5 ``_beam_search``), so the outputs match ``model.generate(num_beams=k)``
token for token (tested). The details that make it right -- and that the document's sketch gets wrong:

* **Start**: beam 0 has score 0 and beams 1..k-1 have -1e9. All beams hold the same prompt, so if they
  all started at 0 the first step would fill the beam with ``k`` copies of the same best token. (The
  document's ``beam_scores[1::num_beams] = -inf`` masks only beam 1.) -1e9 rather than -inf keeps every
  sum finite: ``-inf - -inf`` is NaN.
* **Why 2k candidates** (``max(2, 1 + n_eos) * k``): some of the best candidates may end in EOS and
  leave the beam; taking twice as many guarantees ``k`` unfinished ones remain to continue.
* **Finished hypotheses** are set aside with the *length-normalised* score
  ``sum_logprobs / generated_len ** length_penalty`` (the EOS counts in the length). Sums of
  log-probabilities only go down, so without normalisation short outputs always win;
  ``length_penalty`` > 0 favours longer outputs, < 0 shorter ones, 0 compares raw sums.
* **When to stop** (``early_stopping``): ``True`` stops a row as soon as it has ``k`` finished
  hypotheses. ``False`` (the default) stops when the best running beam, normalised by the *current*
  length, cannot beat the worst finished hypothesis -- a heuristic, since with ``length_penalty`` > 0 a
  longer continuation could still overtake. ``"never"`` normalises by the *maximum* length instead,
  which is exact: the canonical beam search. At ``max_new_tokens`` the best running beams are finished
  as they are. ``num_return_sequences`` best hypotheses are returned per input row.
* **The cache** has one row per beam; after every step its rows are gathered with the survivors'
  parent indices (``cache.reorder``). The prompt is prefilled once per input row and then repeated
  ``k`` times (``cache.repeat``), instead of running the same prompt ``k`` times.

``beam_search(..., do_sample=True)`` is transformers' *beam sampling*: the ``2k`` candidates are drawn
without replacement from ``softmax(total)`` (after temperature / top-k / top-p on the log-probs)
instead of taken as the top ``2k``.

:func:`diverse_beam_search` is the group beam search of Vijayakumar et al. (2016), "Diverse Beam
Search": the ``k`` beams are split into ``G`` groups that take turns within a step, and a group pays
``diversity_penalty`` for every beam of an earlier group that chose the same token at this step
(Hamming diversity, :func:`apply_hamming_diversity`). Plain beam search tends to return ``k`` near
copies of one sentence; the groups are pushed apart. Its semantics are transformers 4.x's
``_group_beam_search`` with ``HammingDiversityLogitsProcessor`` (transformers 5 moved group beam search
out of the library into a Hub repository).

Beams are not streamable: the best hypothesis is only known at the end (a beam leading now may lose).
A ``streamer`` is accepted and receives the final tokens, one column per call, after the search ends.
"""
from __future__ import annotations

import math

import torch

from .._validation import check_number
from ..params import SamplingParams
from ..registry import register_decoder
from .base import GenerationOutput, check_stop, make_generator, prepare
from .steps import decode_one, emit, end_stream, last_logits, prefill

#: The score transformers gives impossible beams: finite, so sums never turn into NaN.
NEG = -1.0e9

_REASONS = ("length", "eos", "stop", "constraint", "no_valid_token")  # finish-reason codes per hypothesis


# --------------------------------------------------------------------------------------------------------
# Hamming diversity
# --------------------------------------------------------------------------------------------------------
def apply_hamming_diversity(scores: torch.Tensor, previous_tokens: torch.Tensor, diversity_penalty: float,
                            beams_per_row: int = 1) -> torch.Tensor:
    """Subtract ``diversity_penalty * count(v)`` from every token ``v`` that earlier groups chose at this step.

    ``scores``: [R * beams_per_row, V] (log-probs of the current group's beams, row-major: the beams of
    input row 0 first); ``previous_tokens``: [R, n] the tokens the ``n`` beams of the earlier groups chose
    at this step (n = 0 for the first group). Returns new scores; the input is not modified.

    This is the Hamming diversity term of Vijayakumar et al.: the penalty grows with *how many* earlier
    beams took the token (transformers' ``HammingDiversityLogitsProcessor``), so a token chosen by two
    earlier beams costs twice as much. The counting is one ``scatter_add`` per call, no loop over rows.
    """
    check_number("diversity_penalty", diversity_penalty, low=0, high=math.inf, high_open=True)
    if previous_tokens.shape[-1] == 0 or diversity_penalty == 0:
        return scores.clone()
    rows, vocab = previous_tokens.shape[0], scores.shape[-1]
    counts = torch.zeros(rows, vocab, dtype=torch.long, device=scores.device)
    counts.scatter_add_(1, previous_tokens.to(scores.device), torch.ones_like(previous_tokens, device=scores.device))
    penalty = diversity_penalty * counts  # [R, V]
    return scores - penalty.repeat_interleave(beams_per_row, 0).to(scores.dtype)


# --------------------------------------------------------------------------------------------------------
# The shared machinery: running beams and finished hypotheses of every (row, group)
# --------------------------------------------------------------------------------------------------------
class _Beams:
    """State of ``groups`` beam sets of ``size`` beams for each of ``B`` input rows (plain beam search:
    one group of ``num_beams``). Every tensor is indexed ``[row, group, beam, ...]``.

    Running beams: ``run_tokens`` (generated ids, padded), ``run_logprobs`` (the model's log-prob of each
    token), ``run_scores`` (sum of processed log-probs). Finished hypotheses, kept sorted best first:
    ``fin_*`` with ``fin_scores`` length-normalised and ``fin_done`` marking slots that hold one.
    ``open[row, group]`` is False once no better hypothesis can appear (no more are accepted).

    ``rule`` picks the early-stop test: ``"v5"`` compares the best *running* beam with the worst finished
    hypothesis (transformers 5 beam search), ``"v4"`` the best *candidate* of the step, EOS ones included
    (transformers 4 ``BeamHypotheses.is_done``, used by group beam search).
    """

    def __init__(self, B, groups, size, max_new, device, pad, length_penalty, early_stopping, rule,
                 constrained=False):
        shape = (B, groups, size)
        self.size, self.max_new, self.pad = size, max_new, pad
        self.length_penalty, self.early_stopping, self.rule = length_penalty, early_stopping, rule
        self.run_tokens = torch.full(shape + (max_new,), pad, dtype=torch.long, device=device)
        self.run_logprobs = torch.zeros(shape + (max_new,), device=device)
        self.run_scores = torch.full(shape, NEG, device=device)
        self.run_scores[:, :, 0] = 0.0  # only the first beam of each group is alive at the start
        self.fin_tokens = self.run_tokens.clone()
        self.fin_logprobs = self.run_logprobs.clone()
        self.fin_scores = torch.full(shape, NEG, device=device)
        self.fin_lengths = torch.zeros(shape, dtype=torch.long, device=device)
        # a slot that never receives a hypothesis: under a constraint, no valid text was found
        self.fin_reason = torch.full(shape, 4 if constrained else 0, dtype=torch.long, device=device)
        self.constrained = constrained
        self.fin_done = torch.zeros(shape, dtype=torch.bool, device=device)
        self.open = torch.ones(B, groups, dtype=torch.bool, device=device)

    def advance(self, g: int, step: int, processed: torch.Tensor, raw_logp: torch.Tensor, eos: torch.Tensor,
                stopping=None, do_sample=False, generator=None, completes=None):
        """One step of group ``g``: ``processed`` / ``raw_logp`` are [B, size, V]. Returns
        ``(parents [B, size], tokens [B, size], all_candidates_ended: bool, keep [B, size])``, ``keep``
        being the kept candidates' positions among the step's ``n_cand`` candidates.

        Under a constraint (``self.constrained``), candidates with a ``-inf`` score (a token the
        constraint forbids) are dropped, and ``completes(parent, token, live) -> BoolTensor [B, n_cand]``
        says which candidates complete their constraint: they end like EOS, with reason ``"constraint"``.
        """
        B, size, V = processed.shape
        n_cand = max(2, 1 + eos.numel()) * size
        total = (processed + self.run_scores[:, g, :, None]).reshape(B, size * V)
        if do_sample:  # beam sampling: draw the candidates without replacement from softmax(total)
            probs = torch.softmax(total, -1)
            support = int((probs > 0).sum(-1).min())
            if support < n_cand and self.constrained:  # few allowed tokens: draw them all, pad with -inf ones
                idx = _draw_padded(probs, total, n_cand, generator)
                cand, order = total.gather(-1, idx).sort(-1, descending=True)
                idx = idx.gather(-1, order)
            elif support < n_cand:
                raise ValueError(f"beam sampling draws {n_cand} distinct candidates per row (2 * num_beams) but "
                                 f"the filters leave only {support}: raise top_k / top_p or lower num_beams")
            else:
                idx = torch.multinomial(probs, n_cand, generator=generator)
                cand, order = total.gather(-1, idx).sort(-1, descending=True)
                idx = idx.gather(-1, order)
        else:
            cand, idx = total.topk(n_cand, -1)  # [B, n_cand], best first
        parent, token = idx // V, idx % V

        def pick(t, index):  # gather along the beam dimension: t [B, n, ...], index [B, m]
            return t.gather(1, index.view(*index.shape, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:]))

        hist = pick(self.run_tokens[:, g], parent)  # [B, n_cand, max_new]
        hist[:, :, step] = token
        hist_lp = pick(self.run_logprobs[:, g], parent)
        hist_lp[:, :, step] = raw_logp.reshape(B, size * V).gather(-1, idx)
        is_eos = torch.isin(token, eos)
        stop = torch.zeros_like(is_eos)
        if stopping is not None:
            stop = stopping(hist[:, :, :step + 1].reshape(B * n_cand, step + 1)).to(is_eos.device).view(B, n_cand)
        live = torch.ones_like(is_eos)
        complete = torch.zeros_like(is_eos)
        if self.constrained:
            live = cand > NEG / 2  # a forbidden token (-inf), or an extension of a never-started beam
            is_eos, stop = is_eos & live, stop & live
            if completes is not None:
                complete = completes(parent, token, live & ~is_eos) & live & ~is_eos & ~stop
        ended = (is_eos | stop | complete | (step + 1 == self.max_new)) & live

        # the next running beams: the best candidates that did not end. (At the last step every candidate
        # ends by length, but the running beams still say which tokens the group chose, for diversity.)
        run_cand = cand + (is_eos | stop | complete).float() * NEG
        if self.constrained:
            run_cand = run_cand.masked_fill(~live, float("-inf"))
        keep = run_cand.topk(size, -1).indices
        self.run_tokens[:, g] = pick(hist, keep)
        self.run_logprobs[:, g] = pick(hist_lp, keep)
        self.run_scores[:, g] = run_cand.gather(-1, keep)
        parents = parent.gather(-1, keep)

        # finished hypotheses: ended candidates among the top `size`, merged with the kept ones
        lp = self.length_penalty
        in_top = torch.arange(n_cand, device=cand.device) < size
        new = ended & in_top
        scores = cand / ((step + 1) ** lp)
        full = self.fin_done[:, g].all(-1, keepdim=True)
        scores = scores + (full & (self.early_stopping is True)).float() * NEG
        scores = scores + (~self.open[:, g, None]).float() * NEG
        scores = scores + (~new).float() * NEG
        reason = torch.where(is_eos, 1, torch.where(stop, 2, torch.where(complete, 3, 0)))
        best = torch.cat([self.fin_scores[:, g], scores], 1).topk(size, -1).indices
        self.fin_scores[:, g] = torch.cat([self.fin_scores[:, g], scores], 1).gather(-1, best)
        self.fin_tokens[:, g] = pick(torch.cat([self.fin_tokens[:, g], hist], 1), best)
        self.fin_logprobs[:, g] = pick(torch.cat([self.fin_logprobs[:, g], hist_lp], 1), best)
        lengths = torch.full_like(token, step + 1)
        self.fin_lengths[:, g] = torch.cat([self.fin_lengths[:, g], lengths], 1).gather(-1, best)
        self.fin_reason[:, g] = torch.cat([self.fin_reason[:, g], reason], 1).gather(-1, best)
        self.fin_done[:, g] = torch.cat([self.fin_done[:, g], new], 1).gather(-1, best)

        # can this (row, group) still improve? (the early-stopping rule)
        length = self.max_new if (self.early_stopping == "never" and lp > 0) else step + 1
        if self.rule == "v5":
            best_possible = self.run_scores[:, g, :1] / (length ** lp)
            worst = torch.where(self.fin_done[:, g], self.fin_scores[:, g].min(-1, keepdim=True).values, NEG)
            self.open[:, g] &= (best_possible > worst).any(-1)
        else:
            full = self.fin_done[:, g].all(-1)
            worst = self.fin_scores[:, g].min(-1).values
            done = full & ((self.early_stopping is True) | (worst >= cand[:, 0] / (length ** lp)))
            self.open[:, g] &= ~done
        return parents, self.run_tokens[:, g, :, step], bool((ended | ~live).all()), keep

    def finished(self) -> bool:
        return not bool(self.open.any()) or (self.early_stopping is True and bool(self.fin_done.all()))

    def best(self, n: int):
        """The ``n`` best finished hypotheses of every row: (tokens, logprobs, scores, lengths, reasons, group),
        each [B * n, ...], ordered best first within a row."""
        B, groups, size = self.fin_scores.shape
        flat = lambda t: t.reshape(B, groups * size, *t.shape[3:])  # noqa: E731
        order = flat(self.fin_scores).sort(dim=-1, descending=True, stable=True).indices[:, :n]

        def take(t):
            t = flat(t)
            idx = order.view(B, n, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:])
            return t.gather(1, idx).reshape(B * n, *t.shape[2:])

        group = torch.arange(groups, device=order.device).repeat_interleave(size).expand(B, -1)
        return (take(self.fin_tokens), take(self.fin_logprobs), take(self.fin_scores), take(self.fin_lengths),
                take(self.fin_reason), group.gather(1, order).reshape(-1))


def _draw_padded(probs: torch.Tensor, total: torch.Tensor, n: int, generator) -> torch.Tensor:
    """``n`` candidate indices per row: as many distinct draws from ``probs`` as it has support, then the
    best of the rest (probability 0, so ``-inf`` scores that the caller drops)."""
    out = []
    for r in range(probs.shape[0]):
        k = min(n, int((probs[r] > 0).sum()))
        drawn = torch.multinomial(probs[r], k, generator=generator) if k else probs.new_zeros(0, dtype=torch.long)
        rest = total[r].index_fill(0, drawn, float("inf")).topk(n, largest=False).indices[:n - k] if k < n else drawn[:0]
        out.append(torch.cat([drawn, rest]))
    return torch.stack(out)


def _completion_check(rows, g: int, size: int, num_beams: int, eos: torch.Tensor, kept: list):
    """The ``completes`` callback of :meth:`_Beams.advance` for group ``g``: forks the parent beam's state
    for every live candidate, advances it with the candidate's token, and says which are complete. The
    advanced candidates are appended to ``kept`` (the caller adds the indices of the kept ones)."""

    def completes(parent: torch.Tensor, token: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        B, n = parent.shape
        base = (torch.arange(B, device=parent.device)[:, None] * num_beams + g * size)
        cands = rows.select((base + parent).reshape(-1).cpu())
        cands.advance(token.reshape(-1).cpu(), active=live.reshape(-1).cpu())
        kept.append(cands)
        return cands.complete(parent.device).view(B, n)

    return completes


def _next_rows(kept: list, B: int):
    """One step's surviving beam states ``[b, g, j]`` from each group's (candidates, keep [B, size])."""
    from ..constraints import RowConstraints

    cands = RowConstraints.concat([c for c, _ in kept])
    index = []
    n = [len(c) // B for c, _ in kept]
    starts = [sum(len(c) for c, _ in kept[:g]) for g in range(len(kept))]
    for b in range(B):
        for g, (_, keep) in enumerate(kept):
            index += [starts[g] + b * n[g] + int(k) for k in keep[b].tolist()]
    return cands.select(index)


# --------------------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------------------
def _check_common(num_beams, num_return_sequences, length_penalty, early_stopping):
    check_number("num_beams", num_beams, low=1, integer=True)
    check_number("num_return_sequences", num_return_sequences, low=1, high=num_beams, integer=True)
    check_number("length_penalty", length_penalty, low=-math.inf, high=math.inf, low_open=True, high_open=True)
    if not (early_stopping is True or early_stopping is False
            or (isinstance(early_stopping, str) and early_stopping == "never")):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")


# --------------------------------------------------------------------------------------------------------
# The search loop shared by both strategies
# --------------------------------------------------------------------------------------------------------
def _search(model, input_ids, max_new_tokens, *, groups, size, length_penalty, early_stopping,
            num_return_sequences, pipeline, rule, diversity_penalty=0.0, do_sample=False, generator=None,
            attention_mask=None, eos_token_id=None, pad_token_id=None, streamer=None, stopping=None,
            return_dict=False, strategy="beam", constraint=None):
    """Run ``groups`` groups of ``size`` beams per input row (see :class:`_Beams`) and assemble the output.

    One forward pass per step serves every beam of every row: the cache holds ``B * num_beams`` rows
    (row ``b * num_beams + g * size + j`` is beam ``j`` of group ``g`` of input row ``b``). Within a step
    the groups choose one after the other, so group ``g`` can be penalised for the tokens of groups
    ``< g`` (diverse beam search); then the cache rows are gathered with every survivor's parent.

    ``constraint`` (see :mod:`infergen.constraints`) gives every beam its own state, forked from the input
    row's. Each step masks the logits *before* ``log_softmax`` (so a beam's score is a sum of log-probs
    renormalised over the allowed tokens), drops the candidates whose score is ``-inf``, advances a fork
    of the parent's state with each remaining candidate's token (:meth:`RowConstraints.select` on the
    parent indices), ends the candidates whose constraint is then complete like EOS hypotheses (finish
    reason ``"constraint"``, no EOS token added), and keeps the survivors' states in the beams' new order.
    """
    num_beams = groups * size
    setup, cache = prepare(model, input_ids, max_new_tokens, attention_mask=attention_mask,
                           eos_token_id=eos_token_id, pad_token_id=pad_token_id, needs=("reorder",), who=strategy)
    model = setup.model
    B, T = setup.input_ids.shape
    vocab = model.config.vocab_size
    n_cand = max(2, 1 + setup.eos.numel()) * size
    if n_cand > size * vocab:
        raise ValueError(f"num_beams={num_beams} is too large for a vocabulary of {vocab} tokens: each step needs "
                         f"{n_cand} distinct candidates per group")
    dev = setup.input_ids.device
    rows = None
    if constraint is not None:
        from ..constraints import as_row_constraints

        rows = as_row_constraints(constraint, B).select(torch.arange(B).repeat_interleave(num_beams))
    beams = _Beams(B, groups, size, max_new_tokens, dev, setup.pad_token_id, length_penalty, early_stopping, rule,
                   constrained=rows is not None)

    # Hamming diversity joins the pipeline where transformers 4.x had it: after the bias, before penalties.
    hamming = {"previous": None}
    if groups > 1 and diversity_penalty > 0:
        names = [n for n, _ in pipeline.steps if n != "logit_bias"]

        def diversity_step(z, ctx):
            return apply_hamming_diversity(z, hamming["previous"], diversity_penalty, beams_per_row=size)

        pipeline.add("diversity", diversity_step, before=names[0] if names else None)
    prompt_ids = setup.prompt_ids_for_penalties.repeat_interleave(size, 0)  # [B * size, T]

    steps = 0
    with torch.inference_mode():
        if max_new_tokens > 0:
            logits = last_logits(prefill(model, setup.input_ids, cache, setup.attention_mask))
            logits = logits.repeat_interleave(num_beams, 0)  # [B * num_beams, V], beams of row 0 first
            cache.repeat(num_beams)
        for step in range(max_new_tokens):
            steps += 1
            logp_all = torch.log_softmax(logits, -1).view(B, groups, size, vocab)
            if torch.isnan(logp_all).any():
                raise ValueError("the model produced NaN logits: nothing sensible can be chosen")
            scored = logp_all  # what the beams score: renormalised over the allowed tokens under a constraint
            if rows is not None:
                scored = torch.log_softmax(rows.mask(logits), -1)
                scored = scored.masked_fill(rows.dead(dev)[:, None], float("-inf")).view(B, groups, size, vocab)
            parents, chosen, seen, kept = [], [], [], []  # seen: what later groups' Hamming penalty counts
            all_ended = True
            for g in range(groups):
                raw = logp_all[:, g]
                completes = None
                if rows is not None:
                    completes = _completion_check(rows, g, size, num_beams, setup.eos, kept)
                if seen:
                    hamming["previous"] = torch.cat(seen, 1)
                else:
                    hamming["previous"] = torch.empty(B, 0, dtype=torch.long, device=dev)
                generated = beams.run_tokens[:, g, :, :step].reshape(B * size, step)
                processed = pipeline(scored[:, g].reshape(B * size, vocab), prompt_ids=prompt_ids,
                                     generated_ids=generated).view(B, size, vocab)
                was_open = beams.open[:, g, None].clone()
                p, tok, ended, keep = beams.advance(g, step, processed, raw, setup.eos, stopping, do_sample, generator,
                                                    completes)
                if rows is not None:
                    kept[-1] = (kept[-1], keep)
                parents.append(p + g * size)
                chosen.append(tok)
                # a group that had already stopped emits padding in transformers 4.x; that is what it counts
                seen.append(torch.where(was_open, tok, setup.pad_token_id))
                all_ended &= ended
            if beams.finished() or all_ended:
                break
            offsets = torch.arange(B, device=dev)[:, None] * num_beams
            cache.reorder((torch.cat(parents, 1) + offsets).reshape(-1))
            if rows is not None:  # the survivors' advanced states, in the beams' new order
                rows = _next_rows(kept, B)
            logits = last_logits(decode_one(model, torch.cat(chosen, 1).reshape(-1), cache))

    n = num_return_sequences
    if max_new_tokens == 0:
        tokens = torch.empty(B * n, 0, dtype=torch.long, device=dev)
        logprobs = torch.empty(B * n, 0, device=dev)
        scores = torch.zeros(B * n, device=dev)
        lengths = torch.zeros(B * n, dtype=torch.long)
        reasons = torch.zeros(B * n, dtype=torch.long)
        group = torch.zeros(B * n, dtype=torch.long)
    else:
        tokens, logprobs, scores, lengths, reasons, group = beams.best(n)
    width = int(lengths.max()) if lengths.numel() else 0
    sequences = torch.cat([setup.input_ids.repeat_interleave(n, 0), tokens[:, :width]], 1)
    for col in range(width):
        emit(streamer, sequences[:, T + col])
    end_stream(streamer)
    if not return_dict:
        return sequences
    info = {"strategy": strategy, "num_beams": num_beams, "steps": steps, "num_return_sequences": n}
    if groups > 1:
        info.update(num_beam_groups=groups, group=group.tolist())
    return GenerationOutput(sequences=sequences, logprobs=logprobs[:, :width], prompt_length=T,
                            finish_reason=[_REASONS[r] for r in reasons.tolist()],
                            lengths=[int(x) for x in lengths.tolist()], scores=scores, info=info)


# --------------------------------------------------------------------------------------------------------
# The public strategies
# --------------------------------------------------------------------------------------------------------
@register_decoder("beam")
def beam_search(model, input_ids, max_new_tokens=100, num_beams=4, length_penalty=1.0, early_stopping=False,
                num_return_sequences=1, *, attention_mask=None, eos_token_id=None, pad_token_id=None,
                do_sample=False, generator=None, streamer=None, stopping=None, constraint=None, return_dict=False,
                params: SamplingParams | None = None, **settings):
    """Beam search with ``num_beams`` beams over ``input_ids`` [B, T] (left-padded, ``attention_mask``).

    Returns [B * num_return_sequences, T + n]: the best ``num_return_sequences`` hypotheses of every input
    row, best first (rows ``b * num_return_sequences ...``), each padded with ``pad_token_id`` after its
    EOS to the longest returned one. With ``return_dict=True``: a
    :class:`~infergen.decoding.base.GenerationOutput` whose ``scores`` are the length-normalised sequence
    scores ``sum_logprobs / generated_len ** length_penalty`` (transformers' ``sequences_scores``) and
    whose ``logprobs`` are the model's log-probabilities of each chosen token.

    ``length_penalty`` is the exponent of the length normalisation (> 0 favours long outputs);
    ``early_stopping`` is ``True``, ``False`` or ``"never"`` (see the module docstring). Processor
    parameters (``repetition_penalty``, ``no_repeat_ngram_size``, ``logit_bias``, ...) act on the
    log-probabilities, as in transformers. ``do_sample=True`` is beam sampling (``temperature``,
    ``top_k``, ``top_p``, ``seed``/``generator`` then apply; ``temperature=0`` means deterministic).
    ``num_beams=1`` is greedy search. ``stopping`` ends a hypothesis like EOS does. ``streamer`` gets the
    final tokens column by column once the search is over: beam search cannot stream, since the leading
    beam may still lose.

    ``constraint`` (from :func:`infergen.constraints.make_constraint`, a list with one per input row, or a
    :class:`~infergen.constraints.RowConstraints`) restricts every hypothesis to text it accepts. Each
    beam carries its own state, forked and reordered with the beams; the mask comes first, before
    ``log_softmax`` and every processor, so scores are sums of log-probabilities renormalised over the
    allowed tokens (``logprobs`` stay the model's own). Candidates the constraint forbids are dropped; a
    hypothesis whose constraint is complete is finished like an EOS one, with finish reason
    ``"constraint"``; an input row for which no valid hypothesis survives finishes ``"no_valid_token"``.

    Same as ``transformers``' ``generate(num_beams=..., length_penalty=..., early_stopping=...)``, token
    for token; differences: padding in the prompt is ignored by the penalties (transformers counts pad ids
    as seen tokens), and the cache is prefilled once per prompt rather than once per beam.
    """
    _check_common(num_beams, num_return_sequences, length_penalty, early_stopping)
    if not isinstance(do_sample, bool):
        raise TypeError(f"do_sample must be True or False, got {do_sample!r}")
    params = SamplingParams.resolve(params, **settings)
    check_stop(params, stopping)
    do_sample = do_sample and not params.is_greedy  # temperature 0 is greedy: beam sampling at T=0 is beam search
    if not do_sample:
        params.require_deterministic("beam_search without do_sample", "only beam_search(do_sample=True) samples")
    if num_beams == 1:  # one beam is greedy search, or plain sampling (as in transformers)
        from .sampling import generate_autoregressive

        return generate_autoregressive(model, input_ids, max_new_tokens, attention_mask=attention_mask,
                                       eos_token_id=eos_token_id, pad_token_id=pad_token_id, generator=generator,
                                       streamer=streamer, stopping=stopping, return_dict=return_dict,
                                       constraint=constraint,
                                       params=params if do_sample else params.replace(temperature=0.0))
    gen = make_generator(params.seed, generator, device=getattr(model, "device", "cpu")) if do_sample else None
    return _search(model, input_ids, max_new_tokens, groups=1, size=num_beams, length_penalty=length_penalty,
                   early_stopping=early_stopping, num_return_sequences=num_return_sequences,
                   pipeline=params.pipeline(sampling=do_sample), rule="v5", do_sample=do_sample, generator=gen,
                   attention_mask=attention_mask, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                   streamer=streamer, stopping=stopping, return_dict=return_dict, strategy="beam",
                   constraint=constraint)


@register_decoder("diverse_beam")
def diverse_beam_search(model, input_ids, max_new_tokens=100, num_beams=4, num_beam_groups=2,
                        diversity_penalty=0.5, length_penalty=1.0, early_stopping=False, num_return_sequences=1, *,
                        attention_mask=None, eos_token_id=None, pad_token_id=None, streamer=None, stopping=None,
                        constraint=None, return_dict=False, params: SamplingParams | None = None, **settings):
    """Diverse (group) beam search: ``num_beams`` beams in ``num_beam_groups`` groups that penalise each other.

    Within a step the groups choose in turn; group ``g`` scores token ``v`` as
    ``log p(v) - diversity_penalty * (number of beams of groups 0..g-1 that chose v at this step)``
    (:func:`apply_hamming_diversity`), then does an ordinary beam-search step with its own
    ``num_beams / num_beam_groups`` beams and its own finished hypotheses. The penalty changes which
    tokens are chosen *and* enters the group's running scores (as in the paper and in transformers), so
    the returned ``scores`` include it. At the end the best ``num_return_sequences`` hypotheses over all
    groups are returned, as in :func:`beam_search`.

    ``num_beam_groups`` must divide ``num_beams``; ``num_beam_groups=1`` (or ``diversity_penalty=0``
    with one group per beam set) is plain beam search. Semantics of transformers 4.x
    ``generate(num_beam_groups=..., diversity_penalty=...)`` (``_group_beam_search``): a group stops
    accepting hypotheses when ``BeamHypotheses.is_done`` would say so, and a stopped group counts as
    having chosen ``pad_token_id``. Differences: ``stopping`` ends hypotheses like EOS (4.x only
    stopped the whole search), and a hypothesis keeps its own EOS id (4.x wrote ``eos_token_id[0]``).
    Deterministic only (transformers 4.x refused sampling here too). ``constraint`` works as in
    :func:`beam_search` (the mask is applied before the diversity penalty and every processor).
    """
    _check_common(num_beams, num_return_sequences, length_penalty, early_stopping)
    check_number("num_beam_groups", num_beam_groups, low=1, high=num_beams, integer=True)
    if num_beams % num_beam_groups:
        raise ValueError(f"num_beam_groups must divide num_beams={num_beams} into equal groups, "
                         f"got {num_beam_groups}")
    check_number("diversity_penalty", diversity_penalty, low=0, high=math.inf, high_open=True)
    if settings.pop("do_sample", False):
        raise ValueError("diverse_beam_search is deterministic: do_sample=True is not supported "
                         "(use beam_search(do_sample=True) for beam sampling)")
    params = SamplingParams.resolve(params, **settings)
    check_stop(params, stopping)
    params.require_deterministic("diverse_beam_search", "only beam_search(do_sample=True) samples")
    pipeline = params.pipeline(sampling=False)
    return _search(model, input_ids, max_new_tokens, groups=num_beam_groups, size=num_beams // num_beam_groups,
                   length_penalty=length_penalty, early_stopping=early_stopping,
                   num_return_sequences=num_return_sequences, pipeline=pipeline, rule="v4",
                   diversity_penalty=diversity_penalty, attention_mask=attention_mask, eos_token_id=eos_token_id,
                   pad_token_id=pad_token_id, streamer=streamer, stopping=stopping, return_dict=return_dict,
                   strategy="diverse_beam", constraint=constraint)
