"""Exact bounds of a pass rate and the bootstrap interval of a mean score.

- :func:`cp_lower` / :func:`cp_upper`: the one-sided Clopper–Pearson bounds,
  ``Beta(alpha; x, n - x + 1)`` and ``Beta(1 - alpha; x + 1, n - x)`` (scipy), vectorised;
- :func:`credit_bounds`: where a tie is possible, the pass rate is
  ``c x P(not worse) + (1 - c) x P(win)`` and its bounds the same mix of the two proportions'
  exact bounds, each at ``alpha / 2`` (if both hold, so does the mix);
- :func:`mean_interval`: the BCa bootstrap interval of the mean (``scipy.stats.bootstrap``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

CP_METHOD = "Clopper–Pearson one-sided"
BCA_RESAMPLES = 9999
BCA_METHOD = f"BCa bootstrap, {BCA_RESAMPLES:,} resamples"


def cp_lower(successes: Any, n: Any, alpha: float) -> Any:
    """Exact one-sided lower bound of a binomial proportion: ``Beta(alpha; x, n - x + 1)``.

    Vectorised over ``successes`` and ``n``; 0 where ``x = 0`` or ``n = 0``. A tie's fractional
    credit is allowed (its coverage is checked by simulation in the tests)."""
    x = np.asarray(successes, dtype=float)
    m = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        low = stats.beta.ppf(alpha, np.maximum(x, 1e-12), np.maximum(m - x + 1, 1e-12))
    out = np.where((x <= 0) | (m <= 0), 0.0, low)
    return float(out) if np.ndim(out) == 0 else out


def cp_upper(successes: Any, n: Any, alpha: float) -> Any:
    """Exact one-sided upper bound: ``Beta(1 - alpha; x + 1, n - x)``; 1 where ``x = n``."""
    x = np.asarray(successes, dtype=float)
    m = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        high = stats.beta.ppf(1 - alpha, x + 1, np.maximum(m - x, 1e-12))
    out = np.where((m <= 0) | (x >= m), 1.0, high)
    return float(out) if np.ndim(out) == 0 else out


@dataclass(frozen=True)
class MeanInterval:
    """The mean score with its BCa bootstrap interval (None where BCa is undefined, and why)."""

    mean: float | None
    low: float | None
    high: float | None
    method: str = BCA_METHOD
    note: str | None = None


def mean_interval(
    scores: Sequence[float], *, level: float = 0.95, resamples: int = BCA_RESAMPLES, seed: int = 0
) -> MeanInterval:
    """BCa bootstrap interval of the mean (``scipy.stats.bootstrap``), seeded.

    No shortcut: one value, or values all equal, have no bootstrap spread; the interval is then
    left out and the note says so (the pass rate's exact bound still applies)."""
    arr = np.asarray(list(scores), dtype=float)
    method = f"BCa bootstrap, {resamples:,} resamples"
    if arr.size == 0:
        return MeanInterval(None, None, None, method, "no scores")
    mean = float(arr.mean())
    if resamples <= 0:
        return MeanInterval(mean, None, None, "", "interval not computed")
    if arr.size < 2 or np.all(arr == arr[0]):
        why = "one score" if arr.size < 2 else f"all {arr.size} scores equal"
        return MeanInterval(mean, None, None, method, f"{why}: no bootstrap interval")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.bootstrap(
            (arr,),
            np.mean,
            confidence_level=level,
            n_resamples=resamples,
            method="BCa",
            rng=np.random.default_rng(seed),
        )
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if math.isnan(low) or math.isnan(high):
        return MeanInterval(mean, None, None, method, "BCa undefined for these scores")
    return MeanInterval(mean, max(0.0, low), min(1.0, high), method)


def credit_bounds(
    wins: Any, not_worse: Any, n: Any, alpha: float, tie_credit: float, ties: bool
) -> tuple[Any, Any]:
    """(lower, upper) one-sided bounds of the pass rate ``c x not-worse + (1 - c) x wins``.

    Without ties (every scorer but the judge) ``wins == not_worse`` and this is the plain
    Clopper–Pearson bound at ``alpha``; with ties, each proportion's exact bound at
    ``alpha / 2``, mixed. Vectorised."""
    if not ties:
        return cp_lower(wins, n, alpha), cp_upper(wins, n, alpha)
    half = alpha / 2
    lower = tie_credit * cp_lower(not_worse, n, half) + (1 - tie_credit) * cp_lower(wins, n, half)
    upper = tie_credit * cp_upper(not_worse, n, half) + (1 - tie_credit) * cp_upper(wins, n, half)
    return lower, upper
