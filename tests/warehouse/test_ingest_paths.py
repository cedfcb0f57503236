"""The fast chat-log path against the general one, chunked reads, and the user's file left alone."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest

from demo.logs import generate_records
from warehouse import ingest_paths, open_warehouse

TABLES = {
    "requests": "SELECT * EXCLUDE (batch_id) FROM requests ORDER BY source_line",
    "rejected_lines": "SELECT source_line, reason, raw FROM rejected_lines ORDER BY 1",
    "duplicate_lines": "SELECT source_line, request_id FROM duplicate_lines ORDER BY 1",
}


def _varied(n: int) -> list[bytes]:
    """Valid lines of many shapes (content parts, tool-call messages, extra params, escapes,
    numeric ids, epoch timestamps, errors) and broken ones."""
    lines: list[Any] = list(generate_records(n, seed=3))
    extra: list[Any] = [
        {
            "id": 17,
            "timestamp": 1763540102.5,
            "request": {
                "model": "gpt-4.1",
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": 'say "hi"\n'}]},
                    {"role": "assistant", "content": None, "tool_calls": [{"id": "t1"}]},
                    {"role": "tool", "content": "42"},
                    {"role": "user", "content": "caf\u00e9 \\ done"},
                ],
                "top_p": 0.5,
                "api_key": "sk-live-abcdefghijklmnop",
            },
            "conversation_id": 7,
            "metadata": {"task_type": "qa", "headers": {"Authorization": "Bearer abcdefghijk"}},
        },
        {  # keys pasted into the messages and the answer: both paths mask them alike
            "id": "r-keys",
            "timestamp": "2026-11-19T08:15:02Z",
            "request": {
                "messages": [
                    {"role": "system", "content": "key\nsk-abcdefghijklmnopqrstuvwxyz0123"},
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": '"AKIAIOSFODNN7EXAMPLE" é'},
                            {"type": "text", "text": "-----BEGIN PRIVATE KEY-----\nMIIE\n"},
                            {"type": "text", "text": "-----END PRIVATE KEY-----\ttask-force"},
                        ],
                    },
                    {"role": "assistant", "content": "Bearer abcdefghijklmnop0123"},
                    {
                        "role": "user",
                        "content": "\\nsk-abcdefghijklmnopqrstuvwxyz0123 postgres://u:p@h",
                    },
                ],
            },
            "response": {"choices": [{"message": {"content": "use ghp_" + "a1" * 20}}]},
            "error": {"message": "Incorrect API key provided: sk-abcdefghijklmnopqrstuvwxyz0123"},
        },
        {
            "id": "r-err",
            "timestamp": "2026-11-19T08:15:02+01:00",
            "request": {"messages": [{"role": "user", "content": "x"}]},
            "status_code": 500,
            "error": {"message": "boom"},
        },
        {"id": "r-resp", "timestamp": "2026-11-19T08:15:02Z", "response": "nope"},
        {"id": "", "timestamp": "2026-11-19T08:15:02Z", "request": {"messages": []}},
        {"id": "r-big", "timestamp": "2026-11-19", "request": {"messages": [{"role": "user"}]}},
        {"id": "r-big2", "timestamp": "2026-11-19", "request": {"messages": [{"role": 1}]}},
        {
            "id": "r-int",
            "timestamp": "2026-11-19T00:00:00Z",
            "request": {"messages": [{"role": "user", "content": "x"}], "max_tokens": 1.5},
        },
        {
            "id": "r-u",
            "timestamp": "2026-11-19T00:00:00Z",
            "request": {"messages": [{"role": "user", "content": "x"}]},
            "response": {"usage": {"prompt_tokens": 18446744073709551615}},
        },
    ]
    out = [json.dumps(x, ensure_ascii=False).encode() for x in lines + extra]
    out += [b"", b"   ", b"{oops", b"[]", out[0]]  # blank, broken, not an object, duplicate
    return out


def _dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    con = open_warehouse(path)
    try:
        return {name: con.execute(sql).fetchall() for name, sql in TABLES.items()}
    finally:
        con.close()


# Odd but loadable values: every reader must store them the same way.
_ODD: list[dict[str, Any]] = [
    {
        "id": 123456789012,
        "timestamp": 1763540102,
        "request": {"model": None, "messages": [{"role": "user", "content": "a\\tb\u0001"}]},
        "response": {"model": 5, "choices": [{"finish_reason": {"x": 1}}], "usage": None},
        "user": 42,
        "metadata": {"task_type": 7, "feature": None},
        "error": "plain",
    },
    {
        "id": "r-odd2",
        "timestamp": "2026-11-19 08:15:02",
        "request": {
            "messages": [{"role": "developer", "content": "d"}, {"role": "user", "content": []}],
            "temperature": -1e-3,
            "max_tokens": None,
            "stream": True,
        },
        "response": None,
        "user": {"name": "x"},
        "conversation_id": "",
        "status_code": None,
        "error": {"code": 1},
    },
    {
        "id": "r-odd3",
        "timestamp": "2026-11-19T08:15:02Z",
        "request": {"messages": [{"content": "c", "role": "user"}], "Authorization": "Bearer x"},
        "response": {"choices": [{"message": {"content": '\u00e9"q"'}}]},
        "cost_usd": 0,
    },
    {
        "id": "r-odd4",
        "timestamp": "2026-11-19T08:15:02Z",
        "request": {"messages": [{"role": "user", "content": "x"}]},
        "response": {"choices": {"0": 1}},
        "ttft_ms": None,
    },
]


@pytest.mark.parametrize("blanks", ["none", "empty", "spaces"])
def test_fast_path_loads_exactly_what_the_general_path_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blanks: str
) -> None:
    """Both fast readers store exactly what the general path stores, line for line: read_json
    (which gives an empty line no row: the scan noted where they are), and raw lines, for a file
    with a line of spaces (read_json skips it, too, but it is nowhere noted)."""
    import warehouse.chatlog
    import warehouse.ingest

    lines = _varied(300) + [json.dumps(x).encode() for x in _ODD]
    if blanks == "none":
        lines = [line for line in lines if line.strip()]
    elif blanks == "empty":  # first and last lines empty, a run of them in the middle
        lines = [b"", *(line if line.strip() else b"" for line in lines), b"", b"", b""]
        lines[150:150] = [b"", b""]
    log = tmp_path / "mixed.jsonl"
    log.write_bytes(b"\n".join(lines) + b"\n")
    fast_db, slow_db = tmp_path / "fast.duckdb", tmp_path / "slow.duckdb"
    readers = _spy_on_readers(monkeypatch)
    con = open_warehouse(fast_db)
    fast = ingest_paths(con, [log]).totals
    con.close()
    # a line of spaces (read_json skips it) makes the raw-line reader read the file again
    expected = ["stage_chat_log_json_sql"] + (["stage_chat_log_sql"] if blanks == "spaces" else [])
    assert readers == expected
    for name in ("stage_chat_log_json_sql", "stage_chat_log_sql"):
        monkeypatch.setattr(
            warehouse.ingest, name, functools.partial(getattr(warehouse.chatlog, name), fast=False)
        )
    con = open_warehouse(slow_db)
    slow = ingest_paths(con, [log]).totals
    con.close()
    assert fast == slow
    blank = sum(1 for line in lines if not line.strip())
    assert blank == {"none": 0, "empty": 8, "spaces": 2}[blanks]
    assert (fast.lines_read, fast.duplicates, fast.blank) == (len(lines), 1, blank)
    assert fast.rejected == 7 and fast.loaded == 308
    a, b = _dump(fast_db), _dump(slow_db)
    for name in TABLES:
        assert a[name] == b[name], name
    assert len(a["requests"]) == 308
    # every row sits on its own line
    for row in a["requests"]:
        request_id, line_no = row[0], row[30]
        assert str(json.loads(lines[line_no - 1])["id"]) == request_id
    reasons = {line: reason for line, reason, _ in a["rejected_lines"]}
    no_content = next(i for i, line in enumerate(lines) if b'"r-big"' in line) + 1
    assert reasons[no_content].startswith("field request.messages[0]: needs a role")
    odd = {r[0]: r for r in a["requests"] if r[0] in ("123456789012", "r-odd2", "r-odd3")}
    assert odd["123456789012"][5:7] == ("5", "5")  # model (else the responding one), response
    assert odd["r-odd3"][17] == 'é"q"'  # response_text
    keys = next(r for r in a["requests"] if r[0] == "r-keys")
    assert keys[7] == "key\n[REDACTED:api_key]"  # system_prompt
    assert keys[9] == "\\n[REDACTED:api_key] postgres://u:[REDACTED:password]@h"  # last user
    assert keys[17] == "use [REDACTED:access_token]"  # response_text
    assert keys[22] == "Incorrect API key provided: [REDACTED:api_key]"  # error_message
    parts = json.loads(keys[8])[1]["content"]  # messages
    assert [p["text"] for p in parts] == [
        '"[REDACTED:aws_access_key_id]" é',
        "[REDACTED:private_key]\nMIIE\n",  # BEGIN and END in two parts: what follows BEGIN
        "-----END PRIVATE KEY-----\ttask-force",
    ]
    if blanks == "empty":  # compressed, in many chunk files: each chunk numbers its own rows
        import gzip

        from warehouse import rawfile

        monkeypatch.setattr(rawfile, "CHUNK_FILE_BYTES", 20_000)
        packed = tmp_path / "mixed.jsonl.gz"
        packed.write_bytes(gzip.compress(log.read_bytes()))
        con = open_warehouse(tmp_path / "gz.duckdb")
        assert ingest_paths(con, [packed]).totals == fast
        con.close()
        c = _dump(tmp_path / "gz.duckdb")
        for name in TABLES:
            assert [r[:29] + r[30:] for r in c[name]] == [r[:29] + r[30:] for r in a[name]]


def test_empty_lines_are_found_across_blocks_and_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each empty line's number, however the blocks and chunk files fall; None past
    MAX_BLANK_LINES (the chunk is then read as raw lines)."""
    import gzip

    from warehouse import rawfile

    monkeypatch.setattr(rawfile, "CHUNK", 7)  # blocks of 7 bytes: newlines fall on every edge
    monkeypatch.setattr(rawfile, "CHUNK_FILE_BYTES", 40)
    text = b"\n\nab\n\n\ncd\n" + b"efgh\n" * 10 + b"\n" + b"ij\n\n"
    expected = [i + 1 for i, line in enumerate(text.split(b"\n")[:-1]) if not line]
    assert expected == [1, 2, 4, 5, 17, 19]
    for name, data in (("plain.jsonl", text), ("packed.jsonl.gz", gzip.compress(text))):
        (tmp_path / name).write_bytes(data)
        scanned = rawfile.scan_file(tmp_path / name)
        try:
            found = [rawfile.empty_lines(c) for c in scanned.chunks]
            assert [n for f in found for n in f or []] == expected, name
            for c, f in zip(scanned.chunks, found, strict=True):
                assert all(c.first_line <= n < c.first_line + c.n_lines for n in f or [])
            assert (len(scanned.chunks) > 1) == name.endswith(".gz")  # gz: chunk files
            monkeypatch.setattr(rawfile, "MAX_BLANK_LINES", 3)
            assert rawfile.empty_lines(scanned.chunks[0]) is None
            monkeypatch.setattr(rawfile, "MAX_BLANK_LINES", 100)
        finally:
            scanned.cleanup()


