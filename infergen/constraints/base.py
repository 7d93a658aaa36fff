"""The constraint interface: what a decoder calls, and what a backend implements.

Three layers, from the pattern to the batch:

* a :class:`Constraint` is *compiled* once per (pattern, tokenizer) -- by the teaching automaton in
  :mod:`infergen.constraints.teaching` or a production library (llguidance, outlines-core) -- and is
  never changed afterwards, so one object can serve many requests;
* a :class:`ConstraintState` is one row's position in that pattern: ``constraint.start()`` makes a
  fresh one (cheap), ``advance(token)`` moves it, ``fork()`` copies it (for beam search);
* :class:`RowConstraints` holds one state per batch row (or ``None`` for an unconstrained row) and is
  what the decode loop talks to, once per step::

      rows = as_row_constraints(constraint, batch_size)   # a Constraint, one per row, or None
      ...
      logits = rows.mask(logits)            # disallowed ids -> -inf, first of all the logits processors
      dead = rows.dead()                    # rows where no token at all is allowed: finish "no_valid_token"
      tokens = pick(processors(logits))
      rows.advance(tokens, active=~done)    # every running row consumes its token
      complete = rows.complete()            # only EOS may follow: finish "constraint"

  and beam search, after choosing which beams survive (``beam_idx`` [B * num_beams], repeats allowed)::

      rows = rows.select(beam_idx)          # forked states, in the new order
      rows.advance(next_tokens)

Semantics every backend follows
-------------------------------
* ``allowed()`` of a state is a bool mask over the tokenizer's ids (``constraint.vocab_size``): token
  ``t`` is allowed when the text so far plus ``t``'s bytes can still be extended to a match. The
  EOS ids are allowed *exactly* when the text so far is a complete match (the state *accepts*).
  Special tokens other than EOS are never allowed.
* ``advance(t)`` with an allowed token moves the state; with EOS it *ends* the state (it then allows
  only EOS and accepts); with a token that was not allowed the state becomes *dead* (nothing allowed).
  It never raises for a bad token: a row that went wrong is reported, not a crash.
* A row is **complete** when it accepts and nothing but EOS is allowed (``"\\d{4}"`` after four digits):
  the decoder may finish it with the finish reason ``"constraint"`` without spending a step.
* A row is **dead** when no token is allowed. :meth:`RowConstraints.mask` still leaves it one finite
  logit (its EOS ids) so that softmax and sampling never see an all ``-inf`` row or a NaN; the decoder
  must finish it with ``"no_valid_token"`` (and drop the stand-in token it chose).
"""
from __future__ import annotations

import copy
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from .._validation import check_logits, check_number

__all__ = [
    "BackendConstraint", "BackendState", "Constraint", "ConstraintState", "RowConstraints", "as_row_constraints",
    "is_complete",
]


@runtime_checkable
class ConstraintState(Protocol):
    """One row's position in a compiled constraint. Mutable: ``advance`` changes it in place."""

    constraint: "Constraint"  # what this state walks through (its vocab_size and eos_token_ids)

    def allowed(self) -> torch.Tensor:
        """Bool tensor ``[vocab_size]`` on the CPU: which token ids may come next (EOS iff accepting).
        The caller must not modify it (backends may return a cached or shared tensor)."""

    def accepting(self) -> bool:
        """Is the text so far a complete match (so EOS is allowed)?"""

    def advance(self, token_id: int) -> None:
        """Consume one token. EOS ends the state; a token that was not allowed makes it dead."""

    def fork(self) -> "ConstraintState":
        """An independent copy (the two then advance separately)."""


@runtime_checkable
class Constraint(Protocol):
    """A pattern compiled for one tokenizer. Immutable; ``start()`` gives each row its own state."""

    backend: str          # "llguidance", "outlines", "teaching", ...
    kind: str             # "regex", "json_schema", "grammar" or "choices"
    source: object        # the pattern as given
    vocab_size: int       # the number of token ids the masks cover (len(tokenizer))
    eos_token_ids: tuple  # the ids allowed exactly in accepting states
    # optional: closing_rank, int64 [vocab_size], the order in which budget closing tries tokens
    # (infergen.constraints.budget.closing_rank); without it, by id

    def start(self) -> ConstraintState:
        """A fresh state at the beginning of the pattern."""


