"""The state of a beam search: running beams and finished hypotheses of every (row, group).

:class:`Beams` is the bookkeeping behind :func:`~infergen.decoding.beam.beam_search` and
:func:`~infergen.decoding.beam.diverse_beam_search` (whose module docstring explains the algorithm):
one step of a group is :meth:`Beams.advance`, in five readable pieces -- choose the candidates, see
which end and why (a :class:`~infergen.decoding.steps.FinishReason` code), keep the best running ones,
merge the ended ones into the finished hypotheses, and apply the early-stopping rule.
"""
from __future__ import annotations

import torch

from ..constraints.base import RowConstraints
from .steps import REASONS, FinishReason

#: The score transformers gives impossible beams: finite, so sums never turn into NaN.
NEG = -1.0e9


def along_beams(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Gather ``t`` [B, n, ...] along the beam dimension with ``index`` [B, m] -> [B, m, ...]."""
    return t.gather(1, index.view(*index.shape, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:]))


#: Finish-reason codes of the hypotheses (indices into :data:`~infergen.decoding.steps.REASONS`).
LENGTH, EOS, STOP, CONSTRAINT, NO_VALID = (REASONS.index(r) for r in (
    FinishReason.LENGTH, FinishReason.EOS, FinishReason.STOP, FinishReason.CONSTRAINT, FinishReason.NO_VALID_TOKEN))


class Beams:
    """State of ``groups`` beam sets of ``size`` beams for each of ``B`` input rows (plain beam search:
    one group of ``num_beams``). Every tensor is indexed ``[row, group, beam, ...]``.

    Running beams: ``run_tokens`` (generated ids, padded), ``run_logprobs`` (the model's log-prob of each
    token), ``run_scores`` (sum of processed log-probs). Finished hypotheses, kept sorted best first:
    ``fin_*`` with ``fin_scores`` length-normalised, ``fin_reason`` a :data:`~infergen.decoding.steps.REASONS`
    code and ``fin_done`` marking slots that hold one. ``open[row, group]`` is False once no better
    hypothesis can appear (no more are accepted).

    ``rule`` picks the early-stop test: ``"v5"`` compares the best *running* beam with the worst finished
    hypothesis (transformers 5 beam search), ``"v4"`` the best *candidate* of the step, EOS ones included
    (transformers 4 ``BeamHypotheses.is_done``, used by group beam search). ``do_sample`` means beam
    sampling (from ``generator``).

    ``constraint``: one constraint state per beam (a :class:`~infergen.constraints.RowConstraints` of
    ``B * groups * size`` rows, in the order of the tensors). Candidates it forbids are dropped; every
    candidate advances a fork of its parent beam's state (``forks``), and the candidates whose constraint
    is then complete end like EOS ones (reason ``"constraint"``); :meth:`keep_constraints` makes the
    survivors' forks the beams' states at the end of a step.
    """

    def __init__(self, setup, groups, size, *, length_penalty, early_stopping, rule, stopping=None,
                 do_sample=False, generator=None, constraint: RowConstraints | None = None):
        B, max_new, dev, pad = setup.input_ids.shape[0], setup.max_new_tokens, setup.input_ids.device, setup.pad_token_id
        shape = (B, groups, size)
        self.size, self.max_new, self.eos, self.stopping = size, max_new, setup.eos, stopping
        self.n_cand = max(2, 1 + setup.eos.numel()) * size  # candidates per step: see the beam module
        self.length_penalty, self.early_stopping, self.rule = length_penalty, early_stopping, rule
        self.do_sample, self.generator, self.constraint = do_sample, generator, constraint
        self.forks: list[RowConstraints] = []  # per group, this step: every candidate's advanced state
        self.kept: list[torch.Tensor] = []  # per group, this step: which candidates it kept [B, size]
        self.parents = torch.zeros(shape, dtype=torch.long, device=dev)  # each survivor's parent's cache row
        self.run_tokens = torch.full(shape + (max_new,), pad, dtype=torch.long, device=dev)
        self.run_logprobs = torch.zeros(shape + (max_new,), device=dev)
        self.run_scores = torch.full(shape, NEG, device=dev)
        self.run_scores[:, :, 0] = 0.0  # only the first beam of each group is alive at the start
        self.fin_tokens = self.run_tokens.clone()
        self.fin_logprobs = self.run_logprobs.clone()
        # no step at all (max_new_tokens 0): each hypothesis is the prompt itself, score 0, reason length
        self.fin_scores = torch.full(shape, NEG if max_new else 0.0, device=dev)
        self.fin_lengths = torch.zeros(shape, dtype=torch.long, device=dev)
        # a slot that never receives a hypothesis: under a constraint, no valid text was found
        no_valid = constraint is not None and max_new > 0
        self.fin_reason = torch.full_like(self.fin_lengths, NO_VALID if no_valid else LENGTH)
        self.fin_done = torch.zeros(shape, dtype=torch.bool, device=dev)
        self.open = torch.ones(B, groups, dtype=torch.bool, device=dev)

    def advance(self, g: int, step: int, processed: torch.Tensor, raw_logp: torch.Tensor):
        """One step of group ``g``: ``processed`` / ``raw_logp`` are [B, size, V]. Returns
        ``(tokens [B, size], all_candidates_ended: bool)``; ``parents[:, g]`` then holds the survivors'
        parent beams as rows of the ``B * groups * size``-row cache (what ``cache.reorder`` takes).
        """
        B, size, V = processed.shape
        cand, idx = self._candidates((processed + self.run_scores[:, g, :, None]).reshape(B, size * V))
        parent, token = idx // V, idx % V
        # each candidate's parent beam as a cache row: row b * groups * size + g * size + parent
        row = parent + (torch.arange(B, device=idx.device)[:, None] * self.open.shape[1] + g) * size
        hist = along_beams(self.run_tokens[:, g], parent)  # [B, n_cand, max_new]: each candidate's tokens
        hist[:, :, step] = token
        hist_lp = along_beams(self.run_logprobs[:, g], parent)
        hist_lp[:, :, step] = raw_logp.reshape(B, size * V).gather(-1, idx)
        reason, live = self._endings(step, cand, row, token, hist)
        ended = ((reason != LENGTH) | (step + 1 == self.max_new)) & live
        keep = self._keep_running(g, cand, reason, live, hist, hist_lp)
        if self.constraint is not None:
            self.kept.append(keep)
        self._add_finished(g, step, cand, ended, reason, hist, hist_lp)
        self._update_open(g, step, cand)
        self.parents[:, g] = row.gather(-1, keep)
        return self.run_tokens[:, g, :, step], bool((ended | ~live).all())

    def _candidates(self, total: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's candidates of every row, best first: ``(scores, flat indices)`` [B, n_cand] among
        ``total`` [B, size * V] -- the top ``n_cand``, or (beam sampling) ``n_cand`` draws without
        replacement from ``softmax(total)``."""
        if not self.do_sample:
            return total.topk(self.n_cand, -1)
        probs = torch.softmax(total, -1)
        support = (probs > 0).sum(-1, keepdim=True)
        if self.constraint is None and int(support.min()) < self.n_cand:
            raise ValueError(f"beam sampling draws {self.n_cand} distinct candidates per row (2 * num_beams) but the "
                             f"filters leave only {int(support.min())}: raise top_k / top_p or lower num_beams")
        # under a constraint, a row with fewer allowed tokens than candidates takes them all, then -inf ones
        # (which the caller drops); the draws of such a row (from a uniform stand-in) are not used
        few = support < self.n_cand
        everything = torch.where(probs > 0, 2.0, (total == float("-inf")).float()).topk(self.n_cand, -1).indices
        drawn = torch.multinomial(torch.where(few, 1.0, probs), self.n_cand, generator=self.generator)
        idx = torch.where(few, everything, drawn)
        cand, order = total.gather(-1, idx).sort(-1, descending=True)
        return cand, idx.gather(-1, order)

    def _endings(self, step, cand, row, token, hist):
        """Why each candidate would end now (a REASONS code; ``LENGTH`` = it does not) and which are live
        (under a constraint: not forbidden, not the extension of a never-started beam). Under a constraint,
        every candidate advances a fork of its parent beam's state (``row``: the parent's index among all
        beams) with its token, to see whether its constraint is then complete; the forks (``B * n_cand``,
        row-major) wait in ``forks``."""
        B, n_cand = token.shape
        live = cand > NEG / 2 if self.constraint is not None else torch.ones_like(token, dtype=torch.bool)
        is_eos = torch.isin(token, self.eos) & live
        stop = complete = torch.zeros_like(is_eos)  # (EOS comes first, then stop, then complete: see reason)
        if self.stopping is not None:
            stop = self.stopping(hist[:, :, :step + 1].reshape(B * n_cand, step + 1)).to(live.device)
            stop = stop.view(B, n_cand) & live
        if self.constraint is not None:  # every live candidate advances a fork of its parent beam's state
            forks = self.constraint.select(row.reshape(-1).cpu())
            forks.advance(token.reshape(-1).cpu(), active=(live & ~is_eos).reshape(-1).cpu())
            self.forks.append(forks)  # kept until the step's survivors are known (keep_constraints)
            complete = forks.complete(live.device).view(B, n_cand) & live
        reason = torch.where(is_eos, EOS, torch.where(stop, STOP, torch.where(complete, CONSTRAINT, LENGTH)))
        return reason, live

    def keep_constraints(self):
        """After every group's step: the survivors' advanced states become the beams' (in their new order)."""
        B, groups = self.open.shape
        # [B, groups, size]: each survivor's position among the forks of every group, concatenated
        index = (torch.stack(self.kept, 1).cpu() + torch.arange(groups)[:, None] * (B * self.n_cand)
                 + torch.arange(B)[:, None, None] * self.n_cand)
        self.constraint = RowConstraints.concat(self.forks).select(index.reshape(-1).tolist())
        self.forks, self.kept = [], []

    def _keep_running(self, g, cand, reason, live, hist, hist_lp) -> torch.Tensor:
        """The next running beams of group ``g``: the best candidates that did not end. (At the last step
        every candidate ends by length, but the running beams still say which tokens the group chose, for
        diversity.) Returns their positions among the candidates."""
        run_cand = (cand + (reason != LENGTH).float() * NEG).masked_fill(~live, float("-inf"))
        keep = run_cand.topk(self.size, -1).indices
        self.run_tokens[:, g] = along_beams(hist, keep)
        self.run_logprobs[:, g] = along_beams(hist_lp, keep)
        self.run_scores[:, g] = run_cand.gather(-1, keep)
        return keep

    def _add_finished(self, g, step, cand, ended, reason, hist, hist_lp):
        """Merge the ended candidates among the top ``size`` into group ``g``'s finished hypotheses, scored
        ``sum_logprobs / length ** length_penalty`` (none once the group is closed, or full with
        ``early_stopping=True``)."""
        new = ended & (torch.arange(cand.shape[1], device=cand.device) < self.size)
        scores = cand / ((step + 1) ** self.length_penalty)
        full = self.fin_done[:, g].all(-1, keepdim=True)
        for refused in (full & (self.early_stopping is True), ~self.open[:, g, None], ~new):
            scores = scores + refused.float() * NEG
        best = torch.cat([self.fin_scores[:, g], scores], 1).topk(self.size, -1).indices
        for name, fresh in (("fin_scores", scores), ("fin_tokens", hist), ("fin_logprobs", hist_lp),
                            ("fin_lengths", torch.full_like(reason, step + 1)), ("fin_reason", reason),
                            ("fin_done", new)):
            table = getattr(self, name)
            table[:, g] = along_beams(torch.cat([table[:, g], fresh], 1), best)

    def _update_open(self, g, step, cand):
        """Close the (row, group)s that can no longer improve (the early-stopping rule)."""
        lp = self.length_penalty
        length = self.max_new if (self.early_stopping == "never" and lp > 0) else step + 1
        if self.rule == "v5":
            best_possible = self.run_scores[:, g, :1] / (length ** lp)
            worst = torch.where(self.fin_done[:, g], self.fin_scores[:, g].min(-1, keepdim=True).values, NEG)
            self.open[:, g] &= (best_possible > worst).any(-1)
        else:
            worst = self.fin_scores[:, g].min(-1).values
            done = self.fin_done[:, g].all(-1) & ((self.early_stopping is True) | (worst >= cand[:, 0] / (length ** lp)))
            self.open[:, g] &= ~done

    def finished(self) -> bool:
        """Is every (row, group) closed (or, with ``early_stopping=True``, full)?"""
        return not bool(self.open.any()) or (self.early_stopping is True and bool(self.fin_done.all()))

    def best(self, n: int):
        """The ``n`` best finished hypotheses of every row: (tokens, logprobs, scores, lengths, reasons, group),
        each [B * n, ...], ordered best first within a row."""
        order = self.fin_scores.flatten(1, 2).sort(dim=-1, descending=True, stable=True).indices[:, :n]  # [B, n]
        tables = (self.fin_tokens, self.fin_logprobs, self.fin_scores, self.fin_lengths, self.fin_reason)
        return (*(along_beams(t.flatten(1, 2), order).flatten(0, 1) for t in tables),
                (order // self.size).reshape(-1))  # a slot's group: its position among the groups' slots

