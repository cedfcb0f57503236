"""The OpenAI-compatible model server: protocol (judged by the official client), faults, auth."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import typer
import uvicorn
from typer.testing import CliRunner

from flows.cli_common import UserError
from flows.cli_models import serve_model
from planner.models.server import (
    ChatEngine,
    EchoEngine,
    FaultConfig,
    LocalEngine,
    ServerThread,
    create_app,
    default_model_name,
)
from planner.replay.local import LocalBackend
from planner.replay.protocol import ReplayRequest, ReplayResult

MESSAGES: Any = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Sort these: pear, apple."},
]


@pytest.fixture(scope="module")
def echo_server() -> Iterator[ServerThread]:
    with ServerThread(create_app(EchoEngine("echo-1"))) as server:
        yield server


def client_for(server: ServerThread, **kwargs: Any) -> openai.OpenAI:
    kwargs.setdefault("api_key", "unused")
    kwargs.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=server.base_url, **kwargs)


def sse_events(response: httpx.Response) -> list[str]:
    """The `data:` payloads of an SSE response, in order."""
    return [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]


def test_echo_engine_is_a_chat_engine_and_counts_tokens() -> None:
    engine = EchoEngine()
    assert isinstance(engine, ChatEngine)
    pieces = list(engine.complete(MESSAGES, max_tokens=100, temperature=0.0))
    assert "".join(pieces) == "Echo: Sort these: pear, apple."
    assert len(pieces) == engine.count_tokens("".join(pieces)) == 9
    assert "".join(engine.complete(MESSAGES, max_tokens=3, temperature=0.0)) == "Echo: Sort"


def test_models_endpoint_lists_the_engine(echo_server: ServerThread) -> None:
    models = client_for(echo_server).models.list()
    assert [m.id for m in models.data] == ["echo-1"]
    assert echo_server.base_url.startswith("http://127.0.0.1:")
    assert echo_server.base_url.endswith("/v1")


def test_non_streaming_completion_with_usage(echo_server: ServerThread) -> None:
    reply = client_for(echo_server).chat.completions.create(
        model="echo-1",
        messages=MESSAGES,
        max_tokens=50,
    )
    assert reply.choices[0].message.content == "Echo: Sort these: pear, apple."
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    # prompt: "You are terse.\nSort these: pear, apple." = 4 + 7 tokens
    assert reply.usage.prompt_tokens == 11
    assert reply.usage.completion_tokens == 9
    assert reply.usage.total_tokens == 20


def test_max_tokens_cuts_the_answer_with_finish_length(echo_server: ServerThread) -> None:
    reply = client_for(echo_server).chat.completions.create(
        model="echo-1",
        messages=MESSAGES,
        max_tokens=3,
    )
    assert reply.choices[0].message.content == "Echo: Sort"
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 3


def test_streaming_with_the_official_client_has_usage_last(echo_server: ServerThread) -> None:
    stream = client_for(echo_server).chat.completions.create(
        model="echo-1",
        messages=MESSAGES,
        max_tokens=50,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: Sort these: pear, apple."
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 9
    assert all(c.usage is None for c in chunks[:-1])
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}


def test_raw_sse_stream_format(echo_server: ServerThread) -> None:
    body = {"model": "echo-1", "messages": MESSAGES, "max_tokens": 50, "stream": True}
    with httpx.stream("POST", f"{echo_server.base_url}/chat/completions", json=body) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = sse_events(resp)
    assert events[-1] == "[DONE]"
    payloads = [json.loads(e) for e in events[:-1]]
    assert all(p["object"] == "chat.completion.chunk" for p in payloads)
    assert len({p["id"] for p in payloads}) == 1
    assert payloads[0]["choices"][0]["delta"]["role"] == "assistant"
    # without include_usage no usage anywhere
    assert all("usage" not in p for p in payloads)
    text = "".join(p["choices"][0]["delta"].get("content", "") for p in payloads)
    assert text == "Echo: Sort these: pear, apple."


def test_unknown_model_is_404_and_bad_body_400(echo_server: ServerThread) -> None:
    url = f"{echo_server.base_url}/chat/completions"
    resp = httpx.post(url, json={"model": "other", "messages": MESSAGES})
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "model_not_found"
    assert httpx.post(url, json={"model": "echo-1", "messages": []}).status_code == 400
    assert httpx.post(url, content=b"{not json").status_code == 400
    bad_max = {"model": "echo-1", "messages": MESSAGES, "max_tokens": 0}
    assert httpx.post(url, json=bad_max).status_code == 400


def test_request_log_records_path_and_status(echo_server: ServerThread) -> None:
    before = len(echo_server.request_log)
    httpx.get(f"{echo_server.base_url}/models")
    httpx.post(f"{echo_server.base_url}/chat/completions", json={"model": "nope", "messages": []})
    new = echo_server.request_log[before:]
    assert [(path, status) for _, path, status in new] == [
        ("/v1/models", 200),
        ("/v1/chat/completions", 400),
    ]
    assert new[0][0] <= new[1][0]


def test_api_key_required_when_configured() -> None:
    with ServerThread(create_app(EchoEngine(), api_key="s3cret")) as server:
        with pytest.raises(openai.AuthenticationError):
            client_for(server, api_key="wrong").models.list()
        assert httpx.get(f"{server.base_url}/models").status_code == 401
        ok = client_for(server, api_key="s3cret").chat.completions.create(
            model="echo",
            messages=MESSAGES,
        )
        assert ok.choices[0].message.content == "Echo: Sort these: pear, apple."


def test_all_429_with_retry_after() -> None:
    faults = FaultConfig(rate_429=1.0, retry_after_s=2.0)
    with ServerThread(create_app(EchoEngine(), faults)) as server:
        url = f"{server.base_url}/chat/completions"
        for _ in range(5):
            resp = httpx.post(url, json={"model": "echo", "messages": MESSAGES})
            assert resp.status_code == 429
            assert resp.headers["retry-after"] == "2"
            assert resp.headers["retry-after-ms"] == "2000"
            assert resp.json()["error"]["type"] == "rate_limit_error"
        # the models endpoint is never faulted
        assert httpx.get(f"{server.base_url}/models").status_code == 200
        with pytest.raises(openai.RateLimitError):
            client_for(server).chat.completions.create(
                model="echo",
                messages=MESSAGES,
            )


def test_429_without_retry_after_header() -> None:
    faults = FaultConfig(rate_429=1.0, retry_after_s=None)
    with ServerThread(create_app(EchoEngine(), faults)) as server:
        url = f"{server.base_url}/chat/completions"
        resp = httpx.post(url, json={"model": "echo", "messages": MESSAGES})
        assert resp.status_code == 429
        assert "retry-after" not in resp.headers


def statuses(faults: FaultConfig, n: int) -> list[int]:
    with ServerThread(create_app(EchoEngine(), faults)) as server, httpx.Client() as client:
        url = f"{server.base_url}/chat/completions"
        return [
            client.post(url, json={"model": "echo", "messages": MESSAGES}).status_code
            for _ in range(n)
        ]


def test_seeded_fault_fractions_are_reproducible() -> None:
    faults = FaultConfig(rate_429=0.3, rate_503=0.2, seed=7)
    first = statuses(faults, 200)
    assert first == statuses(faults, 200)
    assert set(first) == {200, 429, 503}
    assert 40 <= first.count(429) <= 80
    assert 20 <= first.count(503) <= 60
    assert statuses(FaultConfig(rate_429=0.3, rate_503=0.2, seed=8), 200) != first


def test_hang_never_answers_until_the_client_gives_up() -> None:
    with ServerThread(create_app(EchoEngine(), FaultConfig(hang_rate=1.0))) as server:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{server.base_url}/chat/completions",
                json={"model": "echo", "messages": MESSAGES},
                timeout=httpx.Timeout(5.0, read=0.5),
            )
        assert 0.4 < time.monotonic() - started < 3.0
        deadline = time.monotonic() + 2
        while server.request_log[-1][2] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        # the server noticed the client leaving (nginx's "client closed request")
        assert server.request_log[-1][1:] == ("/v1/chat/completions", 499)


def test_extra_latency_delays_answers() -> None:
    with ServerThread(create_app(EchoEngine(), FaultConfig(extra_latency_ms=300))) as server:
        started = time.monotonic()
        resp = httpx.post(
            f"{server.base_url}/chat/completions", json={"model": "echo", "messages": MESSAGES}
        )
        assert resp.status_code == 200
        assert time.monotonic() - started >= 0.3


def test_malformed_sse_and_omitted_usage() -> None:
    faults = FaultConfig(malformed_sse_rate=1.0, omit_usage=True)
    with ServerThread(create_app(EchoEngine(), faults)) as server:
        url = f"{server.base_url}/chat/completions"
        body = {
            "model": "echo",
            "messages": MESSAGES,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        with httpx.stream("POST", url, json=body) as resp:
            events = sse_events(resp)
        assert "[DONE]" not in events
        with pytest.raises(json.JSONDecodeError):
            for event in events:
                json.loads(event)
        plain = httpx.post(url, json={"model": "echo", "messages": MESSAGES}).json()
        assert "usage" not in plain
        assert plain["choices"][0]["message"]["content"].startswith("Echo:")


def test_fault_config_rejects_impossible_rates() -> None:
    with pytest.raises(ValueError, match="rate_429"):
        FaultConfig(rate_429=1.5)
    with pytest.raises(ValueError, match="exceed"):
        FaultConfig(rate_429=0.6, rate_503=0.6)


class SlowEngine:
    """Takes 0.3 s per piece, in the worker thread."""

    model_name = "slow"

    def complete(
        self, messages: list[dict[str, Any]], max_tokens: int, temperature: float
    ) -> Iterator[str]:
        for piece in ("one", " two", " three"):
            time.sleep(0.3)
            yield piece

    def count_tokens(self, text: str) -> int:
        return len(text.split())


class BrokenEngine(EchoEngine):
    def complete(
        self, messages: list[dict[str, Any]], max_tokens: int, temperature: float
    ) -> Iterator[str]:
        raise RuntimeError("model exploded")
        yield ""


def test_generation_never_blocks_the_event_loop() -> None:
    with ServerThread(create_app(SlowEngine())) as server, httpx.Client() as client:
        body = {"model": "slow", "messages": MESSAGES, "stream": True}
        with client.stream("POST", f"{server.base_url}/chat/completions", json=body) as resp:
            started = time.monotonic()
            models = httpx.get(f"{server.base_url}/models")
            assert models.status_code == 200
            assert time.monotonic() - started < 0.25  # answered while generation runs
            text = "".join(
                json.loads(e)["choices"][0]["delta"].get("content", "")
                for e in sse_events(resp)
                if e != "[DONE]"
            )
        assert text == "one two three"
        # engines without pieces_are_tokens are counted with count_tokens
        reply = client_for(server).chat.completions.create(
            model="slow",
            messages=MESSAGES,
        )
        assert reply.usage is not None and reply.usage.completion_tokens == 3


def test_engine_failure_is_a_500_for_both_modes() -> None:
    with ServerThread(create_app(BrokenEngine("broken"))) as server:
        url = f"{server.base_url}/chat/completions"
        for stream in (False, True):
            resp = httpx.post(url, json={"model": "broken", "messages": MESSAGES, "stream": stream})
            assert resp.status_code == 500
            assert "model exploded" in resp.json()["error"]["message"]


@pytest.fixture(scope="module")
def local_server(tiny_model_dir: Path) -> Iterator[ServerThread]:
    engine = LocalEngine(tiny_model_dir, model_name="tiny")
    with ServerThread(create_app(engine)) as server:
        yield server


def test_local_engine_non_streaming_matches_the_backend(
    local_server: ServerThread, tiny_model_dir: Path
) -> None:
    reply = client_for(local_server).chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        max_tokens=8,
        temperature=0,
    )
    results: list[ReplayResult] = []
    LocalBackend("tiny", tiny_model_dir).replay(
        [ReplayRequest("r", MESSAGES, max_tokens=8)], results.append
    )
    assert reply.choices[0].message.content == results[0].output_text
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == results[0].prompt_tokens
    assert reply.usage.completion_tokens == 8


def test_local_engine_streaming_equals_non_streaming(local_server: ServerThread) -> None:
    client = client_for(local_server)
    plain = client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        max_tokens=10,
        temperature=0,
    )
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=MESSAGES,
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[-1].usage is not None and plain.usage is not None
    assert chunks[-1].usage.completion_tokens == 10
    assert chunks[-1].usage.prompt_tokens == plain.usage.prompt_tokens


def test_local_engine_context_overflow_is_a_400(local_server: ServerThread) -> None:
    long = [{"role": "user", "content": "the payment failed and " * 200}]
    for stream in (False, True):
        resp = httpx.post(
            f"{local_server.base_url}/chat/completions",
            json={"model": "tiny", "messages": long, "stream": stream},
        )
        assert resp.status_code == 400
        assert resp.json()["error"]["code"] == "context_length_exceeded"


def test_default_model_name_of_precision_folders(tmp_path: Path) -> None:
    assert default_model_name(tmp_path / "edge-small" / "int4") == "edge-small-int4"
    assert default_model_name(tmp_path / "phi-4-mini" / "cpu-int4-rtn") == "phi-4-mini-cpu-int4-rtn"
    assert default_model_name(tmp_path / "my-model") == "my-model"


def test_serve_model_command_builds_the_configured_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    served: dict[str, Any] = {}

    def fake_run(app: Any, host: str, port: int, log_level: str) -> None:
        served.update(app=app, host=host, port=port)

    monkeypatch.setattr(uvicorn, "run", fake_run)
    monkeypatch.setenv("TEST_SERVER_KEY", "k-123")
    result = CliRunner().invoke(
        typer_app_with(serve_model),
        [
            "--echo",
            "--model-name",
            "relay-model",
            "--fault-429",
            "1.0",
            "--retry-after",
            "3",
            "--api-key-env",
            "TEST_SERVER_KEY",
            "--port",
            "9123",
        ],
    )
    assert result.exit_code == 0, result.output
    assert served["port"] == 9123 and served["host"] == "127.0.0.1"
    with ServerThread(served["app"]) as server:
        url = f"{server.base_url}/chat/completions"
        body = {"model": "relay-model", "messages": MESSAGES}
        assert httpx.post(url, json=body).status_code == 401
        limited = httpx.post(url, json=body, headers={"Authorization": "Bearer k-123"})
        assert limited.status_code == 429 and limited.headers["retry-after"] == "3"


def test_serve_model_refuses_a_missing_key_or_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    options: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "model_name": None,
        "threads": None,
        "fault_429": 0.0,
        "retry_after": 1.0,
        "fault_503": 0.0,
        "latency_ms": 0.0,
        "hang_rate": 0.0,
        "malformed_sse": 0.0,
        "omit_usage": False,
        "fault_seed": 0,
        "insecure_no_auth": False,
        "max_body_bytes": 1024,
        "max_inflight": 4,
    }
    with pytest.raises(UserError, match="NO_SUCH_KEY_VAR"):
        serve_model(None, echo=True, api_key_env="NO_SUCH_KEY_VAR", **options)
    with pytest.raises(UserError, match="--echo"):
        serve_model(None, echo=False, api_key_env=None, **options)


def typer_app_with(command: Any) -> typer.Typer:
    app = typer.Typer()
    app.command()(command)
    return app