def is_complete(state: ConstraintState, allowed: np.ndarray | None = None) -> bool:
    """Does ``state`` accept and allow nothing but EOS? Then the row is finished, reason
    ``"constraint"``, without choosing a token. ``allowed``: the state's mask as a numpy array,
    when the caller has it already (:class:`RowConstraints` keeps one per row, budget closing's walk too).

    This can hold before the first token (``regex=""``, ``choices=[""]``): a decoder asks
    :meth:`RowConstraints.complete` right after :func:`as_row_constraints`, and a row that is complete
    there is finished with zero tokens -- no forward pass is spent on it (none at all if every row is).
    """
    allowed = state.allowed().numpy() if allowed is None else allowed
    others = np.delete(allowed, [e for e in state.constraint.eos_token_ids if e < allowed.size])  # not EOS
    return state.accepting() and not others.any()


class BackendConstraint:
    """A backend's compiled pattern, an automaton over positions (a DFA state number, an ``LLMatcher``):
    a subclass names its ``backend``, gives ``initial`` (where every row starts) and implements
    :meth:`allowed_at`, :meth:`accepts`, :meth:`step` (and :meth:`copy` for a mutable position).
    It also holds the pattern (``kind``, ``source``), the vocabulary's size and EOS ids, and the masks
    every row shares (``eos_mask``: EOS only, after EOS; ``nothing``: a dead row's)."""

    def __init__(self, kind: str, source, vocab, initial):
        self.kind, self.source, self.initial = kind, source, initial
        self.vocab_size, self.eos_token_ids = vocab.size, vocab.eos_token_ids
        self.nothing = torch.zeros(vocab.size, dtype=torch.bool)
        self.eos_mask = torch.isin(torch.arange(vocab.size), torch.tensor(vocab.eos_token_ids))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.kind}={self.source!r})"

    def start(self) -> "BackendState":
        """A fresh row state at the beginning of the pattern."""
        return BackendState(self, self.copy(self.initial))

    def allowed_at(self, position) -> torch.Tensor:
        """The bool ``[vocab_size]`` mask of a live ``position`` (EOS iff it accepts)."""
        raise NotImplementedError

    def accepts(self, position) -> bool:
        """Is the text that led to ``position`` a complete match?"""
        raise NotImplementedError

    def step(self, position, token_id: int):
        """The position after ``token_id`` (not EOS; a matcher moves in place), or None: refused."""
        raise NotImplementedError

    def copy(self, position):
        """An independent copy of ``position`` (a number needs none)."""
        return position


class BackendState:
    """One row of a :class:`BackendConstraint`: its position ``state`` and the flags ``ended`` and
    ``dead``, under the semantics above (an id outside the vocabulary is refused), once for every backend."""

    def __init__(self, constraint: BackendConstraint, state):
        self.constraint, self.state, self.ended, self.dead = constraint, state, False, False

    def allowed(self) -> torch.Tensor:
        """Bool ``[vocab_size]``: which ids may come next (EOS iff accepting); shared, do not modify."""
        if self.dead or self.ended:
            return self.constraint.nothing if self.dead else self.constraint.eos_mask
        return self.constraint.allowed_at(self.state)

    def accepting(self) -> bool:
        """Is the text so far a complete match?"""
        return self.ended or (not self.dead and self.constraint.accepts(self.state))

    def advance(self, token_id: int) -> None:
        """Consume one token: EOS ends an accepting state, a token that was not allowed kills it."""
        if self.dead:
            return
        if token_id in self.constraint.eos_token_ids:  # the end of an accepting row, else a wrong token
            self.ended = self.accepting()
        elif self.ended or not 0 <= token_id < self.constraint.vocab_size:
            self.ended = False
        elif (after := self.constraint.step(self.state, token_id)) is not None:
            self.state = after
            return
        self.dead = not self.ended  # EOS after a match ends the row; every other way here kills it

    def fork(self) -> "BackendState":
        """An independent copy (the two then advance separately)."""
        out = copy.copy(self)
        out.state = self.constraint.copy(self.state)
        return out


