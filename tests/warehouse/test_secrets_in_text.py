"""Key-like strings in message text: what is masked, what is kept, and the same result from
Python's re, from DuckDB's RE2, and from masking a JSON text or the strings it holds."""

from __future__ import annotations

import json
import random
from pathlib import Path

import duckdb
import pytest

from warehouse import ingest_paths, open_warehouse
from warehouse.credentials import mask_raw_line, mask_sql
from warehouse.normalize import masked_messages_sql
from warehouse.secrets_in_text import (
    TEXT_SECRET_PATTERNS,
    mask_bytes,
    mask_text,
    mask_text_sql,
    may_hold_secret,
)

# (text, what it must become)
MASKED: list[tuple[str, str]] = [
    (
        "my key is sk-proj-EXAMPLEonlyNotAKey000000_abc-def, why 401?",
        "my key is [REDACTED:api_key], why 401?",
    ),
    (
        "client = Anthropic(api_key='sk-ant-api03-EXAMPLEonlyNotAKey0000000000')",
        "client = Anthropic(api_key='[REDACTED:api_key]')",
    ),
    ("OPENAI_API_KEY=sk-abcdefghijklmnopqrstuvwxyz0123", "OPENAI_API_KEY=[REDACTED:api_key]"),
    ("(sk-or-v1-0123456789abcdef0123456789abcdef)", "([REDACTED:api_key])"),
    ("stripe: sk_live_51HxYz0123456789abcdEFGH", "stripe: [REDACTED:api_key]"),
    ("maps AIzaSyA-1234567890abcdefghijklmnopqrstu ok", "maps [REDACTED:api_key] ok"),
    ("HF token hf_AbCdEfGhIjKlMnOpQrStUvWxYz01234567", "HF token [REDACTED:api_key]"),
    (
        'curl -H "Authorization: Bearer EXAMPLEonlyNotAToken00000000000" https://api.x/v1',
        'curl -H "Authorization: Bearer [REDACTED:auth_header]" https://api.x/v1',
    ),
    ("token: bearer abcDEF123456ghiJKL789", "token: bearer [REDACTED:bearer_token]"),
    ("Bearer sk-abcdefghijklmnopqrstuvwxyz0123", "Bearer [REDACTED:api_key]"),
    ("-H 'api-key: 0123456789abcdef0123456789abcdef'", "-H 'api-key: [REDACTED:auth_header]'"),
    ("Authorization: Basic dXNlcjpzM2NyM3RwYXNz", "Authorization: Basic [REDACTED:auth_header]"),
    (
        "id AKIAIOSFODNN7EXAMPLE and ASIAY34FZKBOKMUTVV7A.",
        "id [REDACTED:aws_access_key_id] and [REDACTED:aws_access_key_id].",
    ),
    (
        "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\nregion=eu-west-1",
        "AWS_SECRET_ACCESS_KEY=[REDACTED:aws_secret_access_key]\nregion=eu-west-1",
    ),
    (
        '{"SecretAccessKey": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}',
        '{"SecretAccessKey": "[REDACTED:aws_secret_access_key]"}',
    ),
    (
        "here:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7bq9\nabc+/=\n"
        "-----END RSA PRIVATE KEY-----\nwhy does ssh refuse it?",
        "here:\n[REDACTED:private_key]\nwhy does ssh refuse it?",
    ),
    (
        "-----BEGIN PRIVATE KEY-----\r\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\r\n-----END PRIVATE KEY-----",
        "[REDACTED:private_key]",
    ),
    (
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n"
        "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n(it is cut off here) thanks",
        "[REDACTED:private_key]\n(it is cut off here) thanks",
    ),
    (
        "-----BEGIN PGP PRIVATE KEY BLOCK-----\nVersion: GnuPG v2\n\nlQOYBF0fake==\n=ab12\n"
        "-----END PGP PRIVATE KEY BLOCK-----",
        "[REDACTED:private_key]",
    ),
    (
        "DATABASE_URL=postgres://app:S3cr3t-pw@db.internal:5432/orders",
        "DATABASE_URL=postgres://app:[REDACTED:password]@db.internal:5432/orders",
    ),
    ("redis://:hunter2hunter2@cache:6379/0", "redis://:[REDACTED:password]@cache:6379/0"),
    (
        "post to https://hooks.slack.com/services/T0000AAAA/B0000BBBB/abcdefghijklmnopqrstuvwx",
        "post to https://hooks.slack.com/services/[REDACTED:webhook_url]",
    ),
    ("gh auth: ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789", "gh auth: [REDACTED:access_token]"),
    ("slack xoxb-123456789012-abcdefABCDEF", "slack [REDACTED:access_token]"),
    (
        "session eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dBjftJeZ4CVPmB92K27uhbUJU1p1r",
        "session [REDACTED:jwt]",
    ),
    # a key after a line break, a tab, a quote, a non-ASCII letter: still a key
    (
        "a\nsk-abcdefghijklmnopqrstuvwxyz\tAKIAIOSFODNN7EXAMPLE",
        "a\n[REDACTED:api_key]\t[REDACTED:aws_access_key_id]",
    ),
    ('é"sk-abcdefghijklmnopqrstuvwxyz"', 'é"[REDACTED:api_key]"'),
]

