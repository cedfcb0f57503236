"""The relay client against a real HTTP server on 127.0.0.1 (the project's model server, plus a
scripted wrapper for exact fault sequences): retries, Retry-After, timeouts, auth, malformed SSE,
missing usage, the rate limit as the server saw it, the circuit breaker and the budget cap."""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from planner.errors import AuthError, BudgetExceeded, CircuitOpenError
from planner.models.server import EchoEngine, FaultConfig, ServerThread, create_app
from planner.replay.protocol import ReplayRequest, ReplayResult
from planner.replay.ratelimit import CostBudget
from planner.replay.relay import RelayBackend, cost_usd, estimate_prompt_tokens

CHAT = "/v1/chat/completions"


def requests_for(n: int, max_tokens: int = 16) -> list[ReplayRequest]:
    return [
        ReplayRequest(
            f"r{i:03d}",
            [
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": f"Classify ticket {i}: my invoice is wrong"},
            ],
            max_tokens=max_tokens,
        )
        for i in range(n)
    ]


def run(backend: RelayBackend, requests: list[ReplayRequest]) -> list[ReplayResult]:
    out: list[ReplayResult] = []
    backend.replay(requests, out.append)
    return sorted(out, key=lambda r: r.request_id)


def chat_log(server: ServerThread) -> list[tuple[float, str, int]]:
    return [entry for entry in server.request_log if entry[1] == CHAT]


class Scripted:
    """Answers chat requests from a script of (status, headers) in arrival order, then the app."""

    def __init__(self, inner: Any, script: list[tuple[int, dict[str, str]]]) -> None:
        self.inner = inner
        self.script = list(script)
        self.lock = threading.Lock()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == CHAT:
            with self.lock:
                action = self.script.pop(0) if self.script else None
            if action is not None:
                status, headers = action
                body = json.dumps({"error": {"message": f"scripted {status}"}}).encode()
                raw = [(b"content-type", b"application/json")]
                raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
                await send({"type": "http.response.start", "status": status, "headers": raw})
                await send({"type": "http.response.body", "body": body})
                return
        await self.inner(scope, receive, send)


@pytest.fixture(scope="module")
def echo() -> Iterator[ServerThread]:
    with ServerThread(create_app(EchoEngine("echo"))) as server:
        yield server


def serve(faults: FaultConfig = FaultConfig(), **kwargs: Any) -> ServerThread:
    return ServerThread(create_app(EchoEngine("echo"), faults, **kwargs))


def test_streaming_reports_exact_usage_ttft_and_cost(echo: ServerThread) -> None:
    backend = RelayBackend("relay", echo.base_url, "echo", price_in=2.0, price_out=8.0)
    results = run(backend, requests_for(5))
    assert [r.request_id for r in results] == [f"r{i:03d}" for i in range(5)]
    first = results[0]
    assert first.ok, first.error_message
    assert first.output_text == "Echo: Classify ticket 0: my invoice is wrong"
    # EchoEngine counts words and punctuation marks: 10 answer tokens; the prompt is both messages
    assert first.completion_tokens == 10
    assert first.prompt_tokens == EchoEngine().count_tokens(
        "Answer briefly.\nClassify ticket 0: my invoice is wrong"
    )
    assert first.tokens_estimated is False
    assert first.cost_usd == pytest.approx(cost_usd(first.prompt_tokens, 10, 2.0, 8.0))
    assert first.ttft_ms is not None and first.latency_ms is not None
    assert 0 < first.ttft_ms <= first.latency_ms
    assert first.attempts == 1 and first.tokens_per_s and first.tokens_per_s > 0


def test_non_streaming_option(echo: ServerThread) -> None:
    backend = RelayBackend("relay", echo.base_url, "echo", stream=False)
    (result,) = run(backend, requests_for(1, max_tokens=3))
    assert result.ok
    assert result.output_text == "Echo: Classify"  # Echo, :, Classify
    assert result.completion_tokens == 3 and result.ttft_ms is None
    assert not result.tokens_estimated


