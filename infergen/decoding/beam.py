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
from ..constraints.base import RowConstraints, as_row_constraints
from ..params import SamplingParams, is_greedy
from ..pipeline import LogitsPipeline
from ..processors import check_finite_row
from ..registry import register_decoder
from .base import GenerationOutput, check_stop, make_generator, prepare
from .beam_state import NO_VALID, Beams
from .sampling import generate_autoregressive
from .steps import REASONS, FinishReason, Sampler, decode_one, emit, end_stream, last_logits, log_probs, prefill



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
    previous = previous_tokens.to(scores.device)
    ones = scores.new_ones(previous.shape)
    counts = scores.new_zeros(previous.shape[0], scores.shape[-1]).scatter_add_(1, previous, ones)  # [R, V]
    return scores - (diversity_penalty * counts).repeat_interleave(beams_per_row, 0)  # [R * beams_per_row, V]


# --------------------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------------------
def _check_common(num_beams, num_return_sequences, length_penalty, early_stopping):
    check_number("num_beams", num_beams, low=1, integer=True)
    check_number("num_return_sequences", num_return_sequences, low=1, high=num_beams, integer=True)
    check_number("length_penalty", length_penalty, low=-math.inf, high=math.inf, low_open=True, high_open=True)
    if not (isinstance(early_stopping, bool) or (isinstance(early_stopping, str) and early_stopping == "never")):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")


