"""Label precedence (human > relay > rules), taxonomy checks, and label storage in the warehouse."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest

from classifiers import LabelRecord, TrainingError, load_taxonomy, resolve_labels
from pipeline.classify import collect_labels, train_from_warehouse
from warehouse.labels import add_labels, label_counts, read_labels, replace_labels

TAX = load_taxonomy()


def test_human_labels_win_over_relay_which_wins_over_rules() -> None:
    records = [
        LabelRecord("r1", "code", "rules", "code_fence"),
        LabelRecord("r1", "reasoning", "relay", "m"),
        LabelRecord("r1", "classification", "metadata"),
        LabelRecord("r2", "rewrite", "rules", "translate"),
        LabelRecord("r2", "rewrite", "relay", "m"),
        LabelRecord("r3", "summarization", "rules", "summarize"),
    ]
    res = resolve_labels(records, TAX, "all")
    assert res.labels["r1"].task_type == "classification" and res.labels["r1"].source == "metadata"
    assert res.labels["r2"].source == "relay"
    assert "r3" not in res.labels  # rules only bootstrap: humans and the relay labeled something
    assert res.by_source == {"metadata": 1, "relay": 1, "rules": 0}
    assert res.overridden == 1 and res.disagreements == 1
    assert res.sources_used == ("metadata", "relay")


def test_rules_bootstrap_when_nothing_else_exists() -> None:
    records = [LabelRecord("r1", "code", "rules", "x"), LabelRecord("r2", "rewrite", "rules", "y")]
    res = resolve_labels(records, TAX, "all")
    assert res.rules_bootstrap
    assert res.by_source["rules"] == 2


def test_a_single_source_choice_reads_only_that_source() -> None:
    records = [LabelRecord("r1", "code", "rules", "x"), LabelRecord("r1", "chatbot", "metadata")]
    assert resolve_labels(records, TAX, "rules").labels["r1"].task_type == "code"
    assert resolve_labels(records, TAX, "metadata").labels["r1"].task_type == "chatbot"
    assert resolve_labels(records, TAX, "relay").labels == {}


def test_labels_outside_the_taxonomy_are_counted_and_dropped() -> None:
    records = [LabelRecord("r1", "poetry", "relay", "m"), LabelRecord("r2", "code", "relay", "m")]
    res = resolve_labels(records, TAX, "relay")
    assert list(res.labels) == ["r2"]
    assert res.outside_taxonomy == {"poetry": 1}


def test_label_storage_replaces_derived_sources_and_appends_the_relay_cache(
    make_warehouse: Callable[..., duckdb.DuckDBPyConnection],
) -> None:
    con = make_warehouse(50)
    replace_labels(con, "rules", [("req-0000001", "code", "code_fence")])
    replace_labels(con, "rules", [("req-0000002", "rewrite", "translate")])
    add_labels(con, "relay", [("req-0000003", "chatbot", "m1"), ("req-0000004", None, "m1")])
    add_labels(
        con, "relay", [("req-0000003", "open_qa", "m1")]
    )  # same request + annotator: replaced
    rows = read_labels(con)
    assert ("req-0000002", "rewrite", "rules", "translate") in rows
    assert not any(r[0] == "req-0000001" for r in rows)
    assert ("req-0000003", "open_qa", "relay", "m1") in rows
    assert label_counts(con)["relay"] == {"labels": 1, "invalid": 1}


def test_metadata_labels_outside_taxonomy_are_reported(
    make_warehouse: Callable[..., duckdb.DuckDBPyConnection],
) -> None:
    con = make_warehouse(300)
    con.execute(
        "UPDATE requests SET label_task_type = 'poetry' WHERE request_id IN "
        "(SELECT request_id FROM requests WHERE label_task_type IS NOT NULL LIMIT 7)"
    )
    con.execute(
        "UPDATE requests SET label_task_type = 'Closed QA' WHERE label_task_type = 'closed_qa'"
    )
    messages: list[str] = []
    res, report, outside = collect_labels(con, TAX, "metadata", progress=messages.append)
    assert outside == {"poetry": 7}
    assert any("7 human labels outside the taxonomy" in m for m in messages)
    assert report is None
    assert "closed_qa" in {r.task_type for r in res.labels.values()}  # normalized, not dropped
    stored = con.execute("SELECT count(*) FROM labels WHERE source = 'metadata'").fetchone()
    assert stored is not None and stored[0] == len(res.labels)


def test_rules_source_labels_requests_without_human_labels(
    make_warehouse: Callable[..., duckdb.DuckDBPyConnection],
) -> None:
    con = make_warehouse(300)
    res, _, _ = collect_labels(con, TAX, "rules")
    assert res.by_source["rules"] > 50
    human = {
        r[0]
        for r in con.execute(
            "SELECT request_id FROM requests WHERE label_task_type IS NOT NULL"
        ).fetchall()
    }
    assert not human & set(res.labels)


def test_training_without_any_label_is_one_clear_error(
    make_warehouse: Callable[..., duckdb.DuckDBPyConnection],
    tmp_path: pytest.TempPathFactory,
) -> None:
    con = make_warehouse(100)
    con.execute("UPDATE requests SET label_task_type = NULL")
    with pytest.raises(TrainingError, match="no labels to train on with --labels metadata"):
        train_from_warehouse(con, str(tmp_path), use="metadata")


def test_a_taxonomy_override_trains_on_its_own_types(
    make_warehouse: Callable[..., duckdb.DuckDBPyConnection], tmp_path: Path
) -> None:
    con = make_warehouse(600)
    path = tmp_path / "tax.json"
    path.write_text(
        json.dumps(
            {
                "task_types": [
                    {"name": "chatbot", "description": "talk", "tier_prior": "relay"},
                    {"name": "classification", "description": "label", "tier_prior": "local"},
                    {"name": "extraction", "description": "fields", "tier_prior": "local"},
                ]
            }
        )
    )
    out = train_from_warehouse(con, tmp_path / "m", use="metadata", taxonomy=load_taxonomy(path))
    card = json.loads((tmp_path / "m" / "model_card.json").read_text())
    assert set(card["classes"]) == {"chatbot", "classification", "extraction"}
    assert card["taxonomy"]["source"] == str(path)
    assert out["outside_taxonomy"] > 0  # every other human label: counted, not trained on
    assert (
        out["label_sources"]["metadata"] + out["outside_taxonomy"]
        == con.execute(
            "SELECT count(*) FROM requests WHERE label_task_type IS NOT NULL"
        ).fetchone()[0]
    )  # type: ignore[index]
