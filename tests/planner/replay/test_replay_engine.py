"""The replay engine with the relay backend, a real server on 127.0.0.1 and a real DuckDB
warehouse: caching, resume after an interrupted run, what is retried next run, budget, breaker."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import duckdb
import pytest
from pydantic import SecretStr

from planner.models.server import EchoEngine, FaultConfig, ServerThread, create_app
from planner.replay.engine import (
    RETRY_NEXT_RUN_KINDS,
    CandidateRun,
    KeyedResult,
    cache_key,
    percentile,
    replay_candidate,
    request_hash,
)
from planner.replay.protocol import ReplayRequest, ReplayResult
from planner.replay.ratelimit import CostBudget
from planner.replay.relay import RelayBackend, cost_usd, estimate_prompt_tokens
from warehouse.connection import open_warehouse
from warehouse.replays import final_replay_ids, store_replays

CHAT = "/v1/chat/completions"


def requests_for(n: int) -> list[ReplayRequest]:
    return [
        ReplayRequest(f"q{i:03d}", [{"role": "user", "content": f"Summarize note {i}."}], 8)
        for i in range(n)
    ]


class Scripted:
    """Chat requests answered from a script of statuses in arrival order, then by ``inner``."""

    def __init__(self, inner: Any, statuses: list[int]) -> None:
        self.inner = inner
        self.statuses = list(statuses)
        self.lock = threading.Lock()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == CHAT:
            with self.lock:
                status = self.statuses.pop(0) if self.statuses else None
            if status is not None:
                body = json.dumps({"error": {"message": f"scripted {status}"}}).encode()
                headers = [(b"content-type", b"application/json")]
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.inner(scope, receive, send)


def sent(server: ServerThread) -> int:
    return sum(1 for _, path, _ in server.request_log if path == CHAT)


@pytest.fixture
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = open_warehouse(":memory:")
    yield connection
    connection.close()


def engine_run(
    con: duckdb.DuckDBPyConnection,
    backend: RelayBackend,
    requests: list[ReplayRequest],
    seen: list[ReplayResult] | None = None,
    **kwargs: Any,
) -> CandidateRun:
    """The engine with the warehouse's storage, as the flow wires it (a cursor for the writer)."""
    writer = con.cursor()

    def store(batch: Sequence[KeyedResult]) -> None:
        if seen is not None:
            seen.extend(k.result for k in batch)
        store_replays(
            writer,
            [
                {
                    "replay_id": k.key,
                    "request_id": k.result.request_id,
                    "candidate": k.result.candidate,
                    "candidate_fingerprint": k.fingerprint,
                    "output_text": k.result.output_text,
                    "cost_usd": k.result.cost_usd,
                    "error_kind": k.result.error_kind,
                    "error_message": k.result.error_message,
                    "attempts": k.result.attempts,
                    "latency_ms": k.result.latency_ms,
                }
                for k in batch
            ],
        )

    kwargs.setdefault("report", lambda line: None)
    try:
        return replay_candidate(
            backend,
            requests,
            store=store,
            already_done=lambda keys: final_replay_ids(con, keys, RETRY_NEXT_RUN_KINDS),
            **kwargs,
        )
    finally:
        writer.close()


def stored(con: duckdb.DuckDBPyConnection) -> dict[str, str | None]:
    rows = con.execute("SELECT request_id, error_kind FROM replays").fetchall()
    return dict(rows)


def test_cache_key_depends_on_who_what_and_how() -> None:
    base = ReplayRequest("a", [{"role": "user", "content": "hi"}], 16, 0.0)
    same_prompt_other_id = ReplayRequest("b", [{"role": "user", "content": "hi"}], 16, 0.0)
    key = cache_key("fp-1", base)
    assert key == cache_key("fp-1", same_prompt_other_id)
    assert request_hash(base) == request_hash(same_prompt_other_id)
    assert key != cache_key("fp-2", base)
    assert key != cache_key("fp-1", ReplayRequest("a", [{"role": "user", "content": "hi!"}], 16))
    assert key != cache_key("fp-1", ReplayRequest("a", base.messages, 32, 0.0))
    assert key != cache_key("fp-1", ReplayRequest("a", base.messages, 16, 0.7))
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5 and percentile([], 95) is None


def test_second_run_replays_nothing_and_refresh_replays_all(con: duckdb.DuckDBPyConnection) -> None:
    lines: list[str] = []
    with ServerThread(create_app(EchoEngine("echo"))) as server:
        backend = RelayBackend("relay", server.base_url, "echo", price_in=1.0, price_out=2.0)
        requests = requests_for(12)
        first = engine_run(con, backend, requests, report=lines.append, progress_every_s=0.0)
        assert (first.sent, first.cached, first.ok, sent(server)) == (12, 0, 12, 12)
        assert first.cost_usd > 0 and first.latency_ms_p50 and first.ttft_ms_p95
        second = engine_run(con, backend, requests)
        assert (second.sent, second.cached, sent(server)) == (0, 12, 12)
        third = engine_run(con, backend, requests, refresh=True)
        assert (third.sent, sent(server)) == (12, 24)
    (rows,) = con.execute("SELECT count(*) FROM replays").fetchone()  # type: ignore[misc]
    assert rows == 12  # refreshed rows replace the old ones
    assert any("req/s" in line and "ETA" in line for line in lines)
    assert "12 to send, 0 cached" in lines[0]


