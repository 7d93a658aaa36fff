"""How sure is a measured difference? Confidence intervals for the book's and the benchmarks' claims.

A handful of prompts and one seed give one number per strategy; another handful would give another.
These are methodology for *measuring* decoders (the benchmarks and the chapters' comparisons), not
part of inference, so they live in the benchmark companion:

* :func:`bootstrap_interval` -- a percentile-bootstrap interval around any statistic of independent
  items (a mean over prompts, a pooled ``infergen.metrics.diversity``, per-prompt differences
  between two strategies), by resampling the items;
* :func:`wilson_interval` -- the Wilson score interval of an accuracy (``successes`` of ``total``
  trials), which stays inside [0, 1] and is not empty at 0 or ``total`` correct.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from .._validation import check_number

__all__ = ["Interval", "bootstrap_interval", "wilson_interval"]


class Interval(NamedTuple):
    """A statistic of ``n`` items (``estimate``, computed on all of them) with its confidence interval."""

    estimate: float
    low: float
    high: float
    n: int


def bootstrap_interval(values: Sequence, statistic: Callable[[list], float] | None = None, *,
                       confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> Interval:
    """Percentile-bootstrap confidence interval of ``statistic(values)`` (Efron & Tibshirani, 1993).

    ``values`` are the independent units of an experiment, one per prompt (or per prompt and seed):
    numbers, or texts for a pooled ``statistic`` such as ``infergen.metrics.diversity``. ``statistic``
    maps a list of them to a float; the default is the mean (then ``values`` must be finite numbers). The items are
    drawn with replacement ``resamples`` times (a ``torch.Generator`` seeded with ``seed``: the interval is
    reproducible), and ``low`` / ``high`` are the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``
    quantiles of the resampled statistics (resamples where it is NaN are left out).

    Read it as the range of values the statistic could plausibly have had with other prompts of the same
    kind. Two strategies whose intervals overlap are not resolved at this sample size; to compare them,
    put an interval around their per-prompt *differences* (paired: the same prompts), which is narrower.
    Pitfall: with few items (under ~10) the percentile interval is too narrow; say how many there were.
    """
    confidence = check_number("confidence", confidence, low=0, high=1, low_open=True, high_open=True)
    resamples = check_number("resamples", resamples, low=1, integer=True)
    items = list(values)
    if not items:
        raise ValueError("values must hold at least one item, got an empty sequence")
    index = torch.randint(len(items), (resamples, len(items)), generator=torch.Generator().manual_seed(seed))
    if statistic is None:  # the mean, vectorised over the resamples
        data = torch.tensor([check_number(f"values[{i}]", v) for i, v in enumerate(items)], dtype=torch.float64)
        estimate, resampled = float(data.mean()), data[index].mean(-1)
    else:
        estimate = float(statistic(items))
        resampled = torch.tensor([statistic([items[i] for i in row]) for row in index.tolist()],
                                 dtype=torch.float64)
    resampled = resampled[~resampled.isnan()]
    if resampled.numel() == 0:
        raise ValueError("statistic is NaN on every resample: no interval can be formed")
    quantiles = torch.tensor([(1 - confidence) / 2, (1 + confidence) / 2], dtype=torch.float64)
    low, high = torch.quantile(resampled, quantiles).tolist()
    return Interval(estimate, low, high, len(items))


def wilson_interval(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval for an accuracy of ``successes / total`` (z = 1.96: 95 %). Unlike
    ``p +- z * sqrt(p (1 - p) / total)`` it stays inside [0, 1] and is not empty at 0 or ``total`` correct."""
    check_number("total", total, low=1, integer=True)
    check_number("successes", successes, low=0, high=total, integer=True)
    check_number("z", z, low=0)
    p, z2 = successes / total, z * z
    centre, half = p + z2 / (2 * total), z * (p * (1 - p) / total + z2 / (4 * total * total)) ** 0.5
    return max(0.0, (centre - half) / (1 + z2 / total)), min(1.0, (centre + half) / (1 + z2 / total))
