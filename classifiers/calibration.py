"""Calibrated confidence and the threshold it is cut at.

Temperature scaling: one number T divides every logit (``softmax(z / T)``), fitted by maximum
likelihood on held-out rows. It never changes which class wins, so labels and the ONNX graph stay
the same shape: T is folded into the exported weights. The expected calibration error shown for it
is cross-fitted (T fitted on one half of the held-out rows, measured on the other, both ways), so
the figure is not graded on the rows it was fitted to.

Selective accuracy: keeping only predictions whose confidence is at least t trades coverage (the
share kept) for accuracy (among those kept). ``selective_curve`` lists that trade-off and
``pick_threshold`` the lowest t whose held-out accuracy reaches a target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

THRESHOLDS: tuple[float, ...] = tuple(round(0.3 + 0.05 * i, 2) for i in range(14))  # 0.30-0.95
TARGET_ACCURACY = 0.9


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(logits: np.ndarray, truth: np.ndarray) -> float:
    """The T in [0.05, 20] minimizing the negative log-likelihood of ``truth`` (class indexes)."""
    if len(truth) == 0:
        return 1.0
    from scipy.optimize import minimize_scalar

    rows = np.arange(len(truth))

    def nll(log_t: float) -> float:
        p = softmax(logits / np.exp(log_t))
        return float(-np.log(np.clip(p[rows, truth], 1e-12, None)).mean())

    best = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(best.x))


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, bins: int = 10
) -> float:
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = index == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def crossfit_ece(logits: np.ndarray, truth: np.ndarray, seed: int = 0) -> float | None:
    """ECE of temperature scaling on rows it was not fitted to (two folds), or None if < 20 rows."""
    n = len(truth)
    if n < 20:
        return None
    order = np.random.default_rng(seed).permutation(n)
    halves = (order[: n // 2], order[n // 2 :])
    errors = []
    for fit, test in (halves, halves[::-1]):
        t = fit_temperature(logits[fit], truth[fit])
        p = softmax(logits[test] / t)
        correct = (p.argmax(axis=1) == truth[test]).astype(float)
        errors.append(expected_calibration_error(p.max(axis=1), correct) * len(test))
    return round(float(sum(errors) / n), 4)


@dataclass(frozen=True)
class SelectivePoint:
    threshold: float
    coverage: float  # share of rows with confidence >= threshold
    accuracy: float | None  # accuracy among them (None when none is kept)
    rows: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "coverage": round(self.coverage, 4),
            "accuracy": None if self.accuracy is None else round(self.accuracy, 4),
            "rows": self.rows,
        }


def selective_curve(
    confidence: np.ndarray, correct: np.ndarray, thresholds: Sequence[float] = THRESHOLDS
) -> list[SelectivePoint]:
    """Coverage and accuracy of the predictions kept at each confidence threshold."""
    out: list[SelectivePoint] = []
    n = len(confidence)
    for t in thresholds:
        kept = confidence >= t
        count = int(kept.sum())
        acc = float(correct[kept].mean()) if count else None
        out.append(SelectivePoint(float(t), count / n if n else 0.0, acc, count))
    return out


def pick_threshold(
    curve: Sequence[SelectivePoint], target: float = TARGET_ACCURACY, min_rows: int = 10
) -> float | None:
    """The lowest threshold whose kept predictions reach ``target`` accuracy (on at least
    ``min_rows`` rows), or None when no threshold does."""
    for point in curve:
        if point.rows >= min_rows and point.accuracy is not None and point.accuracy >= target:
            return point.threshold
    return None