def test_server_without_usage_gets_estimated_counts() -> None:
    with serve(FaultConfig(omit_usage=True)) as server:
        for stream in (True, False):
            backend = RelayBackend("relay", server.base_url, "echo", stream=stream)
            (result,) = run(backend, requests_for(1))
            assert result.ok and result.tokens_estimated
            text = result.output_text or ""
            assert result.completion_tokens == -(-len(text) // 4)
            assert result.prompt_tokens == estimate_prompt_tokens(requests_for(1)[0])


def test_429_with_retry_after_is_honoured() -> None:
    script = [(429, {"Retry-After": "1"})]
    with ServerThread(Scripted(create_app(EchoEngine("echo")), script)) as server:
        backend = RelayBackend("relay", server.base_url, "echo", backoff_base_s=0.01)
        (result,) = run(backend, requests_for(1))
        log = chat_log(server)
    assert result.ok and result.attempts == 2
    assert [status for _, _, status in log] == [429, 200]
    assert log[1][0] - log[0][0] >= 1.0  # waited as told, not the 10 ms backoff


def test_429_without_retry_after_backs_off_and_gives_up() -> None:
    script: list[tuple[int, dict[str, str]]] = [(429, {})] * 3
    with ServerThread(Scripted(create_app(EchoEngine("echo")), script)) as server:
        backend = RelayBackend(
            "relay", server.base_url, "echo", max_retries=2, backoff_base_s=0.05, jitter_seed=1
        )
        (result,) = run(backend, requests_for(1))
        log = chat_log(server)
    assert result.error_kind == "rate_limited" and result.attempts == 3
    assert "429" in (result.error_message or "")
    assert len(log) == 3
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(log)]
    assert gaps[0] >= 0.025 and gaps[1] >= 0.05  # exponential: half the cap at least


def test_503_burst_is_ridden_out() -> None:
    script: list[tuple[int, dict[str, str]]] = [(503, {})] * 3
    with ServerThread(Scripted(create_app(EchoEngine("echo")), script)) as server:
        backend = RelayBackend(
            "relay", server.base_url, "echo", max_concurrency=1, backoff_base_s=0.01
        )
        results = run(backend, requests_for(3))
        log = chat_log(server)
    assert all(r.ok for r in results)
    assert results[0].attempts == 4 and [r.attempts for r in results[1:]] == [1, 1]
    assert [s for _, _, s in log] == [503, 503, 503, 200, 200, 200]


def test_hanging_response_hits_the_read_timeout() -> None:
    with serve(FaultConfig(hang_rate=1.0)) as server:
        backend = RelayBackend(
            "relay", server.base_url, "echo", timeout_s=0.3, max_retries=1, backoff_base_s=0.01
        )
        started = time.monotonic()
        (result,) = run(backend, requests_for(1))
        elapsed = time.monotonic() - started
        sent = len(chat_log(server))
    assert result.error_kind == "timeout" and result.attempts == 2
    assert sent == 2
    assert 0.6 <= elapsed < 5


def test_connection_refused_is_a_connection_error() -> None:
    with serve() as server:
        url = server.base_url
    backend = RelayBackend("relay", url, "echo", max_retries=1, backoff_base_s=0.01)
    (result,) = run(backend, requests_for(1))
    assert result.error_kind == "connection" and result.attempts == 2