# Ordinary text that looks a little like a key: kept as it is.
KEPT: list[str] = [
    "The task-force met; a risk-adjusted-return-on-capital model; desk-top; whisk-eggs-gently",
    "ask-me-anything-about-anything-at-all and tusk-shaped-ornaments-for-sale",
    "commit 9fceb02d0ae598e95dc970b74767f19372d61af8 fixed it; uuid 123e4567-e89b-12d3-a456-426614174000",
    "sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "Explain Bearer authentication. The bearer of this letter. Bearer tokens expire.",
    "locale sk-SK, sk-CZ; ASIAN markets; AKIA is a prefix; the ASIA-PACIFIC region",
    "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----",
    "-----BEGIN CERTIFICATE-----\nMIIBkTCB+wIJAK\n-----END CERTIFICATE-----",
    "see https://example.com/a/b?x=1 and git@github.com:org/repo.git and ssh://git@host:22/x",
    "mail bob@example.org or call +44 20 7946 0958 (personal data: not masked at ingest)",
    "password: hunter2 (a password in prose is not a key format)",
    "Authorization: pending; api-key: short; header eyJhbGci only",
    "export const sk = 1; my_sk-thing; hf_hub; gh_pages; xox; r8_x",
]


def _sql(con: duckdb.DuckDBPyConnection, expr_of_x: str, text: str) -> str:
    (row,) = con.execute(f"SELECT {expr_of_x} FROM (SELECT ?::VARCHAR AS x)", [text]).fetchall()
    return str(row[0])


@pytest.fixture(scope="module")
def con() -> duckdb.DuckDBPyConnection:
    return duckdb.connect()


@pytest.mark.parametrize("pattern", TEXT_SECRET_PATTERNS, ids=lambda p: p.kind)
def test_each_pattern_masks_its_example(con: duckdb.DuckDBPyConnection, pattern: object) -> None:
    example = pattern.example  # type: ignore[attr-defined]
    kind = pattern.kind  # type: ignore[attr-defined]
    text = f"please check: {example} thanks"
    masked = mask_text(text)
    assert f"[REDACTED:{kind}]" in masked
    assert masked.startswith("please check: ") and masked.endswith(" thanks")
    assert _sql(con, mask_text_sql("x"), text) == masked


@pytest.mark.parametrize(("text", "expected"), MASKED)
def test_key_like_strings_are_masked_alike_in_python_and_sql(
    con: duckdb.DuckDBPyConnection, text: str, expected: str
) -> None:
    assert mask_text(text) == expected
    assert _sql(con, mask_text_sql("x"), text) == expected
    assert mask_bytes(text.encode()) == expected.encode()


@pytest.mark.parametrize("text", KEPT)
def test_ordinary_text_is_kept(con: duckdb.DuckDBPyConnection, text: str) -> None:
    assert mask_text(text) == text
    assert _sql(con, mask_text_sql("x"), text) == text


