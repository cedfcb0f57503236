"""Predicting every request of a real warehouse through onnxruntime into `predictions`."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest

from classifiers import ModelLoadError, load_classifier
from pipeline.predict import (
    classifier_page_data,
    evaluate_file,
    predict_one,
    predict_warehouse,
)
from warehouse.connection import open_warehouse
from warehouse.errors import EmptyWarehouseError
from warehouse.predictions import prediction_runs


def test_every_request_gets_one_row_per_run_with_its_confidence(
    trained_dir: Path, make_warehouse: Callable[..., duckdb.DuckDBPyConnection]
) -> None:
    con = make_warehouse(700, seed=4)
    n = con.execute("SELECT count(*) FROM requests").fetchone()[0]  # type: ignore[index]
    out = predict_warehouse(con, trained_dir, threshold=0.9, batch_size=128)
    assert out["rows"] == n and out["drift"] is None
    rows = con.execute(
        "SELECT request_id, task_type, confidence, uncertain, classifier_version, prediction_run, "
        "predicted_at FROM predictions"
    ).fetchall()
    assert len(rows) == n == len({r[0] for r in rows})
    version = load_classifier(trained_dir).version
    classes = set(load_classifier(trained_dir).classes)
    for _rid, task, conf, unsure, ver, run, at in rows:
        assert task in classes
        assert 0.0 < conf <= 1.0
        assert unsure == (conf < 0.9)
        assert ver == version and run == out["run"] and at is not None
    assert sum(out["task_mix"].values()) == n
    assert out["uncertain"] == sum(1 for r in rows if r[3])
    # The generator's ground truth: the model should agree almost everywhere.
    agree = con.execute(
        "SELECT avg((p.task_type = r.label_task_type)::INT) FROM predictions p "
        "JOIN requests r USING (request_id) WHERE r.label_task_type IS NOT NULL"
    ).fetchone()[0]  # type: ignore[index]
    assert agree > 0.95


def test_second_run_reports_drift_against_the_first(
    trained_dir: Path, make_warehouse: Callable[..., duckdb.DuckDBPyConnection]
) -> None:
    con = make_warehouse(400, seed=6)
    first = predict_warehouse(con, trained_dir)
    second = predict_warehouse(con, trained_dir)
    assert second["drift"]["previous_run"] == first["run"]
    assert second["drift"]["mix_psi"] == 0.0 and second["drift"]["mix_verdict"] == "stable"
    # Now the traffic changes: drop every chatbot request and predict again.
    con.execute(
        "DELETE FROM requests WHERE label_task_type = 'chatbot' OR request_id IN "
        "(SELECT request_id FROM predictions WHERE task_type = 'chatbot')"
    )
    third = predict_warehouse(con, trained_dir)
    assert third["drift"]["previous_run"] == second["run"]
    assert third["drift"]["per_type"]["chatbot"]["share_after"] == 0.0
    assert third["drift"]["mix_psi"] > 0.25
    assert [r["run"] for r in prediction_runs(con)] == [first["run"], second["run"], third["run"]]
    page = classifier_page_data(con, trained_dir)
    assert (
        page["prediction_run"] == third["run"]
        and page["drift"]["mix_psi"] == third["drift"]["mix_psi"]
    )
    assert page["held_out"]["macro_f1"] >= 0.9
    assert page["label_sources"]["metadata"] > 0
    assert "chatbot" not in page["task_mix"]


def test_empty_warehouse_is_one_clear_error(trained_dir: Path, tmp_path: Path) -> None:
    con = open_warehouse(tmp_path / "empty.duckdb")
    try:
        with pytest.raises(EmptyWarehouseError, match="no requests yet"):
            predict_warehouse(con, trained_dir)
        assert con.execute("SELECT count(*) FROM predictions").fetchone()[0] == 0  # type: ignore[index]
    finally:
        con.close()


def test_missing_or_mismatched_model(trained_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no classifier folder"):
        load_classifier(tmp_path / "nothing")
    copy = tmp_path / "copy"
    shutil.copytree(trained_dir, copy)
    (copy / "classifier.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="does not match its model card"):
        load_classifier(copy)


def test_one_prompt(trained_dir: Path) -> None:
    out = predict_one(trained_dir, "Translate to French: good night")
    assert out["task_type"] == "rewrite"
    assert out["confidence"] == max(out["top"].values())


def test_evaluate_file_counts_unusable_lines_by_reason(trained_dir: Path, tmp_path: Path) -> None:
    good = {
        "id": "a",
        "request": {"messages": [{"role": "user", "content": "Translate to French: hi"}]},
        "metadata": {"task_type": "Rewrite"},
    }
    lines = [
        json.dumps(good),
        "{broken",
        json.dumps({**good, "metadata": {"task_type": "poetry"}}),
        "",
        json.dumps({**good, "request": {"messages": []}}),
        json.dumps(good),
    ]
    path = tmp_path / "labeled.jsonl"
    path.write_text("\n".join(lines) + "\n")
    out = evaluate_file(trained_dir, path)
    assert out["rows"] == 2 and out["per_class"]["rewrite"]["support"] == 2
    assert out["skipped"] == {
        "not a JSON object": {"lines": 1, "first_lines": [2]},
        "metadata.task_type outside the taxonomy": {"lines": 1, "first_lines": [3]},
        "no request.messages": {"lines": 1, "first_lines": [5]},
    }


def test_only_missing_predicts_just_what_this_classifier_has_not_seen(
    trained_dir: Path, make_warehouse: Callable[..., duckdb.DuckDBPyConnection]
) -> None:
    con = make_warehouse(300, seed=8)
    full = predict_warehouse(con, trained_dir)
    nothing_new = predict_warehouse(con, trained_dir, only_missing=True)
    assert nothing_new["rows"] == 0 and nothing_new["partial"] is True
    # Two requests arrive (copies under new ids): only they are predicted, with no drift figure.
    con.execute(
        "INSERT INTO requests SELECT * REPLACE ('new-' || request_id AS request_id) FROM requests "
        "ORDER BY request_id LIMIT 2"
    )
    partial = predict_warehouse(con, trained_dir, only_missing=True)
    assert partial["rows"] == 2 and partial["drift"] is None
    ids = con.execute(
        "SELECT request_id FROM predictions WHERE prediction_run = ? ORDER BY 1", [partial["run"]]
    ).fetchall()
    assert [r[0][:4] for r in ids] == ["new-", "new-"]
    n = con.execute("SELECT count(*) FROM predictions").fetchall()[0][0]
    assert n == full["rows"] + 2


def test_a_model_reads_requests_with_the_lexicon_it_was_trained_with(
    trained_dir: Path, tmp_path: Path
) -> None:
    """A later lexicon in the package must not change the keyword markers an older model reads:
    the card's lexicon (input.text_spec) builds its input, here one with an entry since removed."""
    from classifiers import default_lexicon, request_text

    old = tmp_path / "old"
    shutil.copytree(trained_dir, old)
    card_path = old / "model_card.json"
    card = json.loads(card_path.read_text("utf-8"))
    spec = card["input"]["text_spec"]
    spec["lexicon_version"] = "lex-older"
    spec["lexicon"]["code"] = [*spec["lexicon"]["code"], "zzqword"]
    card_path.write_text(json.dumps(card), "utf-8")

    assert load_classifier(trained_dir).lexicon is default_lexicon()
    clf = load_classifier(old)
    assert clf.lexicon.version == "lex-older"
    messages = [{"role": "user", "content": "zzqword for the report please"}]
    assert "__kw_code__" in clf.text(messages)
    assert "__kw_code__" not in request_text(messages)
    text = "zzqword for the report please"
    assert predict_one(old, text)["top"] != predict_one(trained_dir, text)["top"]
