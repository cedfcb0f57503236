"""Drift between two prediction runs: how the task mix and the confidence moved.

The population stability index compares two distributions over the same bins:
``PSI = sum((a - e) * ln(a / e))`` over bins, with shares floored at ``1e-4`` so an empty bin is
finite. By the usual rule of thumb, below 0.1 is stable, 0.1-0.25 a moderate shift, above 0.25 a
significant one. Each bin's term is its contribution, so the task-mix PSI splits per task type.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

FLOOR = 1e-4
CONFIDENCE_BINS = 10


@dataclass(frozen=True)
class RunDistribution:
    """What one prediction run looked like: counts per task type and confidence histograms."""

    run_id: str
    total: int
    mix: dict[str, int]  # task type -> requests
    confidence: list[int]  # CONFIDENCE_BINS equal-width bins over [0, 1]
    confidence_by_type: dict[str, list[int]]
    uncertain: int = 0


def shares(counts: Mapping[str, int] | Sequence[int]) -> dict[Any, float]:
    items = dict(counts) if isinstance(counts, Mapping) else dict(enumerate(counts))
    total = sum(items.values())
    return {k: (v / total if total else 0.0) for k, v in items.items()}


def psi_terms(expected: Mapping[Any, float], actual: Mapping[Any, float]) -> dict[Any, float]:
    """Each bin's contribution to the population stability index."""
    out: dict[Any, float] = {}
    for key in sorted(set(expected) | set(actual), key=str):
        e = max(expected.get(key, 0.0), FLOOR)
        a = max(actual.get(key, 0.0), FLOOR)
        out[key] = (a - e) * math.log(a / e)
    return out


def psi(expected: Mapping[Any, float], actual: Mapping[Any, float]) -> float:
    """Population stability index of ``actual`` against ``expected`` (both shares)."""
    return sum(psi_terms(expected, actual).values())


def verdict(value: float) -> str:
    return "stable" if value < 0.1 else "moderate shift" if value < 0.25 else "significant shift"


def compare_runs(previous: RunDistribution, current: RunDistribution) -> dict[str, Any]:
    """The change from ``previous`` to ``current``: task mix and confidence, per type and
    overall."""
    before, after = shares(previous.mix), shares(current.mix)
    mix_terms = psi_terms(before, after)
    mix_psi = sum(mix_terms.values())
    conf_psi = psi(shares(previous.confidence), shares(current.confidence))
    per_type: dict[str, dict[str, Any]] = {}
    for task in sorted(set(previous.mix) | set(current.mix)):
        prev_hist = previous.confidence_by_type.get(task, [0] * CONFIDENCE_BINS)
        cur_hist = current.confidence_by_type.get(task, [0] * CONFIDENCE_BINS)
        conf_type = (
            psi(shares(prev_hist), shares(cur_hist)) if sum(prev_hist) and sum(cur_hist) else None
        )
        per_type[task] = {
            "share_before": round(before.get(task, 0.0), 4),
            "share_after": round(after.get(task, 0.0), 4),
            "share_change": round(after.get(task, 0.0) - before.get(task, 0.0), 4),
            "mix_psi_term": round(mix_terms.get(task, 0.0), 4),
            "confidence_psi": None if conf_type is None else round(conf_type, 4),
        }
    return {
        "previous_run": previous.run_id,
        "current_run": current.run_id,
        "requests_before": previous.total,
        "requests_after": current.total,
        "mix_psi": round(mix_psi, 4),
        "mix_verdict": verdict(mix_psi),
        "confidence_psi": round(conf_psi, 4),
        "confidence_verdict": verdict(conf_psi),
        "uncertain_share_before": round(previous.uncertain / previous.total, 4)
        if previous.total
        else 0.0,
        "uncertain_share_after": round(current.uncertain / current.total, 4)
        if current.total
        else 0.0,
        "per_type": per_type,
    }
