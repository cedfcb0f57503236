"""The demo and the ingest flow as real Prefect flow runs (one shared test server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from demo.logs import write_chat_log
from warehouse import open_warehouse


@pytest.mark.usefixtures("prefect_harness")
def test_ingest_flow_run(tmp_path: Path) -> None:
    from flows.warehouse_flow import ingest_flow

    logs = tmp_path / "l.jsonl"
    write_chat_log(logs, 100, malformed=2)
    wh = str(tmp_path / "w.duckdb")
    result = ingest_flow(wh, [str(logs)])
    assert (result["loaded"], result["rejected"]) == (100, 2)
    assert open_warehouse(wh, read_only=True).execute(
        "SELECT count(*) FROM requests"
    ).fetchall() == [(100,)]
