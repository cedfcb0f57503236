"""Errors raised by the classifiers package.

ClassifierError                 root: anything the classifier cannot do
├── TaxonomyError               a label outside the taxonomy, or a malformed taxonomy file
├── TrainingError               too few labels / classes to train or evaluate
├── ExportParityError           the ONNX export disagrees with scikit-learn (carries the rows)
└── ModelLoadError              a classifier file is missing or unreadable
"""

from __future__ import annotations


class ClassifierError(Exception):
    """Root of every error the classifiers package raises."""


class TaxonomyError(ClassifierError):
    pass


class TrainingError(ClassifierError):
    pass


class ExportParityError(ClassifierError):
    def __init__(self, message: str, rows: list[int] | None = None) -> None:
        self.rows = rows or []
        super().__init__(message)


class ModelLoadError(ClassifierError):
    pass