def test_a_log_of_many_empty_lines_is_read_as_raw_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from warehouse import rawfile

    monkeypatch.setattr(rawfile, "MAX_BLANK_LINES", 3)
    readers = _spy_on_readers(monkeypatch)
    lines = [line for line in _varied(20) if line.strip()]
    log = tmp_path / "spaced.jsonl"
    log.write_bytes(b"\n\n".join(lines) + b"\n")  # an empty line between every two
    con = open_warehouse(tmp_path / "w.duckdb")
    t = ingest_paths(con, [log]).totals
    assert readers == ["stage_chat_log_json_sql", "stage_chat_log_sql"]
    assert (t.lines_read, t.blank, t.loaded) == (2 * len(lines) - 1, len(lines) - 1, 24)
    got = con.execute("SELECT request_id, source_line FROM requests").fetchall()
    assert all(str(json.loads(lines[(n - 1) // 2])["id"]) == i for i, n in got)


def _spy(calls: list[str], name: str, real: Any, *args: Any, **kwargs: Any) -> str:
    calls.append(name)
    return str(real(*args, **kwargs))


def _spy_on_readers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the chunk readers the ingest uses, in order, as it uses them."""
    import warehouse.chatlog
    import warehouse.ingest

    readers: list[str] = []
    for name in ("stage_chat_log_json_sql", "stage_chat_log_sql"):
        monkeypatch.setattr(
            warehouse.ingest,
            name,
            functools.partial(_spy, readers, name, getattr(warehouse.chatlog, name)),
        )
    return readers


def test_chunks_number_lines_across_files_and_leave_the_log_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from warehouse import rawfile

    monkeypatch.setattr(rawfile, "CHUNK_FILE_BYTES", 20_000)  # a few dozen lines per chunk
    lines = _varied(200)
    log = tmp_path / "big.jsonl"
    data = b"\r\n".join(lines)  # CRLF, and no newline at the end
    log.write_bytes(data)
    scanned = rawfile.scan_file(log)
    try:
        assert len(scanned.chunks) > 5 and scanned.utf8_checked  # CRs: the slow pass
        assert [c.first_line for c in scanned.chunks][:2] == [1, scanned.chunks[0].n_lines + 1]
        assert sum(c.n_lines for c in scanned.chunks) == scanned.n_lines == len(lines)
    finally:
        scanned.cleanup()
    con = open_warehouse(tmp_path / "w.duckdb")
    report = ingest_paths(con, [log])
    assert report.totals.lines_read == len(lines) and report.totals.rejected == 7
    # every loaded row sits on the line that holds its id
    got = con.execute("SELECT request_id, source_line FROM requests").fetchall()
    for request_id, line_no in got:
        assert json.loads(lines[line_no - 1])["id"] == (
            int(request_id) if request_id.isdigit() else request_id
        )
    rejected = dict(con.execute("SELECT source_line, reason FROM rejected_lines").fetchall())
    assert rejected[len(lines) - 1] == "not a JSON object (got array)"
    assert rejected[len(lines) - 2] == "not valid JSON"
    assert log.read_bytes() == data  # read where it is or copied, never changed or removed


def test_a_small_plain_log_is_read_in_place_and_kept(tmp_path: Path) -> None:
    log = tmp_path / "small.jsonl"
    log.write_bytes(b"\n".join(_varied(20)) + b"\n")
    before = log.read_bytes()
    con = open_warehouse(tmp_path / "w.duckdb")
    assert ingest_paths(con, [log]).totals.loaded == 24
    assert log.read_bytes() == before


def test_carriage_returns_never_split_a_line(tmp_path: Path) -> None:
    """DuckDB's reader ends a line at any CR: CRLF, a CR as JSON whitespace, a raw CR in a
    string — each line stays one line, valid ones load."""
    good = json.dumps(json.loads(_varied(1)[0]))
    log = tmp_path / "cr.jsonl"
    log.write_bytes(
        good.encode()
        + b"\r\n"
        + good.replace('"id": ', '"id":\r').replace("req-0000000", "r-2").encode()
        + b"\n"
        + b'{"id": "r-3", "note": "a\rb"}\r\n'
    )
    con = open_warehouse(tmp_path / "w.duckdb")
    t = ingest_paths(con, [log]).totals
    assert (t.lines_read, t.loaded, t.rejected) == (3, 2, 1)
    assert con.execute("SELECT source_line, reason FROM rejected_lines").fetchall() == [
        (3, "not valid JSON (raw carriage return)")
    ]


def test_a_line_longer_than_the_fast_read_allows_still_loads(tmp_path: Path) -> None:
    from warehouse.ingest import SHORT_LINE_BYTES

    big = json.loads(_varied(1)[0])
    big["request"]["messages"][-1]["content"] = "x" * (SHORT_LINE_BYTES + 10)
    log = tmp_path / "long.jsonl"
    log.write_bytes(b"\n".join([json.dumps(big).encode(), *_varied(3)[1:3]]) + b"\n")
    con = open_warehouse(tmp_path / "w.duckdb")
    t = ingest_paths(con, [log]).totals
    assert (t.lines_read, t.loaded) == (3, 3)
    ((n,),) = con.execute("SELECT max(len(last_user_message)) FROM requests").fetchall()
    assert n == SHORT_LINE_BYTES + 10


@pytest.mark.parametrize("newline", [b"\r\n", b"\n"], ids=["crlf", "lf"])
def test_a_chunk_with_a_line_too_long_for_read_json_is_read_as_raw_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, newline: bytes
) -> None:
    """The careful scan (for CRs, or for the long line itself) measures lines: a chunk holding
    one longer than read_json reads (scaled down to 10 kB, in 4 kB blocks) is read as raw lines;
    the other chunks still with read_json."""
    from warehouse import rawfile

    monkeypatch.setattr(rawfile, "LONG_LINE_BYTES", 10_000)
    monkeypatch.setattr(rawfile, "CHUNK", 4096)
    monkeypatch.setattr(rawfile, "CHUNK_FILE_BYTES", 30_000)
    readers = _spy_on_readers(monkeypatch)
    big = json.loads(_varied(1)[0])
    big["id"], big["request"]["messages"][-1]["content"] = "r-long", "y" * 20_000
    lines = [line for line in _varied(60) if line.strip()]
    lines.append(json.dumps(big).encode())
    log = tmp_path / "long.jsonl"
    log.write_bytes(newline.join(lines) + newline)
    scanned = rawfile.scan_file(log)
    try:  # chunk files, the last one marked
        assert [c.long_lines for c in scanned.chunks] == [False, True]
    finally:
        scanned.cleanup()
    con = open_warehouse(tmp_path / "w.duckdb")
    t = ingest_paths(con, [log]).totals
    assert readers == ["stage_chat_log_json_sql", "stage_chat_log_sql"]
    assert (t.lines_read, t.loaded, t.rejected, t.duplicates) == (len(lines), 65, 7, 1)
    ((n,),) = con.execute("SELECT max(len(last_user_message)) FROM requests").fetchall()
    assert n == 20_000
    got = con.execute("SELECT request_id, source_line FROM requests").fetchall()
    assert all(str(json.loads(lines[n - 1])["id"]) == i for i, n in got)
