"""Ingest on real DuckDB files: every dirty line kept and counted, nothing loaded twice."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import duckdb
import pytest

from demo.logs import generate_records, write_chat_log, write_openai_batch
from warehouse import (
    FormatError,
    InputPathError,
    WarehouseOpenError,
    ingest_paths,
    list_rejects,
    open_warehouse,
)


def rec(i: int, **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": f"r-{i}",
        "timestamp": "2026-11-19T08:15:02.123Z",
        "request": {
            "model": "gpt-4.1",
            "messages": [
                {"role": "system", "content": "You label tickets."},
                {"role": "user", "content": f"ticket {i}"},
            ],
            "max_tokens": 16,
        },
        "response": {
            "model": "gpt-4.1-2025-04-14",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "billing"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1000, "completion_tokens": 500},
        },
        "status_code": 200,
        "latency_ms": 300.0,
    }
    base.update(over)
    return base


def write_lines(path: Path, lines: list[bytes | dict[str, Any]]) -> Path:
    data = b"\n".join(x if isinstance(x, bytes) else json.dumps(x).encode() for x in lines) + b"\n"
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def _text(value: object) -> str:
    return (
        bytes(value).decode("latin-1")
        if isinstance(value, bytes | bytearray | memoryview)
        else str(value)
    )


DIRTY: list[tuple[bytes | dict[str, Any], str | None]] = [
    (rec(1), None),
    (b"not json at all", "not valid JSON"),
    (
        b'{"id": "r-x", "timestamp": "2026-11-19T08:15:02Z", "request": {"messages": [',
        "not valid JSON",
    ),
    (
        b'{"id": "r-utf", "timestamp": "2026-11-19T08:15:02Z", "request": {"messages": [{"role": "user", "content": "caf\xe9"}]}}',
        "not valid UTF-8 (byte 0xe9 at column 111)",
    ),  # 1-based position of the 0xe9 byte
    (b"[1, 2]", "not a JSON object (got array)"),
    ({k: v for k, v in rec(2).items() if k != "id"}, "missing field: id"),
    (rec(3, id=["a"]), "field id: must be a string, got array"),
    ({k: v for k, v in rec(4).items() if k != "timestamp"}, "missing field: timestamp"),
    (rec(5, timestamp="last tuesday"), 'field timestamp: cannot parse "last tuesday"'),
    (
        rec(6, timestamp=1763540102123),
        "field timestamp: 1763540102123 is not epoch seconds (milliseconds?)",
    ),
    (rec(7, request={"model": "gpt-4.1"}), "missing field: request.messages"),
    (rec(8, request={"messages": []}), "field request.messages: empty list"),
    (rec(9, request={"messages": "hi"}), "field request.messages: must be a list, got varchar"),
    (
        rec(10, request={"messages": [{"role": "user", "content": 5}]}),
        "field request.messages[0]: needs a role (system/user/assistant/tool) and string or content-part content",
    ),
    (
        rec(11, request={"messages": [{"role": "system", "content": "only a system prompt"}]}),
        "field request.messages: no user message",
    ),
    (rec(12, latency_ms="fast"), "field latency_ms: must be a number, got varchar"),
    (rec(13, status_code="200"), "field status_code: must be an integer, got varchar"),
    (b"", None),
    (b"   ", None),
    (rec(1), None),  # duplicate of the first line
    (rec(14, timestamp=1763540102), None),
]


@pytest.fixture
def con(warehouse_file: Path) -> duckdb.DuckDBPyConnection:
    return open_warehouse(warehouse_file)


@pytest.mark.parametrize("spaces", [True, False], ids=["raw-lines", "read_json"])
def test_dirty_lines_are_kept_with_reasons_and_counted(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, spaces: bool
) -> None:
    """Without its line of spaces the file is read with read_json: the undecodable line makes
    DuckDB refuse the file, and the careful scan that follows still keeps every line."""
    dirty = [(line, reason) for line, reason in DIRTY if spaces or line != b"   "]
    path = write_lines(tmp_path / "dirty.jsonl", [line for line, _ in dirty])
    report = ingest_paths(con, [path])
    t = report.totals
    n = len(dirty)
    assert (t.lines_read, t.loaded, t.duplicates, t.rejected, t.blank) == (n, 2, 1, 16, n - 19)
    assert t.lines_read == t.loaded + t.duplicates + t.rejected + t.blank
    got = dict(con.execute("SELECT source_line, reason FROM rejected_lines").fetchall())
    expected = {i + 1: reason for i, (_, reason) in enumerate(dirty) if reason}
    assert got == expected
    raw = con.execute("SELECT raw FROM rejected_lines WHERE source_line = 4").fetchall()[0][0]
    assert bytes(raw) == DIRTY[3][0]  # the undecodable bytes, as they were
    dup = con.execute("SELECT source_line, request_id FROM duplicate_lines").fetchall()
    assert dup == [(n - 1, "r-1")]
    loaded = con.execute(
        "SELECT request_id, source_line, ts::VARCHAR FROM requests ORDER BY 1"
    ).fetchall()
    assert loaded == [("r-1", 1, "2026-11-19 08:15:02.123"), ("r-14", n, "2025-11-19 08:15:02")]


def test_gzip_and_plain_give_the_same_rows(tmp_path: Path) -> None:
    lines: list[bytes | dict[str, Any]] = [line for line, _ in DIRTY]
    plain, gz = (
        write_lines(tmp_path / "a.jsonl", lines),
        write_lines(tmp_path / "a.jsonl.gz", lines),
    )
    results = []
    for path in (plain, gz):
        c = open_warehouse(tmp_path / f"{path.name}.duckdb")
        ingest_paths(c, [path])
        results.append(
            c.execute("SELECT request_id, messages, cost_usd FROM requests ORDER BY 1").fetchall()
        )
        results.append(
            c.execute("SELECT source_line, reason FROM rejected_lines ORDER BY 1").fetchall()
        )
    assert results[0] == results[2] and results[1] == results[3]
    assert len(results[0]) == 2 and len(results[1]) == 16  # rows, not two empty lists


def test_reingest_changes_nothing_and_duplicates_across_files(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    first = write_chat_log(tmp_path / "day1.jsonl", 300, seed=4, malformed=3)
    assert first == 303
    ingest_paths(con, [tmp_path / "day1.jsonl"])
    snapshot = [
        con.execute(f"SELECT count(*) FROM {t}").fetchall()
        for t in ("requests", "rejected_lines", "duplicate_lines", "ingest_batches")
    ]
    again = ingest_paths(con, [tmp_path / "day1.jsonl"])
    assert again.files[0].status == "skipped" and again.totals.loaded == 0
    assert snapshot == [
        con.execute(f"SELECT count(*) FROM {t}").fetchall()
        for t in ("requests", "rejected_lines", "duplicate_lines", "ingest_batches")
    ]
    # the same requests in a different file (a re-export) are duplicates, not new rows
    records = generate_records(300, seed=4)
    write_lines(tmp_path / "reexport.jsonl", [*records[:50], rec(999)])
    rep = ingest_paths(con, [tmp_path / "reexport.jsonl"])
    assert (rep.totals.loaded, rep.totals.duplicates) == (1, 50)
    ((n, distinct),) = con.execute(
        "SELECT count(*), count(DISTINCT request_id) FROM requests"
    ).fetchall()
    assert n == distinct == 301


def test_openai_batch_join(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    n_in, n_out = write_openai_batch(tmp_path / "in.jsonl", tmp_path / "out.jsonl", 12, seed=1)
    assert (n_in, n_out) == (12, 11)
    with (tmp_path / "out.jsonl").open("a") as f:  # an orphan output and a repeated one
        f.write(
            json.dumps({"custom_id": "request-99", "response": {"status_code": 200, "body": {}}})
            + "\n"
        )
        f.write((tmp_path / "out.jsonl").read_text().splitlines()[0] + "\n")
        f.write("{broken\n")
    rep = ingest_paths(con, [tmp_path / "in.jsonl"], batch_output=tmp_path / "out.jsonl")
    t = rep.totals
    assert (t.loaded, t.joined, t.duplicates, t.rejected) == (
        12,
        11,
        1,
        2,
    )  # error output joins too
    assert t.lines_read == 12 + 14 == t.loaded + t.joined + t.duplicates + t.rejected + t.blank
    rows = dict(
        con.execute("""SELECT split_part(request_id, ':', 2), coalesce(error_message, 'ok')
                               FROM requests""").fetchall()
    )
    assert rows["request-2"].startswith("no output line for this request")
    assert rows["request-3"] == "The model had an error"
    assert sum(v == "ok" for v in rows.values()) == 10
    reasons = sorted(r for (r,) in con.execute("SELECT reason FROM rejected_lines").fetchall())
    assert reasons == ["no loadable input line has custom_id request-99", "not valid JSON"]
    ok = con.execute("""SELECT count(*) FROM requests WHERE error_message IS NULL
                        AND response_text IS NOT NULL AND cost_source = 'price-table'""").fetchall()
    assert ok == [(10,)]
    # auto-detection pairs an input with --batch-output, and the same pair again is a no-op
    again = ingest_paths(con, [tmp_path / "in.jsonl"], batch_output=tmp_path / "out.jsonl")
    assert again.files[0].status == "skipped"


def test_batch_pairing_errors_say_what_to_do(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    write_openai_batch(tmp_path / "in.jsonl", tmp_path / "out.jsonl", 5)
    with pytest.raises(FormatError, match="needs its output file: pass --batch-output"):
        ingest_paths(con, [tmp_path / "in.jsonl"])
    with pytest.raises(FormatError, match="batch output file: ingest its input"):
        ingest_paths(con, [tmp_path / "out.jsonl"])
    assert con.execute("SELECT count(*) FROM ingest_batches").fetchall() == [(0,)]


def test_credentials_never_reach_the_warehouse(warehouse_file: Path, tmp_path: Path) -> None:
    con = open_warehouse(warehouse_file)
    secret = "sk-live-EXAMPLEnotAKey0000"
    lines: list[bytes | dict[str, Any]] = [
        rec(
            1,
            request={**rec(1)["request"], "api_key": secret},
            metadata={"feature": "x", "headers": {"Authorization": f"Bearer {secret}"}},
        ),
        rec(2, metadata={"nested": {"x-api-key": secret}, "task_type": "classification"}),
        # a broken line with a key in it is rejected, but the key is masked in the kept raw text
        f'{{"id": "r-3", "api_key": "{secret}", "timestamp": oops}}'.encode(),
        f'{{"id": "r-4", "token": "Bearer {secret}" \xff}}'.encode("latin-1"),
    ]
    ingest_paths(con, [write_lines(tmp_path / "keys.jsonl", lines)])
    assert con.execute("SELECT count(*) FROM requests").fetchall() == [(2,)]
    # nothing lingers in the session either, and the file holds no key
    assert not [
        t
        for (t,) in con.execute("SELECT table_name FROM duckdb_tables() WHERE temporary").fetchall()
    ]
    con.close()
    assert secret.encode() not in warehouse_file.read_bytes()
    con = open_warehouse(warehouse_file)
    for (table,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall():
        dump = json.dumps(con.execute(f"SELECT * FROM {table}").fetchall(), default=_text)
        assert secret not in dump, table
    meta = con.execute("SELECT metadata FROM requests WHERE request_id = 'r-1'").fetchall()[0][0]
    assert json.loads(meta) == {"feature": "x", "headers": {"Authorization": "[REDACTED]"}}


def test_normalization_of_conversations_content_parts_and_cost(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    sys_msg = {"role": "system", "content": "Be brief."}
    turn1 = [
        sys_msg,
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "hello"},
                {"type": "image_url", "image_url": {"url": "x"}},
            ],
        },
    ]
    turn2 = [*turn1, {"role": "assistant", "content": "hi"}, {"role": "user", "content": "and?"}]
    lines: list[bytes | dict[str, Any]] = [
        rec(
            1,
            request={"model": "gpt-4.1", "messages": turn1},
            timestamp="2026-11-19T10:00:00+02:00",
        ),
        rec(2, request={"model": "gpt-4.1", "messages": turn2}),
        rec(
            3,
            request={"model": "mystery-model", "messages": turn1},
            conversation_id="c-9",
            response={**rec(3)["response"], "model": "mystery-model-v2"},
        ),
        {k: v for k, v in rec(4).items() if k != "response"}
        | {"status_code": 429, "error": {"message": "slow down"}},
    ]
    ingest_paths(con, [write_lines(tmp_path / "conv.jsonl", lines)], prices={"gpt-4.1": (1.0, 2.0)})
    rows = {
        r[0]: r[1:]
        for r in con.execute("""
        SELECT request_id, conversation_id, turn_index, last_user_message, system_prompt,
               cost_usd, cost_source, ts::VARCHAR, status_code, error_message FROM requests""").fetchall()
    }
    assert rows["r-1"][0] == rows["r-2"][0] and rows["r-1"][0].startswith("derived-")
    assert (rows["r-1"][1], rows["r-2"][1], rows["r-3"][0]) == (0, 1, "c-9")
    assert rows["r-1"][2] == "hello" and rows["r-2"][2] == "and?" and rows["r-1"][3] == "Be brief."
    assert rows["r-1"][4] == pytest.approx((1000 * 1.0 + 500 * 2.0) / 1e6)  # override price
    assert rows["r-3"][4:6] == (None, "unknown-model")
    assert rows["r-1"][6] == "2026-11-19 08:00:00"  # offsets normalized to UTC
    assert rows["r-4"][7:] == (429, "slow down") and rows["r-4"][4:6] == (0.0, "failed-call")


def test_open_refuses_a_file_that_is_not_duckdb(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("my precious notes\n" * 10)
    with pytest.raises(WarehouseOpenError, match="not a DuckDB database file"):
        open_warehouse(notes)
    assert notes.read_text() == "my precious notes\n" * 10


def test_paths_that_hold_no_logs(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    with pytest.raises(InputPathError, match="no such file or directory"):
        ingest_paths(con, [tmp_path / "missing.jsonl"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(InputPathError, match="directory holds no log files"):
        ingest_paths(con, [tmp_path / "empty"])
    weird = write_lines(tmp_path / "other.jsonl", [{"trace_id": 1, "spans": []}])
    with pytest.raises(FormatError, match="unrecognized log format"):
        ingest_paths(con, [weird])
    assert con.execute("SELECT count(*) FROM ingest_batches").fetchall() == [(0,)]


def test_list_rejects_reports_counts_by_reason(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    ingest_paths(con, [write_lines(tmp_path / "dirty.jsonl", [line for line, _ in DIRTY])])
    data = list_rejects(con, limit=3)
    assert data["total"] == 16 and len(data["lines"]) == 3
    assert {"reason": "not valid JSON", "count": 2} in data["by_reason"]
    assert data["lines"][0] == {
        "file": str(tmp_path / "dirty.jsonl"),
        "line": 2,
        "reason": "not valid JSON",
        "raw": "not json at all",
    }


def test_one_over_long_line_among_short_ones_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line over the limit spans whole chunks with no newline, however short the other lines
    are — an average line length says nothing (scaled down: 1,600-byte chunks, 6,400-byte limit)."""
    from warehouse import rawfile

    monkeypatch.setattr(rawfile, "CHUNK", 1600)
    monkeypatch.setattr(rawfile, "MAX_LINE_BYTES", 6400)
    path = tmp_path / "long.jsonl"
    path.write_bytes(b"{}\n" * 200 + b'{"x": "' + b"a" * 7000 + b'"}\n' + b"{}\n" * 200)
    scanned = rawfile.scan_file(path)
    try:
        assert scanned.n_lines == 401
        assert [(b.line_no, len(b.raw)) for b in scanned.bad_lines] == [
            (201, 6400)
        ]  # first MAX_LINE_BYTES kept
        assert scanned.bad_lines[0].reason.startswith("line longer than")
    finally:
        scanned.cleanup()
