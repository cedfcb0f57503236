"""One real Prefect run of the classify flow: train, predict and the page data."""

from __future__ import annotations

from pathlib import Path

from demo.logs import write_chat_log
from flows.classify_flow import classify_flow
from warehouse.connection import open_warehouse
from warehouse.ingest import ingest_paths


def test_classify_flow_trains_predicts_and_returns_small_summaries(
    prefect_harness: None, tmp_path: Path
) -> None:
    write_chat_log(tmp_path / "log.jsonl", 800, seed=8)
    warehouse = tmp_path / "planner.duckdb"
    con = open_warehouse(warehouse)
    ingest_paths(con, [tmp_path / "log.jsonl"])
    con.close()
    config = tmp_path / "planner.toml"
    config.write_text("[classifier]\nconfidence_threshold = 0.6\n")
    out = classify_flow(str(warehouse), labels="all", config_path=str(config))
    assert out["train"]["model_dir"] == str(tmp_path / "classifier")
    assert out["train"]["label_sources"]["metadata"] > 0
    assert out["predict"]["rows"] == 800
    assert out["predict"]["confidence_threshold"] == 0.6
    page = out["page"]
    assert page["requests"] == 800 and sum(page["task_mix"].values()) == 800
    assert page["held_out"]["macro_f1"] == out["train"]["macro_f1"]
    assert page["confidence_threshold"] == 0.6
    con = open_warehouse(warehouse, read_only=True)
    try:
        assert con.execute("SELECT count(DISTINCT request_id) FROM predictions").fetchone() == (
            800,
        )
    finally:
        con.close()
