"""Running the exported classifier with onnxruntime: the same file a gateway would load.

Batches are spread over a few threads, each calling ``InferenceSession.run`` with one intra-op
thread: the text operators run single-threaded, so parallel batches use the cores and one batch
with more intra-op threads does not.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from classifiers.encoder import TOKENIZER_FILE, configured_tokenizer
from classifiers.errors import ModelLoadError
from classifiers.export import onnx_session, run_onnx
from classifiers.features import Lexicon, default_lexicon, request_text, request_text_json
from classifiers.model_dir import CARD_FILE, MODEL_FILE, classifier_version, read_card


@dataclass(frozen=True)
class Prediction:
    task_type: str
    confidence: float
    uncertain: bool


@dataclass(frozen=True)
class PredictedBatch:
    """Predictions for a batch of requests, as columns (cheap to store in bulk)."""

    task_types: list[str]
    confidences: np.ndarray  # float64 [N]
    uncertain: np.ndarray  # bool [N]


def card_lexicon(card: Mapping[str, Any]) -> Lexicon:
    """The lexicon a classifier was trained with, from its card (``input.text_spec``). A newer
    lexicon in the package must not change the keyword markers an older model reads: it was
    fitted on the old ones. Cards without a lexicon get the package's."""
    spec = (card.get("input") or {}).get("text_spec") or {}
    current = default_lexicon()
    version, families = spec.get("lexicon_version"), spec.get("lexicon")
    if not version or str(version) == current.version or not isinstance(families, dict):
        return current
    return Lexicon(families, str(version))


class TaskClassifier:
    """A loaded ``classifier.onnx`` with its model card. Build its input with ``text`` or
    ``text_json``: they use the card's lexicon."""

    def __init__(
        self,
        model: bytes,
        card: dict[str, Any],
        *,
        threads: int | None = None,
        tokenizer_json: str | None = None,
    ) -> None:
        self.card = card
        self.lexicon = card_lexicon(card)
        self.tokenizer: Any = None
        encoder = card.get("encoder")
        if encoder:
            if tokenizer_json is None:
                raise ModelLoadError(TOKENIZER_FILE, "the card names an encoder; tokenizer missing")
            from tokenizers import Tokenizer

            self.tokenizer = configured_tokenizer(
                Tokenizer.from_str(tokenizer_json), int(encoder.get("max_length", 256))
            )
        self.version = classifier_version(model)
        self.classes: tuple[str, ...] = tuple(str(c) for c in card["classes"])
        self.threshold = float(card.get("confidence_threshold", 0.5))
        self.threads = max(1, threads or min(4, os.cpu_count() or 1))
        try:
            self._session = onnx_session(model)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelLoadError(MODEL_FILE, f"onnxruntime cannot load the model: {exc}") from exc
        outputs = self._session.get_outputs()
        width = outputs[1].shape[1] if len(outputs) > 1 and outputs[1].shape else None
        if width != len(self.classes):
            raise ModelLoadError(
                CARD_FILE, f"card lists {len(self.classes)} classes, model has {width}"
            )

    def text(self, messages: Sequence[Mapping[str, Any]]) -> str:
        """``request_text`` of one request, with the lexicon this model was trained with."""
        return request_text(messages, self.lexicon)

    def text_json(self, messages_json: str | None) -> str:
        """``text`` of a JSON-encoded message list (the warehouse's ``messages`` column)."""
        return request_text_json(messages_json, self.lexicon)

    def predict_texts(
        self, texts: Sequence[str], *, threshold: float | None = None, batch_size: int = 2048
    ) -> PredictedBatch:
        """Task type, confidence (max probability) and uncertain flag of request texts."""
        cut = self.threshold if threshold is None else threshold
        if self.tokenizer is not None:
            batch_size = min(batch_size, 64)  # encoder batches: padding grows with the batch
        chunks = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
        if self.threads > 1 and len(chunks) > 1:
            with ThreadPoolExecutor(self.threads) as pool:
                results = list(
                    pool.map(lambda c: run_onnx(self._session, c, self.tokenizer), chunks)
                )
        else:
            results = [run_onnx(self._session, c, self.tokenizer) for c in chunks]
        labels: list[str] = []
        conf: list[np.ndarray] = []
        for chunk_labels, proba in results:
            labels.extend(chunk_labels)
            conf.append(proba.max(axis=1).astype(np.float64))
        confidences = np.concatenate(conf) if conf else np.zeros(0)
        return PredictedBatch(labels, confidences, confidences < cut)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        return run_onnx(self._session, list(texts), self.tokenizer)[1]

    def predict_messages(self, messages: Sequence[dict[str, Any]]) -> Prediction:
        """One request (chat messages) -> its prediction."""
        batch = self.predict_texts([self.text(messages)])
        return Prediction(
            batch.task_types[0], float(batch.confidences[0]), bool(batch.uncertain[0])
        )

    def predict_stream(
        self, batches: Iterable[Sequence[str]], *, threshold: float | None = None
    ) -> Iterator[PredictedBatch]:
        for texts in batches:
            yield self.predict_texts(texts, threshold=threshold)


def load_classifier(model_dir: Path | str, *, threads: int | None = None) -> TaskClassifier:
    """Open the classifier in ``model_dir`` (``classifier.onnx`` + ``model_card.json``)."""
    folder = Path(model_dir)
    card = read_card(folder)
    path = folder / MODEL_FILE
    if not path.is_file():
        raise ModelLoadError(path, "model file missing; retrain the classifier")
    model = path.read_bytes()
    sha = card.get("onnx", {}).get("sha256")
    if sha and hashlib.sha256(model).hexdigest() != sha:
        raise ModelLoadError(path, "does not match its model card (sha256 differs); retrain")
    tokenizer = folder / TOKENIZER_FILE
    tokenizer_json = tokenizer.read_text("utf-8") if tokenizer.is_file() else None
    return TaskClassifier(model, card, threads=threads, tokenizer_json=tokenizer_json)
