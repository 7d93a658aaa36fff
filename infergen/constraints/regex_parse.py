"""Step 1 of the teaching automaton (:mod:`.teaching`): a regular expression becomes a syntax tree.

A small recursive-descent parser, one method per grammar rule (alternation, concatenation, repetition,
atom, class). Its tree speaks of bytes: an ASCII character is a set of byte values, a non-ASCII
literal its UTF-8 bytes, ``.`` and the negated classes "any non-ASCII character" besides their ASCII
members (the NFA of step 2 spells that out as well-formed UTF-8).

**The subset** (the meaning is Python's ``re.fullmatch`` with ``re.ASCII``):
literal characters; ``.``; classes ``[a-z0-9_]``, ``[^"]`` (members are ASCII characters, ranges or the
escapes below); the escapes ``\\d \\w \\s`` (ASCII digits, word characters, whitespace), ``\\D \\W \\S``,
``\\n \\t \\r \\f \\v`` and a backslash before punctuation for the punctuation itself; alternation ``|``;
groups ``(...)`` and ``(?:...)``; the quantifiers ``?  *  +  {m}  {m,}  {,n}  {m,n}``. Not included:
anchors (the whole output always has to match), backreferences, lookaround, lazy or possessive
quantifiers, non-ASCII members in classes. Anything outside the subset raises ``ValueError``.
"""
from __future__ import annotations

import re

__all__ = ["parse"]

MAX_REPEAT = 1000

# ---------------------------------------------------------------------------------------------------
# 1. Parsing. The tree has four kinds of node:
#    ("chars", ascii, multibyte)  one character: a byte in the frozenset ``ascii``, or (if ``multibyte``)
#                                 any non-ASCII character; also one byte of a non-ASCII literal
#    ("cat", [nodes])             the nodes one after the other ("" when empty)
#    ("alt", [nodes])             one of the nodes
#    ("rep", node, lo, hi)        node repeated lo..hi times (hi None: no upper bound)
# ---------------------------------------------------------------------------------------------------
ASCII = frozenset(range(128))
DIGIT = frozenset(b"0123456789")
WORD = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
SPACE = frozenset(b" \t\n\r\f\v")
CLASS_ESCAPES = {"d": (DIGIT, False), "w": (WORD, False), "s": (SPACE, False),
                 "D": (ASCII - DIGIT, True), "W": (ASCII - WORD, True), "S": (ASCII - SPACE, True)}
CHAR_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v"}
QUANTIFIERS = "*+?{"
_COUNTS = re.compile(r"([0-9]*)(,?)([0-9]*)")  # after '{': m  m,  ,n  m,n (ASCII digits)


def _literal(c: str):
    """The node of one literal character: an ASCII byte, or a non-ASCII character's UTF-8 bytes one
    after the other (``é`` is C3 then A9)."""
    return (("chars", frozenset([ord(c)]), False) if c.isascii()
            else ("cat", [("chars", frozenset([b]), False) for b in c.encode("utf-8")]))