# --------------------------------------------------------------------------------------------------------
# The search loop shared by both strategies
# --------------------------------------------------------------------------------------------------------
def _search(model, input_ids, max_new_tokens, sampler: Sampler, *, groups, size, rule, strategy, length_penalty,
            early_stopping, num_return_sequences, diversity_penalty=0.0, attention_mask=None, eos_token_id=None,
            pad_token_id=None, streamer=None, stopping=None, return_dict=False, constraint=None):
    """Run ``groups`` groups of ``size`` beams per input row (see :class:`.Beams`) and assemble the output.

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
    check_stop(sampler.params, stopping)
    setup, cache = prepare(model, input_ids, max_new_tokens, attention_mask=attention_mask,
                           eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    model, (B, T), dev = setup.model, setup.input_ids.shape, setup.input_ids.device
    vocab = model.config.vocab_size
    # budget closing per beam, unless the caller's RowConstraints brings its own budget (or None: off)
    rows = as_row_constraints(constraint, B, None if isinstance(constraint, RowConstraints) else max_new_tokens)
    if rows is not None:  # every beam gets its own state, forked from its input row's
        rows = rows.select(torch.arange(B).repeat_interleave(num_beams))
    beams = Beams(setup, groups, size, length_penalty=length_penalty, early_stopping=early_stopping, rule=rule,
                  stopping=stopping, do_sample=not sampler.greedy, generator=sampler.generator,
                  constraint=rows)
    if beams.n_cand > size * vocab:
        raise ValueError(f"num_beams={num_beams} is too large for a vocabulary of {vocab} tokens: each step needs "
                         f"{beams.n_cand} distinct candidates per group")

    # Hamming diversity joins the pipeline where transformers 4.x had it: after the bias, before penalties.
    if groups > 1 and diversity_penalty > 0:  # `seen`: the tokens the earlier groups chose at this step
        first = next((n for n, _ in sampler.pipeline.steps if n != "logit_bias"), None)
        sampler.pipeline.add("diversity", lambda z, ctx: apply_hamming_diversity(
            z, seen, diversity_penalty, beams_per_row=size), before=first)
    prompt_ids = setup.prompt_ids_for_penalties.repeat_interleave(size, 0)  # [B * size, T]

    step = -1  # the last step run: step + 1 steps in all
    with torch.inference_mode():
        if max_new_tokens > 0:
            logits = last_logits(prefill(model, setup.input_ids, cache, setup.attention_mask))
            logits = logits.repeat_interleave(num_beams, 0)  # [B * num_beams, V], beams of row 0 first
            cache.repeat(num_beams)
        for step in range(max_new_tokens):
            logp_all = log_probs(check_finite_row(logits)).view(B, groups, size, vocab)  # (a NaN step is refused)
            rows = beams.constraint  # every beam's constraint state (None without a constraint)
            scored = logp_all if rows is None else log_probs(rows.mask(logits)).masked_fill(  # what the beams score:
                rows.dead(dev)[:, None], float("-inf")).view(B, groups, size, vocab)  # renormalised over allowed tokens
            was_open, all_ended = beams.open.clone(), True  # (groups only close themselves)
            seen = torch.empty(B, 0, dtype=torch.long, device=dev)  # what later groups' Hamming penalty counts
            for g in range(groups):
                generated = beams.run_tokens[:, g, :, :step].reshape(B * size, step)
                processed = sampler.process(scored[:, g].reshape(B * size, vocab), prompt_ids, generated)
                tok, ended = beams.advance(g, step, processed.view(B, size, vocab), logp_all[:, g])
                # a group that had already stopped emits padding in transformers 4.x; that is what it counts
                seen = torch.cat([seen, torch.where(was_open[:, g, None], tok, setup.pad_token_id)], 1)
                all_ended &= ended
            if beams.finished() or all_ended:
                break
            cache.reorder(beams.parents.reshape(-1))
            if rows is not None:
                beams.keep_constraints()
            logits = last_logits(decode_one(model, beams.run_tokens[..., step].reshape(-1), cache))

    n = num_return_sequences
    tokens, logprobs, scores, lengths, reasons, group = beams.best(n)
    if beams.constraint is not None:  # no valid hypothesis: budget closing found no completion that fits
        no_fit = beams.constraint.no_fit(dev).view(B, -1).any(1).repeat_interleave(n)
        reasons = torch.where((reasons == NO_VALID) & no_fit, REASONS.index(FinishReason.BUDGET), reasons)
    width = int(lengths.max())
    sequences = torch.cat([setup.input_ids.repeat_interleave(n, 0), tokens[:, :width]], 1)
    for col in range(width):
        emit(streamer, sequences[:, T + col])
    end_stream(streamer)
    if not return_dict:
        return sequences
    info = {"strategy": strategy, "num_beams": num_beams, "steps": step + 1, "num_return_sequences": n}
    if groups > 1:
        info.update(num_beam_groups=groups, group=group.tolist())
    return GenerationOutput(sequences=sequences, logprobs=logprobs[:, :width], prompt_length=T,
                            finish_reason=[REASONS[r] for r in reasons.tolist()],
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
    do_sample = do_sample and not is_greedy(params.temperature)  # beam sampling at temperature 0 is beam search
    if not do_sample:
        params.require_deterministic("beam_search without do_sample", "only beam_search(do_sample=True) samples")
    io = dict(attention_mask=attention_mask, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
              streamer=streamer, stopping=stopping, return_dict=return_dict, constraint=constraint)
    if num_beams == 1:  # one beam is greedy search, or plain sampling (as in transformers)
        return generate_autoregressive(model, input_ids, max_new_tokens, generator=generator,
                                       params=params if do_sample else params.replace(temperature=0.0), **io)
    gen = make_generator(params.seed, generator, device=getattr(model, "device", "cpu")) if do_sample else None
    sampler = Sampler(params, LogitsPipeline.from_params(params, sampling=do_sample), gen)
    return _search(model, input_ids, max_new_tokens, sampler, groups=1, size=num_beams, rule="v5", strategy="beam",
                   length_penalty=length_penalty, early_stopping=early_stopping,
                   num_return_sequences=num_return_sequences, **io)


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
    params.require_deterministic("diverse_beam_search", "only beam_search(do_sample=True) samples")
    sampler = Sampler(params, LogitsPipeline.from_params(params, sampling=False))
    return _search(model, input_ids, max_new_tokens, sampler, groups=num_beam_groups, size=num_beams // num_beam_groups,
                   rule="v4", strategy="diverse_beam", length_penalty=length_penalty, early_stopping=early_stopping,
                   num_return_sequences=num_return_sequences, diversity_penalty=diversity_penalty,
                   attention_mask=attention_mask, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                   streamer=streamer, stopping=stopping, return_dict=return_dict, constraint=constraint)