_PIECES = [
    *(p.example for p in TEXT_SECRET_PATTERNS),
    "sk-ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "AKIAIOSFODNN7EXAMPLE",
    "-----BEGIN EC PRIVATE KEY-----",
    "-----END EC PRIVATE KEY-----",
    "Bearer ",
    "https://u:",
    "@h",
    "task-force",
    "hello world",
    "é",
    "日本",
    '"',
    "'",
    "\\",
    "\\n",
    "\n",
    "\r\n",
    "\t",
    "\x01",
    "\x08",
    "\x0c",
    " ",
    "=",
    ":",
    "/",
    "-",
    "_",
    "x",
    "0123456789abcdef0123",
]


def _fuzz_texts(n: int, seed: int = 5) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(_PIECES) for _ in range(rng.randint(1, 12))) for _ in range(n)]


def test_python_and_sql_agree_on_random_texts(con: duckdb.DuckDBPyConnection) -> None:
    """Keys glued to quotes, backslashes, escapes, line breaks and non-ASCII text: Python's re
    (str and bytes) and DuckDB's RE2 change exactly the same characters."""
    texts = _fuzz_texts(600)
    got = con.execute(
        f"SELECT {mask_text_sql('x')} FROM unnest(?::VARCHAR[]) WITH ORDINALITY AS t(x, i) "
        "ORDER BY i",
        [texts],
    ).fetchall()
    changed = 0
    for text, (sql,) in zip(texts, got, strict=True):
        python = mask_text(text)
        assert sql == python, text
        assert mask_bytes(text.encode()) == python.encode(), text
        changed += python != text
        if python != text:
            assert may_hold_secret(text)
    assert changed > 300  # the fuzz did put keys in most texts


def test_a_json_text_is_masked_as_the_strings_it_holds(con: duckdb.DuckDBPyConnection) -> None:
    """The stored messages (JSON text) are masked as a whole; the system prompt and last user
    message are taken from them. Each string read back from the masked JSON is the masked
    string, and the JSON stays valid."""
    texts = _fuzz_texts(400, seed=9)
    docs = [
        json.dumps([{"role": "user", "content": t}, {"role": "assistant", "content": t[::-1]}])
        for t in texts
    ]
    # DuckDB's own JSON text, as the ingest stores it (json_extract normalizes escapes)
    got = con.execute(
        f"SELECT {masked_messages_sql('m')}::VARCHAR FROM "
        "(SELECT json_extract(d, '$') AS m, i FROM unnest(?::VARCHAR[]) WITH ORDINALITY "
        "AS t(d, i)) ORDER BY i",
        [docs],
    ).fetchall()
    for text, (masked,) in zip(texts, got, strict=True):
        messages = json.loads(masked)
        assert messages[0]["content"] == mask_text(text), text
        assert messages[1]["content"] == mask_text(text[::-1]), text


def test_raw_lines_are_masked_alike_in_python_and_sql(con: duckdb.DuckDBPyConnection) -> None:
    """A rejected line keeps its bytes but for credentials: Python (lines DuckDB cannot read)
    and SQL (the others) mask the same."""
    lines = [
        json.dumps({"id": "r", "api_key": "abc", "request": {"messages": [{"content": t}]}})
        for t in _fuzz_texts(200, seed=11)
    ] + [
        '{"id": "r-4", "token": "Bearer sk-live-EXAMPLEnotAKey0000", "note": "AKIAIOSFODNN7EXAMPLE"',
        '{"headers": {"Authorization": "Basic dXNlcjpwYXNz"}, "x": "postgres://a:b@c"}',
    ]
    for line in lines:
        assert mask_raw_line(line.encode()).decode() == _sql(con, mask_sql("x"), line), line


