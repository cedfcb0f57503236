"""Errors raised by the classifiers package.

ClassifierError         root: anything the classifier cannot do
├── TaxonomyError       a label outside the taxonomy, or a malformed taxonomy file (file, field)
├── TrainingError       too few labels / classes to train or evaluate (says how many there are)
├── ExportParityError   the ONNX export disagrees with scikit-learn (carries the rows)
├── ModelLoadError      a classifier folder or file is missing or unreadable (names the path)
└── AnnotatorError      one annotation call failed (``kind``: timeout, http, transport);
                        counted by the annotator, never raised out of a labeling run

Errors carry their context as attributes so the CLI can print one clear line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


class ClassifierError(Exception):
    """Root of every error the classifiers package raises."""


class TaxonomyError(ClassifierError):
    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")


class TrainingError(ClassifierError):
    pass


class ExportParityError(ClassifierError):
    """The exported model disagrees with scikit-learn on ``rows`` (indexes into the checked texts).

    ``details`` holds one dict per differing row: index, text (clipped), both labels and the
    largest probability difference.
    """

    def __init__(
        self, message: str, rows: list[int] | None = None, details: Sequence[dict[str, Any]] = ()
    ) -> None:
        self.rows = rows or []
        self.details = list(details)
        super().__init__(message)


class ModelLoadError(ClassifierError):
    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class AnnotatorError(ClassifierError):
    """One call to the annotator failed; ``kind`` is 'timeout', 'http' or 'transport'."""

    def __init__(self, kind: str, reason: str) -> None:
        self.kind = kind
        self.reason = reason
        super().__init__(f"annotator {kind}: {reason}")
