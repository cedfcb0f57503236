"""The relay annotator against a real HTTP server on 127.0.0.1: good answers, garbage, timeouts,
HTTP errors, and the cache that keeps a prompt from being paid for twice (counted server-side)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import duckdb
import pytest
from pydantic import SecretStr

from classifiers import AnnotatorError, annotate, load_taxonomy, parse_label
from pipeline.classify import (
    Annotator,
    annotate_unlabeled,
    annotator_completion,
    train_from_warehouse,
)
from planner.replay.relay import RelayBackend
from warehouse.connection import open_warehouse
from warehouse.ingest import ingest_paths

TAX = load_taxonomy()


class LabelServer:
    """An OpenAI-compatible /v1/chat/completions that answers by what the request contains."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.auth: list[str | None] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return None

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                kind = next((k for k in ("GARBAGE", "HANG", "ERR500") if k in prompt), "GOOD")
                with server.lock:
                    server.hits[kind] += 1
                    server.auth.append(self.headers.get("Authorization"))
                if kind == "HANG":
                    time.sleep(1.5)
                if kind == "ERR500":
                    self.send_response(500)
                    self.end_headers()
                    return
                answer = (
                    "I believe this is a rewrite task, or possibly code."
                    if kind == "GARBAGE"
                    else "rewrite"
                    if "translate" in prompt.lower()
                    else " `Code`."
                    if "python" in prompt.lower()
                    else "chatbot"
                )
                data = json.dumps(
                    {
                        "id": "x",
                        "object": "chat.completion",
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "finish_reason": "stop",
                                "message": {"role": "assistant", "content": answer},
                            }
                        ],
                    }
                )
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data.encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[LabelServer]:
    srv = LabelServer()
    yield srv
    srv.close()


def warehouse_of(tmp_path: Path, prompts: list[str]) -> duckdb.DuckDBPyConnection:
    log = tmp_path / "log.jsonl"
    lines = [
        json.dumps(
            {
                "id": f"q-{i:03d}",
                "timestamp": "2026-11-19T08:00:00Z",
                "request": {"model": "gpt-4.1", "messages": [{"role": "user", "content": p}]},
            }
        )
        for i, p in enumerate(prompts)
    ]
    log.write_text("\n".join(lines) + "\n")
    con = open_warehouse(":memory:")
    ingest_paths(con, [log])
    return con


def annotator(server: LabelServer, max_requests: int = 50) -> Annotator:
    return Annotator("relay-test:judge", max_requests=max_requests)


def backend(base_url: str, key: str | None = None, timeout_s: float = 0.3) -> RelayBackend:
    """The project's relay client as the annotator uses it (no retries: a failure is counted
    and the request is asked again next run; this plain server does not stream)."""
    return RelayBackend(
        "relay-test",
        base_url,
        "judge",
        SecretStr(key) if key else None,
        timeout_s=timeout_s,
        max_retries=0,
        stream=False,
    )


def relabel(con: duckdb.DuckDBPyConnection, server: LabelServer, max_requests: int = 50):  # type: ignore[no-untyped-def]
    client = backend(server.base_url, "test-key")
    try:
        return annotate_unlabeled(
            con, TAX, annotator(server, max_requests), annotator_completion(client)
        )
    finally:
        client.close()


def test_good_answers_are_stored_and_never_asked_twice(tmp_path: Path, server: LabelServer) -> None:
    con = warehouse_of(
        tmp_path,
        ["Translate to Spanish: hello", "Write python to sort a list", "How was your weekend?"],
    )
    first = relabel(con, server)
    second = relabel(con, server)
    assert (first.requested, first.labeled, first.invalid) == (3, 3, 0)
    assert second.requested == 0  # cache hit: nothing sent
    assert server.hits == {"GOOD": 3}
    rows = dict(
        con.execute("SELECT request_id, task_type FROM labels WHERE source = 'relay'").fetchall()
    )
    assert rows == {"q-000": "rewrite", "q-001": "code", "q-002": "chatbot"}
    assert set(server.auth) == {"Bearer test-key"}
    stored = json.dumps(con.execute("SELECT * FROM labels").fetchall(), default=str)
    assert "test-key" not in stored


