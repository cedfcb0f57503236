"""Schema versions: a warehouse file written by the previous version (1) is upgraded in place the
first time it is opened for writing; its rows stay as they were and its old replays still count
as evidence (matched by request id, as version 1 matched them)."""

from __future__ import annotations

from pathlib import Path

import duckdb

from demo.logs import write_chat_log
from warehouse.connection import open_warehouse
from warehouse.ingest import ingest_paths
from warehouse.replays import store_content_keys, store_replays
from warehouse.sampling import draw_sample
from warehouse.schema import SCHEMA_VERSION, schema_version
from warehouse.scores import evidence_rows

V2_COLUMNS = ("content_key", "served_model", "system_fingerprint")


def version_1_file(tmp_path: Path) -> tuple[Path, str, str]:
    """A warehouse as version 1 left it: ingested requests, a sample, one replay row, and none
    of version 2's columns or tables. Returns (file, sample id, replayed request id)."""
    path = tmp_path / "old.duckdb"
    log = tmp_path / "log.jsonl"
    write_chat_log(log, 40, seed=2)
    con = open_warehouse(path)
    ingest_paths(con, [log])
    sample = draw_sample(con, per_type=2, seed=0)
    (rid,) = con.execute(
        "SELECT request_id FROM samples WHERE sample_id = ? ORDER BY request_id LIMIT 1",
        [sample.sample_id],
    ).fetchone()  # type: ignore[misc]
    for column in V2_COLUMNS:
        con.execute(f"ALTER TABLE replays DROP COLUMN {column}")
    con.execute("DROP TABLE request_content")
    con.execute("DROP TABLE relay_serving")
    con.execute("UPDATE schema_info SET value = '1' WHERE key = 'version'")
    con.execute(
        """
        INSERT INTO replays VALUES ('rp-old', ?, 'relay', 'relay-abc', 'an old answer', 10, 20,
                                    5, 3, false, 100, NULL, 0.001, NULL, NULL, 1,
                                    now()::TIMESTAMP)
        """,
        [rid],
    )
    con.close()
    return path, sample.sample_id, str(rid)


def columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    return [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()]


def test_a_version_1_file_is_upgraded_in_place(tmp_path: Path) -> None:
    path, sample_id, rid = version_1_file(tmp_path)
    old = duckdb.connect(str(path), read_only=True)
    assert schema_version(old) == 1 and "content_key" not in columns(old, "replays")
    requests_before = old.execute("SELECT count(*) FROM requests").fetchall()
    old.close()

    con = open_warehouse(path)  # for writing: upgraded
    try:
        assert schema_version(con) == SCHEMA_VERSION == 3
        assert columns(con, "replays")[-3:] == list(V2_COLUMNS)
        assert {"request_content", "relay_serving", "embeddings"} <= {
            r[0] for r in con.execute("SHOW TABLES").fetchall()
        }
        assert con.execute("SELECT count(*) FROM requests").fetchall() == requests_before
        row = con.execute(
            "SELECT request_id, output_text, content_key, served_model FROM replays "
            "WHERE replay_id = 'rp-old'"
        ).fetchall()
        assert row == [(rid, "an old answer", None, None)]
        # the old row is evidence for its request (no content key: matched by request id) ...
        found = [r for r in evidence_rows(con, sample_id) if r["candidate"] == "relay"]
        assert [(r["request_id"], r["prompt_tokens"]) for r in found] == [(rid, 5)]
        # ... and new rows are written with the new columns
        store_content_keys(con, [(rid, "ck-1")])
        store_replays(
            con,
            [
                {
                    "replay_id": "rp-new",
                    "request_id": rid,
                    "candidate": "relay",
                    "candidate_fingerprint": "relay-abc",
                    "output_text": "a new answer",
                    "content_key": "ck-1",
                    "served_model": "m-2",
                }
            ],
        )
        newest = [r for r in evidence_rows(con, sample_id) if r["candidate"] == "relay"]
        assert len(newest) == 1 and newest[0]["prompt_tokens"] is None  # the newer row wins
    finally:
        con.close()
    again = open_warehouse(path)  # opening an upgraded file again changes nothing
    try:
        assert schema_version(again) == SCHEMA_VERSION
        assert again.execute("SELECT count(*) FROM replays").fetchall() == [(2,)]
    finally:
        again.close()


def test_a_new_file_starts_at_the_current_version(tmp_path: Path) -> None:
    con = open_warehouse(tmp_path / "new.duckdb")
    try:
        assert schema_version(con) == SCHEMA_VERSION
        assert columns(con, "replays")[-3:] == list(V2_COLUMNS)
    finally:
        con.close()