def test_identical_prompts_are_replayed_once(con: duckdb.DuckDBPyConnection) -> None:
    twice = [*requests_for(3), ReplayRequest("dup", requests_for(1)[0].messages, 8)]
    with ServerThread(create_app(EchoEngine("echo"))) as server:
        run = engine_run(con, RelayBackend("relay", server.base_url, "echo"), twice)
        assert run.planned == 3 and sent(server) == 3


def test_interrupted_run_resumes_without_paying_twice(con: duckdb.DuckDBPyConnection) -> None:
    faults = FaultConfig(extra_latency_ms=30)
    with ServerThread(create_app(EchoEngine("echo"), faults)) as server:
        backend = RelayBackend("relay", server.base_url, "echo", max_concurrency=4)
        requests = requests_for(30)
        seen: list[ReplayResult] = []
        first = engine_run(con, backend, requests, seen, should_stop=lambda: len(seen) >= 7)
        assert first.stopped == "interrupted"
        done_first = len(stored(con))
        assert 7 <= done_first < 30
        assert sent(server) == done_first  # every request sent was stored (in-flight finished)
        second = engine_run(con, backend, requests)
        assert second.cached == done_first and second.sent == 30 - done_first
        assert sent(server) == 30  # nothing paid for twice
    assert set(stored(con)) == {r.request_id for r in requests}
    assert all(kind is None for kind in stored(con).values())


def test_transient_failures_retried_next_run_deterministic_ones_cached(
    con: duckdb.DuckDBPyConnection,
) -> None:
    requests = requests_for(6)
    bad = ReplayRequest("bad", [{"role": "user", "content": "x"}], 8, temperature=5.0)  # 400
    app = Scripted(create_app(EchoEngine("echo")), [503, 503, 503])
    with ServerThread(app) as server:
        backend = RelayBackend(
            "relay", server.base_url, "echo", max_concurrency=1, max_retries=0,
            breaker_threshold=10,
        )  # fmt: skip
        first = engine_run(con, backend, [*requests, bad])
        assert first.errors == {"client_error": 1, "server_error": 3}
        assert sent(server) == 7
        second = engine_run(con, backend, [*requests, bad])
        assert second.sent == 3 and second.cached == 4 and second.ok == 3
        assert sent(server) == 10
    kinds = stored(con)
    assert len(kinds) == 7 and kinds["bad"] == "client_error"
    assert [k for r, k in kinds.items() if r != "bad"] == [None] * 6


def test_budget_skips_are_not_stored_and_sent_next_run(con: duckdb.DuckDBPyConnection) -> None:
    requests = requests_for(8)
    worst = cost_usd(estimate_prompt_tokens(requests[0]), 8, 1.0, 1.0)
    with ServerThread(create_app(EchoEngine("echo"))) as server:

        def backend(budget: CostBudget) -> RelayBackend:
            return RelayBackend(
                "relay", server.base_url, "echo", price_in=1.0, price_out=1.0,
                budget=budget, max_concurrency=1,
            )  # fmt: skip

        first = engine_run(con, backend(CostBudget(worst * 3)), requests)
        assert first.stopped == "budget" and "cost cap" in (first.message or "")
        assert first.skipped_budget > 0 and first.sent + first.skipped_budget == 8
        assert len(stored(con)) == first.sent == sent(server)
        assert first.cost_usd <= worst * 3
        second = engine_run(con, backend(CostBudget(None)), requests)
        assert second.sent == first.skipped_budget and sent(server) == 8


def test_circuit_open_is_stored_and_retried_next_run(con: duckdb.DuckDBPyConnection) -> None:
    requests = requests_for(6)
    with ServerThread(Scripted(create_app(EchoEngine("echo")), [500, 500])) as server:
        backend = RelayBackend(
            "relay", server.base_url, "echo", max_concurrency=1, max_retries=0,
            breaker_threshold=2,
        )  # fmt: skip
        first = engine_run(con, backend, requests)
        assert first.stopped == "circuit_open"
        assert first.errors == {"circuit_open": 4, "server_error": 2} and sent(server) == 2
        second = engine_run(con, backend, requests)
        assert second.stopped is None and second.ok == 6 and sent(server) == 8


def test_bad_key_stops_the_candidate_and_stores_nothing(con: duckdb.DuckDBPyConnection) -> None:
    with ServerThread(create_app(EchoEngine("echo"), api_key="k-right")) as server:
        backend = RelayBackend(
            "relay-x", server.base_url, "echo", SecretStr("k-wrong"), api_key_env="X_KEY"
        )
        run = engine_run(con, backend, requests_for(5))
    assert run.stopped == "auth" and "relay-x" in (run.message or "")
    assert "$X_KEY" in (run.message or "") and "k-wrong" not in (run.message or "")
    assert stored(con) == {}