class RowConstraints:
    """One :class:`ConstraintState` (or ``None``: unconstrained) per batch row; see the module docstring.

    The allowed-token mask of each row is computed at most once per position (backends such as
    llguidance compute it lazily) and reused by :meth:`mask`, :meth:`complete` and :meth:`dead`.
    """

    def __init__(self, states: Sequence[ConstraintState | None], budget=None):
        self.states, n = list(states), len(states)  # as_row_constraints has checked what they come from
        self._allowed: list[np.ndarray | None] = [None] * n
        budget = list(budget) if isinstance(budget, (list, tuple)) else [budget] * n
        if len(budget) != n or any(b is not None and (not isinstance(b, int) or b < 0) for b in budget):
            raise ValueError(f"budget must be None, a token count >= 0 or one per row ({n}), got {budget}")
        self.budget: list[int | None] = budget  # max new tokens per row: budget closing (see .budget)
        self.used = [0] * n                      # tokens each row has consumed
        self._estimate: list[tuple[int, int] | None] = [None] * n  # (closing path length, at used)
        self._closed, self._no_fit = [False] * n, [False] * n  # see closed() and no_fit()

    def __len__(self) -> int:
        return len(self.states)

    def __repr__(self) -> str:
        return f"RowConstraints({len(self)} rows, {sum(s is not None for s in self.states)} constrained)"

    # ---- per-row facts ---------------------------------------------------------------------------
    def _row(self, i: int) -> np.ndarray:
        # numpy view of the state's CPU tensor: a 49k-element op through torch's thread pool costs
        # more in waiting for threads than in work, on a busy machine
        if (cached := self._allowed[i]) is None:
            state = self.states[i]
            assert state is not None, "an unconstrained row has no mask"
            cached = self._allowed[i] = state.allowed().numpy()
        return cached

    def complete(self, device=None) -> torch.Tensor:
        """Bool ``[B]``: rows that accept and allow nothing but EOS (finish reason ``"constraint"``).
        A row that already consumed EOS counts as complete too; decoders ask only about running rows.
        Ask it before the first token as well: ``regex=""`` is complete there (see :func:`is_complete`)."""
        out = [s is not None and s.accepting() and is_complete(s, self._row(i))
               for i, s in enumerate(self.states)]
        return torch.tensor(out, dtype=torch.bool, device=device)

    def dead(self, device=None) -> torch.Tensor:
        """Bool ``[B]``: rows where no token at all is allowed (finish reason ``"no_valid_token"``)."""
        out = [s is not None and not self._row(i).any() for i, s in enumerate(self.states)]
        return torch.tensor(out, dtype=torch.bool, device=device)

    def closed(self, device=None) -> torch.Tensor:
        """Bool ``[B]``: rows where budget closing refused the model's most likely allowed token at least
        once, because no completion after it fits in the tokens left (see :mod:`.budget`)."""
        return torch.tensor(self._closed, dtype=torch.bool, device=device)

    def no_fit(self, device=None) -> torch.Tensor:
        """Bool ``[B]``: rows where budget closing found no completion that fits in the tokens left (such a
        row allows no token: its decoder ends it with finish reason ``"budget"``)."""
        return torch.tensor(self._no_fit, dtype=torch.bool, device=device)

    def _close(self, i: int, logits: torch.Tensor) -> None:
        """Budget closing of row ``i``, whose ``logits`` [V] they are (see :mod:`.budget`): near its limit,
        narrow its cached mask to
        the tokens after which a closing path still fits; to nothing when none does (the row is dead)."""
        from .budget import MARGIN, TOP_K, closing_path  # budget imports this module
        state, budget = self.states[i], self.budget[i]
        if state is None or budget is None:
            return
        left, est = budget - self.used[i], self._estimate[i]
        if left <= 0 or est is not None and est[0] + MARGIN * (self.used[i] - est[1] + 1) < left:
            return
        rank = getattr(state.constraint, "closing_rank", None)  # None: by id
        path = closing_path(state, left, rank)
        self._no_fit[i] = path is None
        if path is not None:
            self._estimate[i] = (len(path), self.used[i])
            if not path or len(path) + MARGIN < left:
                return
        raw = self._row(i)
        out = np.zeros_like(raw)
        if path:
            out[path[0]] = True
            scores = logits[:raw.size].float().cpu().numpy()  # a host copy, in the window only
            top = np.argsort(np.where(raw[:scores.size], -scores, np.inf), kind="stable")[:TOP_K]
            for t in (int(t) for t in top if raw[t] and t != path[0]):
                after = state.fork()
                after.advance(t)
                out[t] = closing_path(after, left - 1, rank) is not None
            self._closed[i] = self._closed[i] or not out[top[0]]
        self._allowed[i] = out

    def precompute(self) -> None:
        """Compute every row's mask now and keep it for this position. On a GPU, call it right after
        launching the next forward pass: the CPU work then overlaps the GPU's (as serving engines do)."""
        for i, s in enumerate(self.states):
            if s is not None:
                self._row(i)

    # ---- the three calls of a decode step --------------------------------------------------------
    def allowed(self, width: int, device=None, eos_if_dead: bool = False) -> torch.Tensor:
        """Bool ``[B, width]``: the allowed ids of every row, ``width`` being the logits' last dimension.
        Ids at or beyond a constraint's ``vocab_size`` are never allowed; unconstrained rows allow all.
        ``eos_if_dead``: :meth:`mask`'s stand-in, a dead row allows its EOS ids."""
        out = np.ones((len(self.states), width), dtype=np.bool_)  # unconstrained rows allow all
        for i, s in enumerate(self.states):
            if s is not None:
                row = self._row(i)[:width]
                out[i] = np.pad(row, (0, width - row.size))  # False beyond the constraint's vocab_size
                if eos_if_dead and not row.any():
                    out[i, [e for e in s.constraint.eos_token_ids if e < width]] = True
        return torch.from_numpy(out).to(device, non_blocking=True)

    def mask(self, logits: torch.Tensor, row: int | None = None) -> torch.Tensor:
        """A copy of ``logits`` [B, V] with every disallowed id set to ``-inf``; with ``row``, ``logits``
        [1, V] are that one row's (a batcher's admission: budget closing reads the row's own logits).

        Dead rows keep their EOS ids finite (a stand-in choice, so no row is all ``-inf``); the decoder
        finishes them with ``"no_valid_token"``. Any float dtype and device. Call it on the raw
        logits, before every other processor: penalties and temperature keep ``-inf`` at ``-inf``, and
        the truncation rules (top-k, top-p, ...) then choose among allowed tokens only.
        """
        rows = range(len(self.states)) if row is None else range(row, row + 1)
        if check_logits(logits).dim() != 2 or logits.shape[0] != len(rows):
            raise ValueError(f"logits must be [B, V] with B = {len(rows)} rows (one per constraint), "
                             f"got {tuple(logits.shape)}; after reordering beams, call select(index) first")
        for k, i in enumerate(rows):
            self._close(i, logits[k])
        allowed = self.allowed(logits.shape[1], logits.device, eos_if_dead=True)
        return logits.masked_fill(~allowed[rows.start:rows.stop], float("-inf"))

    def advance(self, tokens: torch.Tensor, active: torch.Tensor | None = None) -> None:
        """Every row whose ``active`` flag is set consumes its token from ``tokens`` [B] (in place).

        ``active`` (bool [B], default all) excludes finished rows, whose tokens are padding.
        """
        toks = torch.as_tensor(tokens).tolist()
        act = [True] * len(toks) if active is None else torch.as_tensor(active).tolist()
        if not len(toks) == len(act) == len(self.states):
            raise ValueError(f"tokens and active must have one entry per row ({len(self.states)}), "
                             f"got {len(toks)} tokens and {len(act)} flags")
        for i, (s, t, a) in enumerate(zip(self.states, toks, act)):
            if s is not None and a:
                s.advance(int(t))
                self._allowed[i] = None
                self.used[i] += 1

    def reset(self, row: int, state: ConstraintState | None, budget: int | None) -> None:
        """Row ``row`` starts afresh with ``state`` (None: unconstrained) and its own ``budget`` (in place:
        a batcher's slot changes hands; the other rows keep everything they know)."""
        self.states[row], self.budget[row], self.used[row], self._allowed[row] = state, budget, 0, None
        self._estimate[row], self._closed[row], self._no_fit[row] = None, False, False

    @classmethod
    def concat(cls, parts: Sequence["RowConstraints"]) -> "RowConstraints":
        """The rows of ``parts`` one after the other, sharing their states (not forked: use :meth:`select`
        on the result for independent copies). Beam search gathers candidates of several groups this way."""
        out = cls([s for p in parts for s in p.states], [b for p in parts for b in p.budget])
        for name in ("_allowed", "used", "_estimate", "_closed", "_no_fit"):
            setattr(out, name, [x for p in parts for x in getattr(p, name)])
        return out

    def select(self, index) -> "RowConstraints":
        """New rows ``[index[0], index[1], ...]``, each an independent fork (beam search reorders and
        duplicates its beams this way; the batch size may change). ``self`` is left unchanged."""
        rows = [check_number("index", i, low=0, high=len(self.states) - 1, integer=True)  # row numbers
                for i in (index.tolist() if isinstance(index, torch.Tensor) else index)]
        out = RowConstraints([None if (s := self.states[j]) is None else s.fork() for j in rows])
        for name in ("budget", "_allowed", "used", "_estimate", "_closed", "_no_fit"):  # same positions:
            setattr(out, name, [getattr(self, name)[j] for j in rows])  # the masks and estimates hold
        return out


