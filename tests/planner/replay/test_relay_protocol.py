"""Byte-level edge cases of the relay protocol (httpx.MockTransport), and the limiter's arithmetic
on a fake clock. Everything that needs a real server is in test_relay.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from pydantic import SecretStr

from planner.errors import BudgetExceeded
from planner.replay.protocol import ReplayRequest, ReplayResult
from planner.replay.ratelimit import Admission, CircuitBreaker, CostBudget, SlidingWindowLimiter
from planner.replay.relay import RelayBackend
from planner.replay.wire import parse_retry_after

REQUEST = ReplayRequest(
    "r1",
    [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "!"}],
        }
    ],
    max_tokens=5,
    params={"response_format": {"type": "text"}, "user": "u-9", "stream": False, "n": 3},
)


def chunk(text: str | None = None, finish: str | None = None) -> str:
    delta = {} if text is None else {"content": text}
    return json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


def sse(*events: str, newline: str = "\n") -> bytes:
    return "".join(f"data: {e}{newline}{newline}" for e in events).encode()


def replay_with(
    handler: Callable[[httpx.Request], httpx.Response], **kwargs: object
) -> ReplayResult:
    backend = RelayBackend(
        "mock", "https://relay.test/v1", "m", transport=httpx.MockTransport(handler),
        backoff_base_s=0.001, **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip
    out: list[ReplayResult] = []
    backend.replay([REQUEST], out.append)
    (result,) = out
    return result


def stream_response(body: bytes) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)


def test_request_body_and_headers() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return stream_response(sse(chunk("Hi"), chunk(finish="stop"), "[DONE]"))

    result = replay_with(handler, api_key=SecretStr("sk-x"))
    assert result.ok and result.output_text == "Hi" and result.tokens_estimated
    (request,) = seen
    assert request.url == "https://relay.test/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-x"
    body = json.loads(request.content)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["model"] == "m" and body["max_tokens"] == 5 and body["temperature"] == 0.0
    assert body["response_format"] == {"type": "text"}
    assert "user" not in body and "n" not in body  # not replayed: the client's own business
    no_key = replay_with(handler)
    assert no_key.ok and "authorization" not in seen[-1].headers


def test_sse_with_crlf_comments_event_lines_and_split_data() -> None:
    body = (
        b": keep-alive\r\n\r\n"
        b'event: message\r\ndata: {"choices": [{"index": 0,\r\n'
        b'data:  "delta": {"content": "A"}}]}\r\n\r\n'
        + sse(chunk("B"), chunk(finish="stop"), newline="\r\n")
        + b'data: {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}}\r\n\r\n'
        + b"data: [DONE]\r\n\r\n"
    )
    result = replay_with(lambda r: stream_response(body))
    assert result.ok, result.error_message
    assert result.output_text == "AB"
    assert (result.prompt_tokens, result.completion_tokens) == (7, 2)
    assert not result.tokens_estimated


def test_stream_without_done_but_finished_is_accepted_else_protocol() -> None:
    finished = replay_with(lambda r: stream_response(sse(chunk("ok"), chunk(finish="length"))))
    assert finished.ok and finished.output_text == "ok"
    cut = replay_with(lambda r: stream_response(sse(chunk("o"))))
    assert cut.error_kind == "protocol" and cut.attempts == 1
    garbage = replay_with(lambda r: stream_response(b"hello there\n\n"))
    assert garbage.error_kind == "protocol" and "malformed SSE line" in str(garbage.error_message)


def test_error_event_in_stream_is_a_retried_server_error() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            return stream_response(sse(chunk("a"), json.dumps({"error": {"message": "boom"}})))
        return stream_response(sse(chunk("fine"), chunk(finish="stop"), "[DONE]"))

    result = replay_with(handler)
    assert result.ok and result.attempts == 2 and result.output_text == "fine"


def test_json_answer_to_a_stream_request_and_bad_json() -> None:
    answer = {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "whole"}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1},
    }
    plain = replay_with(lambda r: httpx.Response(200, json=answer))
    assert plain.ok and plain.output_text == "whole" and plain.completion_tokens == 1
    broken = replay_with(lambda r: httpx.Response(200, content=b"{not json"), stream=False)
    assert broken.error_kind == "protocol" and broken.attempts == 1
    no_choices = replay_with(lambda r: httpx.Response(200, json={"id": "x"}), stream=False)
    assert no_choices.error_kind == "protocol"
    empty = replay_with(
        lambda r: httpx.Response(200, json={"choices": [{"message": {"content": ""}}]}),
        stream=False,
    )
    assert empty.error_kind == "empty_output"


def test_context_overflow_and_client_errors_are_not_retried() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        error = {"message": "This model's maximum context length is 8192 tokens", "code": "x"}
        return httpx.Response(400, json={"error": error})

    result = replay_with(handler)
    assert result.error_kind == "context_overflow" and len(calls) == 1
    unprocessable = replay_with(lambda r: httpx.Response(422, json={"error": "bad field"}))
    assert unprocessable.error_kind == "client_error" and "bad field" in str(
        unprocessable.error_message
    )


def test_retry_after_forms() -> None:
    assert parse_retry_after(httpx.Headers({"retry-after": "2.5"})) == 2.5
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "1500", "retry-after": "9"})) == 1.5
    when = datetime(2030, 1, 1, 12, 0, 30, tzinfo=UTC)
    now = (when - timedelta(seconds=30)).timestamp()
    header = httpx.Headers({"retry-after": format_datetime(when, usegmt=True)})
    assert parse_retry_after(header, now=now) == pytest.approx(30)
    assert parse_retry_after(httpx.Headers({"retry-after": "soon"})) is None
    assert parse_retry_after(httpx.Headers({})) is None


def test_too_long_retry_after_gives_up_at_once() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(429, headers={"retry-after": "3600"}, json={"error": "slow down"})

    result = replay_with(handler)
    assert result.error_kind == "rate_limited" and len(calls) == 1


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_limiter_rpm_and_tpm_arithmetic_on_a_fake_clock() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(rpm=2, tpm=100, window_s=60, margin_s=0.5, clock=clock)

    async def admit(tokens: int) -> Admission:
        return await limiter.acquire(tokens)

    first = asyncio.run(admit(60))
    assert limiter.wait_time(30) == 0  # 90 of 100 tokens, 2 of 2 requests
    assert limiter.wait_time(50) == pytest.approx(60.5)  # the 60 must leave the window first
    clock.now = 10.0
    asyncio.run(admit(30))
    assert limiter.wait_time(1) == pytest.approx(50.5)  # rpm: the first send leaves at 60.5
    limiter.settle(first, 10)  # the server counted fewer tokens than estimated
    clock.now = 60.6
    assert limiter.wait_time(70) == 0  # the first send left: 30 + 70 fits exactly
    assert limiter.wait_time(71) == pytest.approx(9.9)  # needs the 30 of t=10 gone (at 70.5)
    assert limiter.wait_time(10_000) == pytest.approx(9.9)  # bigger than tpm: waits for empty


def test_breaker_and_budget() -> None:
    breaker = CircuitBreaker(2)
    breaker.record(False)
    breaker.record(True)
    breaker.record(False)
    assert not breaker.is_open
    breaker.record(False)
    assert breaker.is_open
    budget = CostBudget(1.0)
    assert budget.reserve(0.6) and not budget.reserve(0.5)
    budget.settle(0.6, 0.2)
    assert budget.spent_usd == pytest.approx(0.2) and budget.reserve(0.8)
    assert not budget.reserve(0.01)
    with pytest.raises(ValueError):
        SlidingWindowLimiter(rpm=0)


def test_budget_learns_when_prompts_have_more_tokens_than_estimated() -> None:
    # REQUEST is estimated at 16 prompt tokens (text + params); the server counts 60 (think of
    # text far from English): the backend learns the 3.75x under-estimate from that answer
    def handler(request: httpx.Request) -> httpx.Response:
        usage = {"prompt_tokens": 60, "completion_tokens": 1}
        return stream_response(
            sse(chunk("x", "stop"), json.dumps({"choices": [], "usage": usage}), "[DONE]")
        )

    budget = CostBudget(80.0)  # USD; at 1 USD a token the first request spends 61
    backend = RelayBackend(
        "mock", "https://relay.test/v1", "m", transport=httpx.MockTransport(handler),
        price_in=1e6, price_out=1e6, budget=budget, max_concurrency=1,
    )  # fmt: skip
    second = ReplayRequest("r2", REQUEST.messages, max_tokens=5)  # estimated at 6 prompt tokens
    out: list[ReplayResult] = []
    with pytest.raises(BudgetExceeded):
        backend.replay([REQUEST, second], out.append)
    # unscaled, the second's worst case (6 + 5 = 11) would fit under 80 - 61; scaled
    # (ceil(6 * 3.75) + 5 = 28) it does not, so it is not sent
    assert [r.error_kind for r in out] == [None, "budget"]
    assert budget.spent_usd == pytest.approx(61.0)
