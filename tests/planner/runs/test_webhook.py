"""The attention webhook against a real HTTP server on 127.0.0.1: delivery, retries, secrecy."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response

from planner.models.server import ServerThread
from planner.runs.webhook import post_webhook, public_target, webhook_url_from_env

SECRET = "T0000/B0000/s3cr3t-token-xyz"


@dataclass
class Hook:
    """A chat tool's incoming webhook: records bodies; a path's scripted statuses come first."""

    received: list[tuple[str, Any]] = field(default_factory=list)
    script: dict[str, list[tuple[int, dict[str, str]]]] = field(default_factory=dict)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/hooks/{name}/{secret:path}")
        async def hook(name: str, secret: str, request: Request) -> Response:
            self.received.append((f"{name}/{secret}", await request.json()))
            queue = self.script.get(name, [])
            status, headers = queue.pop(0) if queue else (200, {})
            return Response("ok" if status == 200 else "no", status_code=status, headers=headers)

        return app


@pytest.fixture(scope="module")
def hook() -> Iterator[tuple[Hook, str]]:
    state = Hook()
    with ServerThread(state.app()) as server:
        yield state, f"http://127.0.0.1:{server.port}"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_payload_is_delivered_as_json(hook: tuple[Hook, str]) -> None:
    state, base = hook
    payload = {"text": "run r1 needs attention: drift 0.31", "run_id": "r1", "reasons": ["drift"]}
    result = post_webhook(f"{base}/hooks/ok/{SECRET}", payload)
    assert result.ok and result.attempts == 1 and result.status_code == 200
    assert result.target == base and SECRET not in repr(result)
    assert state.received[-1] == (f"ok/{SECRET}", payload)


def test_retries_after_503_then_delivers(hook: tuple[Hook, str]) -> None:
    state, base = hook
    state.script["flaky"] = [(503, {}), (503, {})]
    before = len(state.received)
    result = post_webhook(f"{base}/hooks/flaky/{SECRET}", {"text": "hi"}, backoff_s=0.01)
    assert result.ok and result.attempts == 3
    assert [body for _, body in state.received[before:]] == [{"text": "hi"}] * 3


def test_honours_retry_after_on_429_within_cap(hook: tuple[Hook, str]) -> None:
    state, base = hook
    state.script["limited"] = [(429, {"Retry-After": "0.3"})]
    started = time.monotonic()
    result = post_webhook(f"{base}/hooks/limited/{SECRET}", {"text": "hi"}, backoff_s=0.01)
    assert result.ok and result.attempts == 2
    assert time.monotonic() - started >= 0.3
    state.script["limited"] = [(429, {"Retry-After": "3600"})]
    started = time.monotonic()
    result = post_webhook(
        f"{base}/hooks/limited/{SECRET}", {"text": "hi"}, backoff_s=0.01, max_wait_s=0.05
    )
    assert result.ok and time.monotonic() - started < 30  # capped, not an hour


def test_failure_is_reported_without_the_secret(
    hook: tuple[Hook, str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, base = hook
    state.script["down"] = [(500, {})] * 5
    # Prefect's logging set-up (earlier tests in the session) may stop httpx's records from
    # reaching the root logger; this test needs to see them
    httpx_logger = logging.getLogger("httpx")
    monkeypatch.setattr(httpx_logger, "propagate", True)
    monkeypatch.setattr(httpx_logger, "disabled", False)
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="httpx")
    url = f"{base}/hooks/down/{SECRET}?token=q-s3cr3t"
    result = post_webhook(url, {"text": "hi"}, attempts=3, backoff_s=0.01)
    assert not result.ok and result.attempts == 3 and result.status_code == 500
    assert result.reason == f"HTTP 500 from {base} after 3 attempt(s)"
    assert "HTTP Request: POST" in caplog.text  # httpx did log the request...
    assert SECRET not in caplog.text and "q-s3cr3t" not in caplog.text  # ...without the secret
    assert "s3cr3t" not in str(result.as_dict())


def test_client_error_is_not_retried(hook: tuple[Hook, str]) -> None:
    state, base = hook
    state.script["gone"] = [(404, {})] * 3
    result = post_webhook(f"{base}/hooks/gone/{SECRET}", {"text": "hi"}, backoff_s=0.01)
    assert not result.ok and result.attempts == 1 and result.status_code == 404
    assert SECRET not in result.reason


def test_connection_refused_never_raises() -> None:
    port = _closed_port()
    url = f"http://127.0.0.1:{port}/hooks/x/{SECRET}"
    result = post_webhook(url, {"text": "hi"}, attempts=2, backoff_s=0.01, timeout_s=2)
    assert not result.ok and result.attempts == 2 and result.status_code is None
    assert result.reason.startswith("ConnectError")
    assert f"http://127.0.0.1:{port}" in result.reason and SECRET not in result.reason


def test_shared_client_and_bad_input(hook: tuple[Hook, str]) -> None:
    _, base = hook
    with httpx.Client() as client:
        assert post_webhook(f"{base}/hooks/ok/{SECRET}", {"text": "x"}, client=client).ok
        assert not client.is_closed  # a caller's client is left open
    with pytest.raises(ValueError, match="text"):
        post_webhook(f"{base}/hooks/ok/{SECRET}", {"summary": "no text"})
    bad = post_webhook(f"ftp://example.org/{SECRET}", {"text": "x"})
    assert not bad.ok and bad.attempts == 0 and SECRET not in repr(bad)


def test_url_from_env_and_public_target(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_HOOK", "  https://hooks.example.com/services/T/B/x  ")
    monkeypatch.setenv("BLANK_HOOK", " ")
    monkeypatch.delenv("NO_HOOK", raising=False)
    assert webhook_url_from_env("MY_HOOK") == "https://hooks.example.com/services/T/B/x"
    assert webhook_url_from_env("BLANK_HOOK") is None
    assert webhook_url_from_env("NO_HOOK") is None
    assert public_target("https://user:pw@hooks.example.com:8443/a/b?c=d") == (
        "https://hooks.example.com:8443"
    )
    assert public_target("not a url") == "(not a URL)"
