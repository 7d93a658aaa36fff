"""Constrained decoding from scratch: a regular expression becomes a table of allowed tokens.

Four steps, one function each, then a per-row state that walks the result:

1. :func:`parse` -- the pattern becomes a tree (a small recursive-descent parser).
2. :class:`NFA` -- Thompson's construction: every piece of the tree becomes a little automaton with
   one entry and one exit, glued to its neighbours by ε-moves (moves that read nothing).
3. :func:`determinize` -- the subset construction: one DFA state is the *set* of NFA states the input
   could have led to, so the DFA has exactly one next state per byte.
4. :func:`token_masks` -- for every DFA state and every token of the vocabulary, walk the token's bytes
   through the DFA. The token is allowed when the walk does not fall into the dead state. A token
   may cross several states (``"2024"`` is one token but four digits of ``\\d{4}``): the walk handles
   that, which is exactly what a character-level mask would get wrong.

The table from step 4 is computed once per (pattern, tokenizer); a decoding step is then one row
lookup (:meth:`TeachingConstraint.allowed_at`), and consuming a token walks its few bytes.

**Bytes, not characters.** Byte-level BPE tokenizers (SmolLM2, GPT-2, Llama 3) have tokens that are
half of a UTF-8 character, so the automaton reads bytes: a literal ``é`` is the two bytes C3 A9, and
``.`` is "one whole UTF-8 character except a newline" (a small sub-automaton). For ASCII text a byte is
a character and nothing changes.

**The subset** of regular expressions it reads is described in :mod:`.regex_parse`, step 1.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from .base import BackendConstraint
from .regex_parse import parse
from .vocabulary import TokenVocabulary

__all__ = ["DFA", "NFA", "TeachingCompiler", "TeachingConstraint", "determinize", "parse",
           "regex_to_dfa", "token_masks"]

DEAD = 0  # the DFA state with no way back to a match (every DFA below has it as state 0)
MAX_DFA_STATES = 20_000


# ---------------------------------------------------------------------------------------------------
# 2. Thompson's construction: an NFA over bytes with ε-moves.
# ---------------------------------------------------------------------------------------------------
def _span(lo: int, hi: int) -> frozenset:
    return frozenset(range(lo, hi + 1))


CONTINUATION = _span(0x80, 0xBF)
# Every well-formed non-ASCII UTF-8 character, as byte-set sequences (the Unicode standard's table 3-7).
# A lead byte alone is not enough: E0 80 80 (an overlong "\0"), ED A0 80 (a surrogate) and F4 90 80 80
# (above U+10FFFF) are not UTF-8, and Python's re and llguidance never produce them.
UTF8_SEQUENCES = (
    (_span(0xC2, 0xDF), CONTINUATION),
    (_span(0xE0, 0xE0), _span(0xA0, 0xBF), CONTINUATION),
    (_span(0xE1, 0xEC), CONTINUATION, CONTINUATION),
    (_span(0xED, 0xED), _span(0x80, 0x9F), CONTINUATION),
    (_span(0xEE, 0xEF), CONTINUATION, CONTINUATION),
    (_span(0xF0, 0xF0), _span(0x90, 0xBF), CONTINUATION, CONTINUATION),
    (_span(0xF1, 0xF3), CONTINUATION, CONTINUATION, CONTINUATION),
    (_span(0xF4, 0xF4), _span(0x80, 0x8F), CONTINUATION, CONTINUATION),
)


class NFA:
    """Thompson's construction for a :func:`parse` tree: one entry state, one exit state (the match).

    ``moves[q]``: list of (set of bytes, next state); ``eps[q]``: states reachable reading nothing;
    ``start`` and ``end``: the entry and exit of the whole ``tree``."""

    def __init__(self, tree):
        self.moves: list[list[tuple[frozenset, int]]] = []
        self.eps: list[list[int]] = []
        self.start, self.end = self.fragment(tree)

    def new_state(self) -> int:
        """A new state, with no moves yet; its number."""
        self.moves.append([])
        self.eps.append([])
        return len(self.moves) - 1

    def then(self, q: int, node) -> int:
        """Add the automaton of ``node``, entered from ``q`` by an ε-move; return its exit."""
        entry, exit_ = self.fragment(node)
        self.eps[q].append(entry)
        return exit_

    def fragment(self, node) -> tuple[int, int]:
        """Add the automaton of ``node``; return its (entry, exit) states."""
        kind = node[0]
        if kind == "chars":  # the ASCII set, then any non-ASCII character: each row of the UTF-8 table
            s, e = self.new_state(), self.new_state()
            for sequence in ([(node[1],)] if node[1] else []) + (list(UTF8_SEQUENCES) if node[2] else []):
                states = [s, *(self.new_state() for _ in sequence[:-1]), e]  # one move per byte, s to e
                for q, byteset, r in zip(states, sequence, states[1:]):
                    self.moves[q].append((byteset, r))
            return s, e
        if kind == "cat":
            s = e = self.new_state()
            for child in node[1]:
                e = self.then(e, child)
            return s, e
        if kind == "alt":
            s, e = self.new_state(), self.new_state()
            for child in node[1]:
                self.eps[self.then(s, child)].append(e)
            return s, e
        _, child, lo, hi = node  # the last kind, "rep"
        optional = ("alt", [child, ("cat", [])])  # one copy or none
        # the lo mandatory copies, then hi - lo optional ones (x{1,3} is x x? x?) ...
        s, e = self.fragment(("cat", [child] * lo + [optional] * (0 if hi is None else hi - lo)))
        if hi is None:  # ... or a loop at their exit: any number of further copies
            self.eps[self.then(e, child)].append(e)
        return s, e


# ---------------------------------------------------------------------------------------------------
# 3. The subset construction: NFA -> DFA (state 0 is the dead state, the empty set of NFA states).
#    Every Thompson state can reach the exit, so every non-empty set can still lead to a match.
# ---------------------------------------------------------------------------------------------------
@dataclass
class DFA:
    """``table[q][b]``: the state after reading byte ``b`` in state ``q``; ``accepting[q]``: a match."""
    table: list
    accepting: list
    start: int = 1

    @property
    def num_states(self) -> int:
        """The number of states, the dead state 0 included."""
        return len(self.table)

    def walk(self, state: int, data: bytes) -> int:
        """The state after reading ``data`` from ``state`` (``DEAD`` stays ``DEAD``)."""
        for b in data:
            state = self.table[state][b]
        return state

    def fullmatch(self, text) -> bool:
        """Does the whole of ``text`` (str, encoded as UTF-8, or bytes) match?"""
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        return self.accepting[self.walk(self.start, data)]


def determinize(nfa: NFA) -> DFA:
    """The subset construction: the DFA (state 0 dead, state 1 the start) accepting what ``nfa`` accepts."""

    @functools.cache
    def closure(states: frozenset) -> frozenset:
        seen, stack = set(states), list(states)
        while stack:
            new = set(nfa.eps[stack.pop()]) - seen
            seen |= new
            stack += new
        return frozenset(seen)

    sets = [frozenset(), closure(frozenset([nfa.start]))]
    number = {s: i for i, s in enumerate(sets)}
    table = []
    for current in sets:  # ``sets`` grows while we walk it: a breadth-first search over subsets
        row = [DEAD] * 256
        targets: dict[int, set[int]] = {}  # byte -> the NFA states it leads to
        for byteset, r in [move for q in current for move in nfa.moves[q]]:
            for b in byteset:
                targets.setdefault(b, set()).add(r)
        for b, rs in targets.items():
            nxt = closure(frozenset(rs))
            row[b] = number.setdefault(nxt, len(sets))
            if row[b] == len(sets):  # a set not seen before: a new DFA state
                sets.append(nxt)
        if len(sets) > MAX_DFA_STATES:
            raise ValueError(f"the pattern needs more than {MAX_DFA_STATES} DFA states")
        table.append(row)
    return DFA(table=table, accepting=[nfa.end in s for s in sets])


def regex_to_dfa(pattern: str) -> DFA:
    """Steps 1-3: the DFA (over UTF-8 bytes) that accepts exactly the strings ``pattern`` fullmatches."""
    return determinize(NFA(parse(pattern)))


# ---------------------------------------------------------------------------------------------------
# 4. Token masks: walk every token's bytes from every state at once (array ops over the vocabulary).
#    Two observations make it cheap. Bytes the DFA never tells apart (all letters, in [a-z]+) form one
#    *byte class*, so one column per class is enough. And tokens that are the same sequence of classes
#    ("cat", "dog" in [a-z]+) walk the same way, so each distinct sequence is walked only once.
# ---------------------------------------------------------------------------------------------------
def token_masks(dfa: DFA, vocab: TokenVocabulary) -> torch.Tensor:
    """Bool ``[num_states, vocab_size]``: may token ``t`` follow in state ``q``? (EOS: iff ``q`` accepts.)"""
    by_class, byte_class = np.unique(np.array(dfa.table, dtype=np.int32), axis=1, return_inverse=True)
    S, C = by_class.shape  # states, byte classes (and byte -> its class)
    step = np.concatenate([by_class, np.arange(S, dtype=np.int32)[:, None]], axis=1)  # class C: stay put
    to_class = bytes(byte_class.reshape(-1).astype(np.uint8))  # a bytes.translate table
    classes = [data.translate(to_class) if data else b"" for data in vocab.token_bytes]  # b"": no text
    sequences = sorted(dict.fromkeys(c for c in classes if c), key=len, reverse=True)  # longest first,
    rank = {seq: r for r, seq in enumerate(sequences)}  # so that step p below touches a prefix of them
    # token id -> its class sequence; a token that is no text -> one past them (never allowed)
    which = np.array([rank.get(c, len(sequences)) for c in classes], dtype=np.int64)
    width = len(sequences[0]) if sequences else 0
    padded = np.frombuffer(b"".join(seq.ljust(width, bytes([C])) for seq in sequences),
                           dtype=np.uint8).reshape(len(sequences), width)
    ends = np.repeat(np.arange(S, dtype=np.int32)[:, None], len(sequences), axis=1)  # [S, sequences]
    for p in range(width):
        k = int((padded[:, p] != C).sum())  # the sequences that still have a byte at position p
        ends[:, :k] = step[ends[:, :k], padded[:k, p]]
    allowed = np.pad(ends != DEAD, ((0, 0), (0, 1)))[:, which]  # back from sequences to token ids
    allowed[:, list(vocab.eos_token_ids)] = np.array(dfa.accepting)[:, None]
    return torch.from_numpy(allowed)


# ---------------------------------------------------------------------------------------------------
# The constraint interface (infergen.constraints.base) on top of the table.
# ---------------------------------------------------------------------------------------------------
class TeachingConstraint(BackendConstraint):
    """A regex compiled into a DFA and its per-state token masks ``masks`` [num_states, vocab_size].
    A row's position is a DFA state number; once the walk falls into ``DEAD`` the row is dead."""

    backend = "teaching"

    def __init__(self, kind: str, source, pattern: str, vocab: TokenVocabulary):
        dfa = regex_to_dfa(pattern)
        super().__init__(kind, source, vocab, dfa.start)
        self.dfa, self.masks, self.vocab = dfa, token_masks(dfa, vocab), vocab

    def allowed_at(self, state: int) -> torch.Tensor:
        """The state's row of the mask table (shared: do not modify)."""
        return self.masks[state]

    def accepts(self, state: int) -> bool:
        """Is ``state`` an accepting DFA state?"""
        return self.dfa.accepting[state]

    def step(self, state: int, token_id: int) -> int | None:
        """Walk the token's bytes through the DFA; None for a token the mask refuses (its walk falls into
        ``DEAD``, or it is no text)."""
        return self.dfa.walk(state, self.vocab.token_bytes[token_id]) if self.masks[state, token_id] else None


class TeachingCompiler:
    """Compiles regexes (and choice lists) for one tokenizer (it needs only its ``vocab``)."""

    kinds: tuple[str, ...] = ("regex", "choices")

    def __init__(self, tokenizer, vocab: TokenVocabulary):
        self.vocab = vocab

    def compile(self, kind: str, source, pattern: str) -> TeachingConstraint:
        """``pattern`` is the regex (for ``choices``, the escaped alternation the front door built)."""
        return TeachingConstraint(kind, source, pattern, self.vocab)
