"""Chapter 13's verifiable task: small additions whose answers a program can check.

Comparing test-time strategies (:mod:`infergen.decoding.test_time`) by likelihood or diversity says little
about whether their answers are *right*; on this task every answer is checked automatically.
:func:`addition_problems` draws the questions (seeded), :func:`extract_number` reads a model's answer
(also the natural ``extract`` for :func:`~infergen.decoding.test_time.self_consistency` on it).
"""
from __future__ import annotations

import random
import re

from .._validation import check_number


def addition_problems(count: int = 40, seed: int = 0, low: int = 2, high: int = 9) -> list[tuple[str, int]]:
    """A small verifiable task: ``count`` questions ``"What is a + b?"`` with ``a, b`` drawn (seeded) from
    ``[low, high]``, as ``(prompt, answer)`` pairs. Check an output with :func:`extract_number`."""
    check_number("count", count, low=1, integer=True)
    check_number("low", low, low=0, integer=True)
    check_number("high", high, low=low, integer=True)
    rng = random.Random(seed)
    pairs = [(rng.randint(low, high), rng.randint(low, high)) for _ in range(count)]
    return [(f"What is {a} + {b}?", a + b) for a, b in pairs]


def extract_number(text: str) -> int | None:
    """The answer in a model's text: its *last* integer (``"3 + 4 = 7"`` -> 7), or None if it has none."""
    found = re.findall(r"-?\d+", text)
    return int(found[-1]) if found else None