# Each key once, in one place of the logs; each with a canary (plain text stored as it is next
# to it), which shows that text in the warehouse file is readable in its bytes.
KEYS = {
    "system": "sk-proj-SyS7eMpR0mPtK3y0aaaaaaaaaaaa",
    "history": "sk-ant-api03-HiSt0ryK3y0bbbbbbbbbbbbbbbb",
    "assistant": "AKIAASSISTANT0000000",
    "part": "ghp_C0ntentPartK3yccccccccccccccccccccccc",
    "last": "Bearer LastUs3rT0k3nddddddddddddd",
    "pem": "MIIEowIBAAKCAQEAPr1vat3K3yeeeeeeeeeeeeeeeeeeeeeeee",
    "response": "sk-Resp0nseK3yffffffffffffffffffff",
    "error": "sk-Err0rMessageK3ygggggggggggggggggg",
    "rejected": "sk-Rej3ctedLineK3yhhhhhhhhhhhhhhhhhh",
    "not_utf8": "sk-N0tUtf8LineK3yiiiiiiiiiiiiiiiiiii",
    "reason": "sk-Reas0nTextK3yjjjjjjjjjjjjjjjjjjjjj",
}


def _canary(where: str) -> str:
    return f"canary-{where}-plain-text-kept"


def _records() -> list[dict[str, object]]:
    def said(where: str, key: str) -> str:
        return f"{_canary(where)} here is {key} ok"

    pem = (
        f"-----BEGIN RSA PRIVATE KEY-----\n{KEYS['pem']}\n-----END RSA PRIVATE KEY-----\n"
        f"{_canary('pem')}"
    )
    ok = {
        "id": "k-1",
        "timestamp": "2026-11-19T08:15:02Z",
        "request": {
            "model": "gpt-4.1",
            "messages": [
                {"role": "system", "content": said("system", KEYS["system"])},
                {"role": "user", "content": said("history", KEYS["history"])},
                {"role": "assistant", "content": said("assistant", KEYS["assistant"])},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": said("part", KEYS["part"])},
                        {"type": "text", "text": pem},
                    ],
                },
                {"role": "user", "content": said("last", KEYS["last"])},
            ],
        },
        "response": {
            "model": "gpt-4.1",
            "choices": [
                {
                    "message": {"role": "assistant", "content": said("response", KEYS["response"])},
                    "finish_reason": "stop",
                }
            ],
        },
        "status_code": 200,
    }
    failed = {
        "id": "k-2",
        "timestamp": "2026-11-19T08:15:03Z",
        "request": {"messages": [{"role": "user", "content": "hi"}]},
        "status_code": 401,
        "error": {"message": said("error", KEYS["error"])},
    }
    rejected = {  # no timestamp: rejected, its raw text kept
        "id": "k-3",
        "request": {"messages": [{"role": "user", "content": said("rejected", KEYS["rejected"])}]},
    }
    reason = {  # the timestamp's text goes into the reason
        "id": "k-4",
        "timestamp": KEYS["reason"],
        "request": {"messages": [{"role": "user", "content": _canary("reason")}]},
    }
    return [ok, failed, rejected, reason]


def _not_utf8_line() -> bytes:
    return (
        b'{"id": "k-5", "note": "\xff", "request": {"messages": [{"role": "user", "content": "'
        + f"{_canary('not_utf8')} {KEYS['not_utf8']}".encode()
        + b'"}]}}'
    )


def _assert_no_key_in(path: Path, expect_canaries: list[str]) -> None:
    data = path.read_bytes()
    for where, key in KEYS.items():
        core = key.split()[-1][6:22]  # a distinctive piece, so no part of a key survives
        assert key.encode() not in data and core.encode() not in data, where
    for where in expect_canaries:
        assert _canary(where).encode() in data, where