class _Parser:
    """One method per grammar rule, reading ``pattern`` from ``pos`` on; ``peek`` is "" past the end."""

    def __init__(self, pattern: str):
        self.pattern, self.pos = pattern, 0

    def fail(self, message: str, back: int = 0):
        raise ValueError(f"{message} at position {self.pos - back} of {self.pattern!r}")

    def peek(self, ahead: int = 0) -> str:
        return self.pattern[self.pos + ahead:self.pos + ahead + 1]

    def accept(self, chars: str) -> str:
        """Take the next character if it is one of ``chars`` and return it; "" (taking nothing) if not."""
        return self.take() if (c := self.peek()) and c in chars else ""

    def take(self) -> str:
        c = self.peek() or self.fail("unexpected end of pattern")
        self.pos += 1
        return c

    def alternation(self):
        branches = [self.concatenation()]
        while self.accept("|"):
            branches.append(self.concatenation())
        return branches[0] if len(branches) == 1 else ("alt", branches)

    def concatenation(self):
        items = []
        while self.peek() not in ("", "|", ")"):
            items.append(self.repetition())
        return items[0] if len(items) == 1 else ("cat", items)

    def repetition(self):
        node = self.atom()
        if not (c := self.accept(QUANTIFIERS)):
            return node
        lo, hi = {"*": (0, None), "+": (1, None), "?": (0, 1)}.get(c) or self.counted()
        if self.accept(QUANTIFIERS):
            self.fail("a quantifier right after a quantifier (lazy/possessive) is not in the subset; "
                      "use a group, e.g. (a*)?", back=1)
        return ("rep", node, lo, hi)

    def counted(self):
        """After '{': m}  m,}  ,n}  m,n}."""
        low, comma, high = _COUNTS.match(self.pattern, self.pos).groups()
        self.pos += len(low + comma + high)
        if not (low or high) or not self.accept("}"):
            self.fail("'{' must start a repetition {m}, {m,}, {,n} or {m,n} (write \\{ for a brace)")
        lo, hi = int(low or 0), (int(high) if high else None) if comma else int(low)
        if hi is not None and hi < lo:
            self.fail(f"repetition {{{lo},{hi}}} has its maximum below its minimum")
        if max(lo, hi or 0) > MAX_REPEAT:
            self.fail(f"repetition counts above {MAX_REPEAT} are not in the subset")
        return lo, hi

    def atom(self):
        c = self.take()
        if c == "(":
            if self.accept("?") and not self.accept(":"):
                self.fail("only the non-capturing group (?:...) is in the subset", back=1)
            node = self.alternation()
            if not self.accept(")"):
                self.fail("missing ')'")
            return node
        if c == "[":
            return self.char_class()
        if c == ".":
            return ("chars", ASCII - {ord("\n")}, True)
        if c == "\\":
            return self.escape()
        if c in QUANTIFIERS:
            self.fail(f"nothing to repeat before {c!r}", back=1)
        if c in "^$":
            self.fail(f"anchors ({c!r}) are not in the subset: the whole output always has to match", back=1)
        return _literal(c)

    def escape(self):
        c = self.take()
        if c in CLASS_ESCAPES:
            return ("chars", *CLASS_ESCAPES[c])
        if c in CHAR_ESCAPES or (c.isascii() and not c.isalnum()):
            return _literal(CHAR_ESCAPES.get(c, c))
        self.fail(f"the escape \\{c} is not in the subset", back=1)

    def class_member(self):
        """One member of a class as a ``("chars", ...)`` node: a character, or an escape (``\\n``, ``\\.``,
        ``\\d``, ...)."""
        c = self.take()
        if not c.isascii():
            self.fail("classes hold ASCII characters only in the subset", back=1)
        return self.escape() if c == "\\" else _literal(c)

    def char_class(self):
        negated = bool(self.accept("^"))
        members, multibyte = set(), False
        while True:  # ']' ends the class only after a member: right after '[' (or '[^') it is one
            if not self.peek():
                self.fail("missing ']'")
            _, chars, wide = self.class_member()
            if len(chars) == 1 and not wide and self.peek(1) not in ("", "]") and self.accept("-"):  # a range
                _, high, wide = self.class_member()
                if len(high) != 1 or max(high) < min(chars):  # a class escape (\d, ...) has more than one
                    self.fail(f"bad range {chr(min(chars))!r}-{chr(min(high)) if len(high) == 1 else '...'!r}"
                              " in a class")
                chars = range(min(chars), max(high) + 1)
            members, multibyte = members | set(chars), multibyte or wide
            if self.accept("]"):
                break
        if negated:
            members, multibyte = ASCII - members, not multibyte
        return ("chars", frozenset(members), multibyte)


def parse(pattern: str):
    """The syntax tree of ``pattern`` (see the node kinds above); ``ValueError`` outside the subset.
    (``make_constraint`` has checked that it is a str.)"""
    parser = _Parser(pattern)
    node = parser.alternation()
    if parser.peek():  # only a ')' can stop the alternation early
        parser.fail("unbalanced ')'")
    return node