def test_401_stops_the_candidate_naming_it_and_the_env_var(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with serve(api_key="right-key") as server:
        good = RelayBackend("relay-a", server.base_url, "echo", SecretStr("right-key"))
        assert all(r.ok for r in run(good, requests_for(2)))
        bad = RelayBackend(
            "relay-a",
            server.base_url,
            "echo",
            SecretStr("wrong-key-123"),
            api_key_env="RELAY_KEY",
            max_concurrency=2,
        )
        seen: list[ReplayResult] = []
        with pytest.raises(AuthError) as info:
            bad.replay(requests_for(20), seen.append)
        sent = len(chat_log(server))
        unset = RelayBackend("relay-b", server.base_url, "echo", None, api_key_env="UNSET_VAR")
        with pytest.raises(AuthError, match=r"\$UNSET_VAR is not set, so no key was sent"):
            unset.replay(requests_for(1), seen.append)
    message = str(info.value)
    assert "relay-a" in message and "$RELAY_KEY" in message and "401" in message
    assert "wrong-key-123" not in message and "wrong-key-123" not in repr(bad)
    assert "wrong-key-123" not in caplog.text
    assert seen == []  # nothing recorded, nothing retried
    assert sent <= 2 + 2  # the two good ones + at most one per worker


def test_unknown_model_is_a_client_error_not_retried(echo: ServerThread) -> None:
    before = len(chat_log(echo))
    backend = RelayBackend("relay", echo.base_url, "no-such-model")
    (result,) = run(backend, requests_for(1))
    assert result.error_kind == "client_error" and result.attempts == 1
    assert "404" in (result.error_message or "")
    assert len(chat_log(echo)) == before + 1


def test_malformed_sse_is_a_protocol_error() -> None:
    with serve(FaultConfig(malformed_sse_rate=1.0)) as server:
        backend = RelayBackend("relay", server.base_url, "echo")
        results = run(backend, requests_for(2))
        sent = len(chat_log(server))
    assert [r.error_kind for r in results] == ["protocol", "protocol"]
    assert all(r.attempts == 1 for r in results) and sent == 2
    assert "malformed SSE" in (results[0].error_message or "")


def window_peak(times: list[float], window: float) -> int:
    """The most requests the server saw in any window of ``window`` seconds."""
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_rate_limit_holds_on_the_server_side_even_with_retries() -> None:
    # a 2-second window stands in for the minute; 30% of requests get a 429 and are retried
    faults = FaultConfig(rate_429=0.3, retry_after_s=None, seed=3)
    with serve(faults) as server:
        backend = RelayBackend(
            "relay",
            server.base_url,
            "echo",
            rpm=8,
            rate_window_s=2.0,
            max_concurrency=8,
            max_retries=6,
            backoff_base_s=0.01,
        )
        started = time.monotonic()
        results = run(backend, requests_for(20))
        elapsed = time.monotonic() - started
        log = chat_log(server)
    assert all(r.ok for r in results)
    retries = sum(r.attempts - 1 for r in results)
    assert retries > 0 and len(log) == 20 + retries
    assert window_peak([t for t, _, _ in log], 2.0) <= 8
    # 20+ sends at 8 per 2 s need at least two full windows
    assert elapsed >= 2 * 2.0


def test_circuit_breaker_stops_sending_after_consecutive_failures() -> None:
    with serve(FaultConfig(rate_503=1.0)) as server:
        backend = RelayBackend(
            "relay", server.base_url, "echo", max_concurrency=1, max_retries=0, breaker_threshold=3
        )
        seen: list[ReplayResult] = []
        with pytest.raises(CircuitOpenError, match="3 consecutive"):
            backend.replay(requests_for(10), seen.append)
        sent = len(chat_log(server))
    kinds = [r.error_kind for r in seen]
    assert kinds == ["server_error"] * 3 + ["circuit_open"] * 7
    assert sent == 3
    assert all(r.attempts == 0 for r in seen[3:])


def test_budget_cap_stops_before_it_would_be_exceeded(echo: ServerThread) -> None:
    requests = requests_for(10)
    worst = cost_usd(estimate_prompt_tokens(requests[0]), 16, 1.0, 1.0)
    budget = CostBudget(worst * 3.5)  # room for three worst cases at once
    backend = RelayBackend(
        "relay", echo.base_url, "echo", price_in=1.0, price_out=1.0, budget=budget,
        max_concurrency=1,
    )  # fmt: skip
    before = len(chat_log(echo))
    seen: list[ReplayResult] = []
    with pytest.raises(BudgetExceeded, match="cost cap"):
        backend.replay(requests, seen.append)
    sent = [r for r in seen if r.error_kind != "budget"]
    skipped = [r for r in seen if r.error_kind == "budget"]
    assert len(sent) >= 3 and len(sent) + len(skipped) == 10 and skipped
    assert len(chat_log(echo)) - before == len(sent)
    assert budget.spent_usd == pytest.approx(sum(r.cost_usd for r in sent))
    assert budget.spent_usd <= budget.max_cost_usd  # type: ignore[operator]


def test_bench_scale_concurrency_is_respected() -> None:
    # 40 requests, 4 at a time, 100 ms each: at least 10 rounds, and never 5 at once on the server
    with serve(FaultConfig(extra_latency_ms=100)) as server:
        backend = RelayBackend("relay", server.base_url, "echo", max_concurrency=4)
        started = time.monotonic()
        results = run(backend, requests_for(40))
        elapsed = time.monotonic() - started
        arrivals = sorted(t for t, _, _ in chat_log(server))
    assert all(r.ok for r in results)
    assert elapsed >= 1.0
    assert window_peak(arrivals, 0.09) <= 4
