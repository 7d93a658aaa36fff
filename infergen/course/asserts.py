"""``raises`` and ``approx``: the two pytest helpers the public tests use, so that they run under the
grader where pytest may not be installed (``python -m infergen.course check``), and under pytest alike."""
from __future__ import annotations

import math
import re

__all__ = ["approx", "raises"]


class raises:
    """``with raises(ValueError, match="n_sigma"): ...`` -- the block must raise ``expected`` (a type or a
    tuple of types) with a message that ``re.search``-matches ``match``; an ``AssertionError`` otherwise."""

    def __init__(self, expected, match: str | None = None):
        self.expected, self.match = expected, match

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        names = (self.expected.__name__ if isinstance(self.expected, type)
                 else " or ".join(e.__name__ for e in self.expected))
        if kind is None:
            raise AssertionError(f"expected {names} to be raised, nothing was")
        if not issubclass(kind, self.expected):
            return False  # another exception: let it propagate, the check reports it as an error
        if self.match is not None and not re.search(self.match, str(err)):
            raise AssertionError(f"{names} was raised, but its message {str(err)!r} does not match "
                                 f"{self.match!r}")
        return True


class approx:
    """``x == approx(0.5, abs=1e-6)``: equal within ``max(rel * |expected|, abs)`` (defaults as pytest's:
    ``rel=1e-6``, ``abs=1e-12``)."""

    def __init__(self, expected: float, rel: float = 1e-6, abs: float = 1e-12):  # noqa: A002 (pytest's names)
        self.expected, self.rel, self.abs = float(expected), rel, abs

    def __eq__(self, other) -> bool:
        return math.isclose(float(other), self.expected, rel_tol=self.rel, abs_tol=self.abs)

    def __repr__(self) -> str:
        return f"{self.expected} ± {max(self.rel * abs(self.expected), self.abs):.1e}"
