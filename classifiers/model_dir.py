"""A classifier folder: ``classifier.onnx`` + ``model_card.json`` (what it is, how it was trained,
how good it is on held-out data, and what a gateway needs to run it). No pickle: the ONNX file is
the model, and prediction never needs scikit-learn. A classifier with a sentence-encoder backbone
also has ``tokenizer.json`` (the encoder's): the documented pair a routing config names."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from classifiers.encoder import TOKENIZER_FILE
from classifiers.errors import ModelLoadError
from classifiers.export import OPSET, ParityReport
from classifiers.features import Lexicon, text_spec
from classifiers.taxonomy import Taxonomy
from classifiers.training import TrainedClassifier

MODEL_FILE = "classifier.onnx"
CARD_FILE = "model_card.json"
CARD_SCHEMA = 1


def classifier_version(model: bytes) -> str:
    """A stable id of one exported model: ``tc-`` + the first 12 hex of its SHA-256."""
    return "tc-" + hashlib.sha256(model).hexdigest()[:12]


def build_card(
    trained: TrainedClassifier,
    model: bytes,
    parity: ParityReport,
    *,
    taxonomy: Taxonomy,
    lexicon: Lexicon,
    label_sources: dict[str, int] | None = None,
    confidence_threshold: float | None = 0.5,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The model card: plain JSON, read by people, the plan page and the gateway.
    ``confidence_threshold=None`` takes the threshold suggested on held-out rows (else 0.5)."""
    suggested = trained.suggested_threshold
    threshold = confidence_threshold
    if threshold is None:
        threshold = suggested if suggested is not None else 0.5
    encoder = trained.encoder
    return {
        "schema": CARD_SCHEMA,
        "name": "task-type-classifier",
        "version": classifier_version(model),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "classes": list(trained.classes),
        "confidence_threshold": threshold,
        "threshold_source": "configured"
        if confidence_threshold is not None
        else ("held-out" if suggested is not None else "default"),
        "suggested_threshold": suggested,
        "label_source": trained.label_source,
        "figure": trained.evaluation.figure,
        "encoder": None
        if encoder is None
        else {
            "name": encoder.name,
            "sha256": encoder.sha256,
            "max_length": encoder.max_length,
            "dimensions": encoder.dimensions,
            "tokenizer_file": TOKENIZER_FILE,
            "onnx_inputs": ["text", "input_ids", "attention_mask"],
            "how": "input_ids/attention_mask: tokenizer.json (truncation max_length, padding) "
            "over the part of request_text after its first ' | ' (classifiers.encoder.tokenize)",
        },
        "taxonomy": taxonomy.to_dict(),
        "input": {
            "onnx_input": "text",
            "shape": ["N", 1],
            "type": "string",
            "text_spec": text_spec(lexicon),
            "how": "Build each request's string with request_text(messages); the output 'label' "
            "is the task type and max(probabilities) its confidence.",
        },
        "outputs": {
            "label": "string [N]",
            "probabilities": "float32 [N, classes] in 'classes' order",
        },
        "training": {
            "rows": trained.rows,
            "unique_texts": trained.unique_texts,
            "train_rows": trained.train_rows,
            "augmented_rows": trained.augmented_rows,
            "held_out_rows": trained.test_rows,
            "class_counts": trained.class_counts,
            "label_sources": dict(label_sources or {}),
            "seconds": trained.seconds,
            "params": trained.params.to_dict(),
            "lexicon_prior": trained.prior.to_dict() if trained.prior is not None else None,
            "split": dict(trained.split),
            "temperature": trained.temperature,
            "warnings": list(trained.warnings),
        },
        "evaluation": trained.evaluation.to_dict(),
        "onnx": {
            "file": MODEL_FILE,
            "bytes": len(model),
            "sha256": hashlib.sha256(model).hexdigest(),
            "opset": OPSET,
            "parity": parity.to_dict(),
        },
        "limitations": "Trained on the labels named in training.label_sources; held-out figures "
        "describe requests like those, not other sources or languages. Below "
        "confidence_threshold a prediction is marked uncertain.",
        **(extra or {}),
    }


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_classifier(
    model_dir: Path | str, model: bytes, card: dict[str, Any], *, tokenizer_json: str | None = None
) -> Path:
    """Write the model and its card (and an encoder's tokenizer) into ``model_dir``."""
    folder = Path(model_dir)
    if folder.exists() and not folder.is_dir():
        raise ModelLoadError(folder, "exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    if card.get("encoder") and tokenizer_json is None:
        raise ModelLoadError(
            folder / TOKENIZER_FILE, "the card names an encoder: pass its tokenizer"
        )
    if tokenizer_json is not None:
        _write_atomic(folder / TOKENIZER_FILE, tokenizer_json.encode("utf-8"))
    elif (folder / TOKENIZER_FILE).exists():
        (folder / TOKENIZER_FILE).unlink()
    _write_atomic(folder / MODEL_FILE, model)
    text = json.dumps(card, indent=2, ensure_ascii=False, default=str)
    _write_atomic(folder / CARD_FILE, text.encode("utf-8"))
    return folder


def read_card(model_dir: Path | str) -> dict[str, Any]:
    """The model card of a classifier folder, or :class:`ModelLoadError` naming what is wrong."""
    folder = Path(model_dir)
    card_path = folder / CARD_FILE
    if not folder.is_dir():
        raise ModelLoadError(
            folder, "no classifier folder here; run `migration-planner classify train` first"
        )
    if not card_path.is_file():
        raise ModelLoadError(card_path, "model card missing; retrain the classifier")
    try:
        card = json.loads(card_path.read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(card_path, f"model card is not valid JSON: {exc}") from exc
    if not isinstance(card, dict) or not isinstance(card.get("classes"), list):
        raise ModelLoadError(card_path, "model card lacks its 'classes' list")
    return card
