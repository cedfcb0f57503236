"""Parquet input: real files written by DuckDB (hive-partitioned folders, structs and JSON text),
read as chat-log records with every guarantee of the JSONL reader."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from demo.logs import generate_records
from warehouse import FormatError, ingest_paths, open_warehouse


def _jsonl(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_partitioned_parquet_folder_with_a_bad_row(tmp_path: Path) -> None:
    records = generate_records(60, seed=5)
    for i, r in enumerate(records):
        r["day"] = f"2026-11-0{1 + i % 2}"
        r.pop("_truth", None)
    bad = dict(records[7], latency_ms="fast")  # a string where a number belongs
    records[7] = bad
    src = _jsonl(tmp_path / "src.jsonl", records)
    folder = tmp_path / "logs"
    con = duckdb.connect()
    con.execute(
        f"COPY (SELECT * FROM read_json('{src}', format = 'newline_delimited', "
        "union_by_name = true)) "
        f"TO '{folder}' (FORMAT parquet, PARTITION_BY (day))"
    )
    con.close()
    files = sorted(folder.rglob("*.parquet"))
    assert len(files) == 2 and files[0].parent.name == "day=2026-11-01"
    wh = open_warehouse(tmp_path / "w.duckdb")
    report = ingest_paths(wh, [folder])
    t = report.totals
    assert [f.format for f in report.files] == ["parquet", "parquet"]
    assert (t.lines_read, t.loaded, t.rejected, t.duplicates) == (60, 59, 1, 0)
    ((where, line, reason, raw),) = wh.execute(
        "SELECT source_file, source_line, reason, raw FROM rejected_lines"
    ).fetchall()
    assert reason == "field latency_ms: must be a number, got varchar"
    assert Path(where).parent.name == "day=2026-11-02" and line == 4  # 8th record, 4th of its day
    assert json.loads(bytes(raw))["id"] == bad["id"]
    # rows keep their file order as line numbers; partition columns are not part of the record
    rows = wh.execute(
        "SELECT request_id, source_line, metadata FROM requests "
        "WHERE source_file LIKE '%day=2026-11-01%' ORDER BY source_line"
    ).fetchall()
    assert [r[0] for r in rows[:3]] == [records[0]["id"], records[2]["id"], records[4]["id"]]
    assert [r[1] for r in rows[:3]] == [1, 2, 3]
    assert "day" not in json.loads(rows[0][2])
    # same messages as the JSONL reader would load
    one = wh.execute(
        "SELECT messages FROM requests WHERE request_id = ?", [records[0]["id"]]
    ).fetchall()
    assert json.loads(one[0][0]) == records[0]["request"]["messages"]  # type: ignore[index]
    # re-ingest: nothing changes
    again = ingest_paths(wh, [folder])
    assert [f.status for f in again.files] == ["skipped", "skipped"]
    assert wh.execute("SELECT count(*) FROM requests").fetchall() == [(59,)]


def test_json_text_columns_and_format_choice(tmp_path: Path) -> None:
    con = duckdb.connect()
    path = tmp_path / "flat.parquet"
    messages = json.dumps([{"role": "user", "content": "hi"}])
    con.execute(
        f"""COPY (SELECT * FROM (VALUES
            ('a', TIMESTAMP '2026-11-19 08:15:02', json_object('model', 'gpt-4.1',
                 'messages', json(?)), '{{"task_type": "qa"}}'),
            ('b', TIMESTAMP '2026-11-19 08:16:00', '{{"messages": "not a list"}}', NULL),
            ('a', TIMESTAMP '2026-11-19 08:17:00', json_object('messages', json(?)), NULL)
        ) t(id, timestamp, request, metadata)) TO '{path}' (FORMAT parquet)""",
        [messages, messages],
    )
    wh = open_warehouse(tmp_path / "w.duckdb")
    t = ingest_paths(wh, [path], fmt="parquet").totals
    assert (t.lines_read, t.loaded, t.rejected, t.duplicates) == (3, 1, 1, 1)
    assert wh.execute(
        "SELECT request_id, ts::VARCHAR, label_task_type, last_user_message FROM requests"
    ).fetchall() == [("a", "2026-11-19 08:15:02", "qa", "hi")]
    assert wh.execute("SELECT source_line, reason FROM rejected_lines").fetchall() == [
        (2, "field request.messages: must be a list, got varchar")
    ]
    assert wh.execute("SELECT source_line FROM duplicate_lines").fetchall() == [(3,)]
    jsonl = _jsonl(tmp_path / "x.jsonl", [{"id": "1"}])
    with pytest.raises(FormatError, match="not a Parquet file"):
        ingest_paths(wh, [jsonl], fmt="parquet")
