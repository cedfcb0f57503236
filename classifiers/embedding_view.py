"""The sentence-encoder view of the pipeline: a scikit-learn transformer that embeds texts.

Loaded only when a pipeline with an encoder is built (it imports scikit-learn)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

if TYPE_CHECKING:
    from classifiers.encoder import EmbeddingCache, SentenceEncoder


class EmbeddingView(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """``request_text`` strings -> the encoder's L2-normalized embeddings (cached by hash)."""

    def __init__(self, encoder: SentenceEncoder | None = None, cache: EmbeddingCache | None = None):
        self.encoder = encoder
        self.cache = cache

    def fit(self, texts: Sequence[str], y: Any = None) -> EmbeddingView:
        return self

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        if self.encoder is None:
            raise ValueError("EmbeddingView needs an encoder")
        return self.encoder.embed(list(texts), cache=self.cache)