def as_row_constraints(constraint, batch_size: int, budget=None) -> RowConstraints | None:
    """Normalise a decoder's ``constraint=`` argument to a fresh :class:`RowConstraints` (or None).

    Accepts ``None``; one :class:`Constraint` (every row gets its own state); a sequence of
    ``batch_size`` constraints or ``None`` (a ragged batch, one per row); or a :class:`RowConstraints`
    with ``batch_size`` rows (forked, so the caller's object is not advanced; it keeps its own budget, and
    ``budget`` is not used).
    ``budget`` (the decoder's ``max_new_tokens``, or one per row) switches on budget closing
    (:mod:`infergen.constraints.budget`): rows then finish complete within it whenever they can.
    """
    if constraint is None:
        return None
    if isinstance(constraint, Constraint):
        constraint = [constraint] * batch_size  # every row starts its own state
    if not isinstance(constraint, (list, tuple, RowConstraints)):
        raise TypeError("constraint must be a Constraint (make_constraint(...)), a list of them (one per "
                        f"row), a RowConstraints or None, got {type(constraint).__name__}")
    if len(constraint) != batch_size:
        raise ValueError(f"constraint must have one entry per row ({batch_size}), got {len(constraint)}")
    if isinstance(constraint, RowConstraints):
        return constraint.select(range(batch_size))  # its own budget: ``budget`` is for fresh states
    for i, c in enumerate(constraint):
        if c is not None and not isinstance(c, Constraint):
            raise TypeError(f"constraint[{i}] must be a Constraint or None, got {type(c).__name__}")
    return RowConstraints([None if c is None else c.start() for c in constraint], budget)
