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

__all__ = ["parse"]

MAX_REPEAT = 1000

# ---------------------------------------------------------------------------------------------------
# 1. Parsing. The tree has five kinds of node:
#    ("chars", ascii, multibyte)  one character: a byte in the frozenset ``ascii``, or (if ``multibyte``)
#                                 any non-ASCII character
#    ("bytes", b"...")            one non-ASCII literal character, as its UTF-8 bytes
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


class _Parser:
    def __init__(self, pattern: str):
        self.pattern, self.pos = pattern, 0

    def fail(self, message: str, back: int = 0):
        raise ValueError(f"{message} at position {self.pos - back} of {self.pattern!r}")

    def peek(self, ahead: int = 0):
        i = self.pos + ahead
        return self.pattern[i] if i < len(self.pattern) else None

    def accept(self, chars: str) -> str | None:
        """Take the next character if it is one of ``chars`` and return it; None (taking nothing) if not."""
        c = self.peek()
        if c is None or c not in chars:
            return None
        self.pos += 1
        return c

    def take(self) -> str:
        if self.pos >= len(self.pattern):
            self.fail("unexpected end of pattern")
        self.pos += 1
        return self.pattern[self.pos - 1]

    def parse(self):
        node = self.alternation()
        if self.pos < len(self.pattern):  # only a ')' can stop the alternation early
            self.fail("unbalanced ')'")
        return node

    def alternation(self):
        branches = [self.concatenation()]
        while self.accept("|"):
            branches.append(self.concatenation())
        return branches[0] if len(branches) == 1 else ("alt", branches)

    def concatenation(self):
        items = []
        while self.peek() not in (None, "|", ")"):
            items.append(self.repetition())
        return items[0] if len(items) == 1 else ("cat", items)

    def repetition(self):
        node = self.atom()
        if (c := self.accept(QUANTIFIERS)) is None:
            return node
        lo, hi = {"*": (0, None), "+": (1, None), "?": (0, 1)}.get(c) or self.counted()
        if self.peek() is not None and self.peek() in QUANTIFIERS:
            self.fail("a quantifier right after a quantifier (lazy/possessive) is not in the subset; "
                      "use a group, e.g. (a*)?")
        return ("rep", node, lo, hi)

    def counted(self):
        """After '{': m}  m,}  ,n}  m,n}."""
        def number():
            start = self.pos
            while self.peek() is not None and self.peek().isdigit() and self.peek().isascii():
                self.take()
            return int(self.pattern[start:self.pos]) if self.pos > start else None
        lo = hi = number()
        if self.accept(","):
            hi = number()
        if (lo is None and hi is None) or not self.accept("}"):
            self.fail("'{' must start a repetition {m}, {m,}, {,n} or {m,n} (write \\{ for a brace)")
        lo = lo or 0
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
        return self.literal(c)

    @staticmethod
    def literal(c: str):
        return ("chars", frozenset([ord(c)]), False) if c.isascii() else ("bytes", c.encode("utf-8"))

    def escape(self):
        c = self.take()
        if c in CLASS_ESCAPES:
            return ("chars", *CLASS_ESCAPES[c])
        if c in CHAR_ESCAPES:
            return self.literal(CHAR_ESCAPES[c])
        if c.isascii() and not c.isalnum():
            return self.literal(c)
        self.fail(f"the escape \\{c} is not in the subset", back=1)

    def class_member(self):
        """One character of a class (returns ``("chars", ...)`` or the single character as a str)."""
        c = self.take()
        if c == "\\":
            node = self.escape()
            if node[0] == "chars" and len(node[1]) == 1 and not node[2]:
                return chr(next(iter(node[1])))
            return node
        return c

    def char_class(self):
        negated = self.accept("^") is not None
        members, multibyte, first = set(), False, True
        while first or not self.accept("]"):  # a ']' right after the '[' (or '[^') is a member
            first = False
            if self.peek() is None:
                self.fail("missing ']'")
            m = self.class_member()
            if not isinstance(m, str):  # \d, \w, ... inside the class
                members |= m[1]
                multibyte |= m[2]
                continue
            hi = m
            if self.peek() == "-" and self.peek(1) not in (None, "]"):
                self.take()
                hi = self.class_member()
                if not isinstance(hi, str) or ord(hi) < ord(m):
                    self.fail(f"bad range {m!r}-{hi if isinstance(hi, str) else '...'!r} in a class")
            if ord(hi) > 127:
                self.fail("classes hold ASCII characters only in the subset")
            members |= set(range(ord(m), ord(hi) + 1))
        if negated:
            members, multibyte = ASCII - members, not multibyte
        return ("chars", frozenset(members), multibyte)


def parse(pattern: str):
    """The syntax tree of ``pattern`` (see the node kinds above); ``ValueError`` outside the subset."""
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a str, got {type(pattern).__name__}")
    return _Parser(pattern).parse()