def test_garbage_is_counted_dropped_and_cached(tmp_path: Path, server: LabelServer) -> None:
    con = warehouse_of(tmp_path, ["GARBAGE one", "GARBAGE two", "Translate to German: night"])
    first = relabel(con, server)
    second = relabel(con, server)
    assert (first.labeled, first.invalid) == (1, 2)
    assert first.invalid_examples[0].startswith("I believe this is a rewrite task")
    assert second.requested == 0 and server.hits["GARBAGE"] == 2  # paid once, never again
    valid = con.execute("SELECT count(*) FROM labels WHERE task_type IS NOT NULL").fetchone()
    invalid = con.execute("SELECT count(*) FROM labels WHERE task_type IS NULL").fetchone()
    assert valid == (1,) and invalid == (2,)


def test_timeouts_and_http_errors_are_counted_not_cached(
    tmp_path: Path, server: LabelServer
) -> None:
    con = warehouse_of(tmp_path, ["HANG please", "ERR500 please", "Translate to French: cat"])
    first = relabel(con, server)
    second = relabel(con, server)
    assert (first.requested, first.labeled, first.timeouts, first.errors) == (3, 1, 1, 1)
    assert "timeout" in first.error_examples[0] or "timeout" in first.error_examples[1]
    assert (second.requested, second.timeouts, second.errors) == (2, 1, 1)  # asked again
    assert server.hits["HANG"] == 2 and server.hits["ERR500"] == 2 and server.hits["GOOD"] == 1
    assert "1 timed out, 1 failed" in first.message()


def test_a_dead_endpoint_stops_the_run_early(tmp_path: Path, server: LabelServer) -> None:
    con = warehouse_of(tmp_path, [f"ERR500 number {i}" for i in range(9)])
    report = relabel(con, server)
    assert report.requested == 5 and report.errors == 5 and report.skipped == 4
    assert report.stopped_early == "5 failures in a row"
    assert server.hits["ERR500"] == 5


def test_an_exact_repeat_prompt_is_sent_once(tmp_path: Path, server: LabelServer) -> None:
    con = warehouse_of(tmp_path, ["Translate to Italian: bread"] * 4)
    report = relabel(con, server)
    assert report.requested == 1 and server.hits["GOOD"] == 1


def test_transport_failure_is_an_annotator_error() -> None:
    complete = annotator_completion(backend("http://127.0.0.1:9/v1", timeout_s=0.5))
    with pytest.raises(AnnotatorError) as info:
        complete([{"role": "user", "content": "x"}])
    assert info.value.kind in ("transport", "timeout")


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("rewrite", "rewrite"),
        (" Code. ", "code"),
        ("`closed_qa`", "closed_qa"),
        ('"chatbot"', "chatbot"),
        ("rewrite or code", None),
        ("The task type is rewrite", None),
        ("translation", None),
        ("", None),
        (None, None),
    ],
)
def test_answers_are_parsed_strictly(answer: object, expected: str | None) -> None:
    assert parse_label(answer, TAX) == expected


def test_a_completion_function_that_raises_anything_is_counted() -> None:
    def broken(_: list[dict[str, str]]) -> str:
        raise RuntimeError("boom")

    labels, report = annotate([("a", [{"role": "user", "content": "x"}])], broken, TAX)
    assert labels == [] and report.errors == 1 and "boom" in report.error_examples[0]


def test_training_on_relay_labels(tmp_path: Path, server: LabelServer) -> None:
    prompts = [f"Translate to French: sentence number {i}" for i in range(12)]
    prompts += [f"Write python code that prints {i} squared" for i in range(12)]
    prompts += [f"Hey, how is your day going, friend {i}?" for i in range(12)]
    con = warehouse_of(tmp_path, prompts)
    ann = annotator(server)
    complete = annotator_completion(backend(server.base_url))
    out = train_from_warehouse(con, tmp_path / "clf", use="relay", annotator=ann, complete=complete)
    assert out["label_sources"] == {"metadata": 0, "relay": 36, "rules": 0}
    assert out["annotator"]["labeled"] == 36
    card = json.loads((tmp_path / "clf" / "model_card.json").read_text())
    assert card["labels"]["annotator"]["requested"] == 36
    assert set(card["classes"]) == {"rewrite", "code", "chatbot"}
