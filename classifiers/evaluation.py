"""Held-out figures of a classifier: macro-F1, per-class precision/recall, confusion matrix, and
how far its confidence can be trusted (expected calibration error over equal-width bins).

Every figure names what it was measured against (``label_source``): macro-F1 against human labels
is a quality figure; against the relay annotator or the rules it is agreement with them
(``figure_name``), which says how well the model copies its teacher, not how right it is."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Evaluation:
    macro_f1: float
    accuracy: float
    rows: int
    per_class: dict[str, dict[str, float | int]]
    confusion: dict[str, Any]  # {"labels": [...], "matrix": [[...]]}: rows true, columns predicted
    calibration: dict[str, Any]  # {"ece": float, "bins": [...]}
    not_evaluated: list[str] = field(default_factory=list)
    label_source: str = "human"
    extra: dict[str, Any] = field(default_factory=dict)  # calibration and selective accuracy

    @property
    def figure(self) -> str:
        return figure_name(self.label_source)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label_source": self.label_source,
            "figure": self.figure,
            "macro_f1": self.macro_f1,
            "accuracy": self.accuracy,
            "rows": self.rows,
            "per_class": self.per_class,
            "confusion": self.confusion,
            "calibration": self.calibration,
            "not_evaluated": list(self.not_evaluated),
            **self.extra,
        }


FIGURE_NAMES = {
    "human": "macro-F1 against human labels",
    "relay": "agreement with the relay annotator (macro-F1)",
    "rules": "agreement with the rules (macro-F1)",
    "mixed": "macro-F1 against human and annotator labels",
}


def figure_name(label_source: str) -> str:
    """How a held-out macro-F1 must be named, given what the labels came from."""
    return FIGURE_NAMES.get(label_source, f"macro-F1 against {label_source} labels")


def label_source_of(by_source: dict[str, int]) -> str:
    """'human', 'relay', 'rules' or 'mixed', from winning labels per source (metadata = human)."""
    used = {s for s, n in by_source.items() if n}
    if used == {"metadata"}:
        return "human"
    if len(used) == 1:
        return used.pop()
    return "rules" if not used else "mixed"


def calibration(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Expected calibration error: the count-weighted gap between confidence and accuracy, per
    equal-width confidence bin."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    out: list[dict[str, float | int]] = []
    ece = 0.0
    n = len(confidence)
    for i in range(bins):
        lo, hi = edges[i], edges[i + 1]
        mask = (
            (confidence > lo) & (confidence <= hi) if i else (confidence >= lo) & (confidence <= hi)
        )
        count = int(mask.sum())
        acc = float(correct[mask].mean()) if count else 0.0
        conf = float(confidence[mask].mean()) if count else 0.0
        if count:
            ece += count / n * abs(acc - conf)
        out.append(
            {
                "lower": round(float(lo), 2),
                "upper": round(float(hi), 2),
                "count": count,
                "accuracy": round(acc, 4),
                "confidence": round(conf, 4),
            }
        )
    return {"ece": round(ece, 4), "bins": out}


def evaluate(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    confidence: Sequence[float] | np.ndarray,
    *,
    classes: Sequence[str] | None = None,
    not_evaluated: Sequence[str] = (),
    label_source: str = "human",
    extra: dict[str, Any] | None = None,
) -> Evaluation:
    """Figures over the classes present in ``y_true`` (macro-F1 averages those only)."""
    true = np.asarray([str(y) for y in y_true], dtype=object)
    pred = np.asarray([str(y) for y in y_pred], dtype=object)
    conf = np.asarray(confidence, dtype=np.float64)
    present = sorted(set(true.tolist()))
    order = [c for c in (classes or []) if c in set(present) | set(pred.tolist())]
    labels = order + sorted((set(present) | set(pred.tolist())) - set(order))
    per_class: dict[str, dict[str, float | int]] = {}
    f1s: list[float] = []
    for label in present:
        tp = int(((pred == label) & (true == label)).sum())
        predicted = int((pred == label).sum())
        support = int((true == label).sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        f1s.append(f1)
        per_class[label] = {
            "precision": round(precision, 4),
            "recall": round(recall, 4),
            "f1": round(f1, 4),
            "support": support,
        }
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for t, p in zip(true.tolist(), pred.tolist(), strict=True):
        matrix[index[t]][index[p]] += 1
    correct = (true == pred).astype(np.float64)
    return Evaluation(
        macro_f1=round(float(np.mean(f1s)), 4) if f1s else 0.0,
        accuracy=round(float(correct.mean()), 4) if len(correct) else 0.0,
        rows=len(true),
        per_class=per_class,
        confusion={"labels": labels, "matrix": matrix},
        calibration=calibration(conf, correct) if len(conf) else {"ece": 0.0, "bins": []},
        not_evaluated=sorted(not_evaluated),
        label_source=label_source,
        extra=dict(extra or {}),
    )