@pytest.mark.parametrize("path", ["read_json", "general", "raw lines", "parquet"])
def test_a_key_pasted_into_a_prompt_is_not_in_the_warehouse_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """Keys in the system prompt, the history, content parts, a private-key block, the last
    user message, the answer, an error, a rejected line (its text and its reason) and a line
    that is not UTF-8: none is in the DuckDB file's bytes after it is closed, on every path a
    line can take in; the plain text next to each key is."""
    import functools

    import warehouse.chatlog
    import warehouse.ingest

    lines = [json.dumps(r).encode() for r in _records()]
    if path == "general":  # every line the general way
        for name in ("stage_chat_log_json_sql", "stage_chat_log_sql"):
            monkeypatch.setattr(
                warehouse.ingest,
                name,
                functools.partial(getattr(warehouse.chatlog, name), fast=False),
            )
    if path == "raw lines":  # a line of spaces: read_json skips it, the raw-line reader reads
        lines.append(b"   ")
    if path != "parquet":
        lines.append(_not_utf8_line())
        log = tmp_path / "keys.jsonl"
        log.write_bytes(b"\n".join(lines) + b"\n")
    else:
        src = tmp_path / "keys.jsonl"
        src.write_bytes(b"\n".join(lines) + b"\n")
        log = tmp_path / "keys.parquet"
        with duckdb.connect() as tmpcon:
            tmpcon.execute(
                f"COPY (SELECT * FROM read_json('{src}', format = 'newline_delimited', "
                f"union_by_name = true)) TO '{log}' (FORMAT parquet)"
            )
    db = tmp_path / "w.duckdb"
    con = open_warehouse(db)
    totals = ingest_paths(con, [log]).totals
    assert (totals.loaded, totals.rejected) == (2, 2 if path == "parquet" else 3)
    ((system, last, messages, response),) = con.execute(
        "SELECT system_prompt, last_user_message, messages, response_text FROM requests "
        "WHERE request_id = 'k-1'"
    ).fetchall()
    assert system == f"{_canary('system')} here is [REDACTED:api_key] ok"
    assert last == f"{_canary('last')} here is Bearer [REDACTED:bearer_token] ok"
    assert response == f"{_canary('response')} here is [REDACTED:api_key] ok"
    kinds = [
        m["content"] if isinstance(m["content"], str) else m["content"][1]["text"]
        for m in json.loads(messages)
    ]
    assert "[REDACTED:aws_access_key_id]" in kinds[2]
    assert kinds[3].startswith("[REDACTED:private_key]\n")
    reasons = [r for (r,) in con.execute("SELECT reason FROM rejected_lines ORDER BY 1").fetchall()]
    assert 'field timestamp: cannot parse "[REDACTED:api_key]"' in reasons
    con.close()
    canaries = [w for w in KEYS if w not in ("reason", "not_utf8")] + ["reason"]
    _assert_no_key_in(db, canaries + ([] if path == "parquet" else ["not_utf8"]))


def test_a_key_in_an_openai_batch_is_not_in_the_warehouse_file(tmp_path: Path) -> None:
    """The batch reader: a key in a request body's messages, in an answer, and in an output line
    that matches no input (rejected, raw text kept)."""
    key_in, key_out, key_rej = KEYS["system"], KEYS["response"], KEYS["rejected"]
    inputs = [
        {
            "custom_id": "request-1",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "gpt-4.1",
                "messages": [{"role": "user", "content": f"{_canary('system')} {key_in}"}],
            },
        }
    ]

    def output(custom_id: str, text: str) -> dict[str, object]:
        body = {
            "model": "gpt-4.1",
            "choices": [{"message": {"role": "assistant", "content": text}}],
        }
        return {"custom_id": custom_id, "response": {"status_code": 200, "body": body}}

    outputs = [
        output("request-1", f"{_canary('response')} {key_out}"),
        output("request-9", f"{_canary('rejected')} {key_rej}"),
    ]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in inputs))
    out.write_text("".join(json.dumps(x) + "\n" for x in outputs))
    db = tmp_path / "w.duckdb"
    con = open_warehouse(db)
    totals = ingest_paths(con, [src], batch_output=out).totals
    assert (totals.loaded, totals.joined, totals.rejected) == (1, 1, 1)
    assert con.execute("SELECT last_user_message, response_text FROM requests").fetchall() == [
        (f"{_canary('system')} [REDACTED:api_key]", f"{_canary('response')} [REDACTED:api_key]")
    ]
    con.close()
    data = db.read_bytes()
    for key in (key_in, key_out, key_rej):
        assert key.encode() not in data and key[6:22].encode() not in data
    for where in ("system", "response", "rejected"):
        assert _canary(where).encode() in data
