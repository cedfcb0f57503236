"""Training with a held-out evaluation, and the model card written beside the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from classifiers import (
    CARD_FILE,
    MODEL_FILE,
    Lexicon,
    TaxonomyError,
    TrainingError,
    load_taxonomy,
    request_text,
    train_classifier,
)
from demo.logs import TASK_TYPES, generate_records, true_task_type

TAX = load_taxonomy()


def test_model_card_holds_held_out_figures_label_sources_and_parity(trained_dir: Path) -> None:
    card = json.loads((trained_dir / CARD_FILE).read_text())
    assert (trained_dir / MODEL_FILE).stat().st_size == card["onnx"]["bytes"]
    assert card["version"].startswith("tc-")
    assert set(card["classes"]) == set(TASK_TYPES)
    ev = card["evaluation"]
    assert 0.9 <= ev["macro_f1"] <= 1.0  # the generator's own templates: easy, in distribution
    assert set(ev["per_class"]) | set(ev["not_evaluated"]) == set(TASK_TYPES)
    for row in ev["per_class"].values():
        assert set(row) == {"precision", "recall", "f1", "support"} and row["support"] >= 1
    labels, matrix = ev["confusion"]["labels"], ev["confusion"]["matrix"]
    assert len(matrix) == len(labels) and all(len(r) == len(labels) for r in matrix)
    assert sum(map(sum, matrix)) == ev["rows"] == card["training"]["held_out_rows"]
    bins = ev["calibration"]["bins"]
    assert len(bins) == 10 and sum(b["count"] for b in bins) == ev["rows"]
    assert 0 <= ev["calibration"]["ece"] <= 1
    assert card["training"]["label_sources"]["metadata"] == card["training"]["rows"]
    assert card["training"]["label_sources"]["rules"] == 0
    assert card["onnx"]["parity"]["labels_equal"] is True
    assert card["onnx"]["parity"]["max_abs_diff"] < 1e-4
    spec = card["input"]["text_spec"]
    assert spec["version"] == "rt1"
    # The card alone lets a gateway rebuild the exact input string.
    lexicon = Lexicon(spec["lexicon"], spec["lexicon_version"])
    sample = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Résume ce texte, step by step: « café »?"},
    ]
    assert request_text(sample, lexicon) == request_text(sample)
    assert card["taxonomy"]["task_types"][0]["name"] == "classification"


def _data(n: int, seed: int = 5) -> tuple[list[list[dict[str, str]]], list[str]]:
    recs = generate_records(n, seed)
    return [r["request"]["messages"] for r in recs], [true_task_type(r) for r in recs]


def test_held_out_rows_never_share_a_text_with_training_rows() -> None:
    requests, labels = _data(800)
    trained = train_classifier(requests, labels, taxonomy=TAX, params=None)
    assert trained.unique_texts < len(requests)  # the generator repeats prompts
    assert trained.train_rows + trained.test_rows == trained.unique_texts
    assert trained.augmented_rows > 0
    assert trained.evaluation.rows == trained.test_rows == len(set(trained.test_texts))


def test_a_class_with_too_few_examples_is_trained_on_but_not_evaluated() -> None:
    requests, labels = _data(600)
    requests.append([{"role": "user", "content": "Tell me something odd."}])
    labels.append("other")
    trained = train_classifier(requests, labels, taxonomy=TAX)
    assert "other" in trained.classes
    assert "other" in trained.evaluation.not_evaluated
    assert "other" not in trained.evaluation.per_class
    assert any("'other' has 1 distinct labeled texts" in w for w in trained.warnings)


def test_one_class_is_not_enough() -> None:
    with pytest.raises(TrainingError, match="at least 2 task types"):
        train_classifier(
            [[{"role": "user", "content": f"x{i}"}] for i in range(10)], ["code"] * 10, taxonomy=TAX
        )


def test_too_few_examples_to_hold_out_is_one_clear_error() -> None:
    reqs = [[{"role": "user", "content": f"translate {i}"}] for i in range(3)]
    reqs += [[{"role": "user", "content": f"write code {i}"}] for i in range(3)]
    with pytest.raises(TrainingError, match="too few labeled examples to hold out"):
        train_classifier(reqs, ["rewrite"] * 3 + ["code"] * 3, taxonomy=TAX)


def test_labels_outside_the_taxonomy_are_refused() -> None:
    with pytest.raises(TaxonomyError, match="'poetry'"):
        train_classifier([[{"role": "user", "content": "x"}]] * 2, ["poetry", "code"], taxonomy=TAX)
