"""The model server locked down: keys compared in constant time, no open bind without a key,
a body-size cap (413) and a cap on requests in flight (429 with Retry-After). Real servers on
127.0.0.1; the official client judges the protocol."""

from __future__ import annotations

import hmac
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import typer
import uvicorn
from typer.testing import CliRunner

import flows.cli_models
from flows.cli_models import serve_model
from planner.models import server as model_server
from planner.models.server import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_INFLIGHT,
    EchoEngine,
    ServerThread,
    create_app,
    is_loopback,
)

KEY = "s3cret-key-0123"
MESSAGES: Any = [{"role": "user", "content": "Sort these: pear, apple."}]


def client_for(server: ServerThread, **kwargs: Any) -> openai.OpenAI:
    kwargs.setdefault("api_key", "unused")
    kwargs.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=server.base_url, **kwargs)


def typer_app_with(command: Any) -> typer.Typer:
    app = typer.Typer()
    app.command()(command)
    return app


def test_wrong_keys_are_refused_through_hmac_compare_digest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every Authorization header is compared with hmac.compare_digest (constant time), which
    also takes keys of any length, or none, or bytes that are not ASCII, without an error."""
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(model_server.hmac, "compare_digest", spy)
    wrong: list[bytes | None] = [
        None,  # no header at all
        b"Bearer",
        b"Bearer x",
        b"Bearer s3cret-key-012",  # one character short
        b"Bearer s3cret-key-01234",  # one too many
        b"Bearer S3cret-key-0123",  # same length, one byte off
        b"bearer s3cret-key-0123",
        b"Basic s3cret-key-0123",
        b"Bearer " + b"k" * 5000,
        "Bearer ключ-0123".encode(),
    ]
    with ServerThread(create_app(EchoEngine(), api_key=KEY)) as server:
        url = f"{server.base_url}/chat/completions"
        body = {"model": "echo", "messages": MESSAGES}
        for header in wrong:
            headers = {} if header is None else {"Authorization": header}
            resp = httpx.post(url, json=body, headers=headers)  # type: ignore[arg-type]
            assert resp.status_code == 401, header
            assert resp.json()["error"]["code"] == "invalid_api_key"
        assert len(compared) == len(wrong)
        assert all(expected == b"Bearer " + KEY.encode() for _, expected in compared)
        assert [sent for sent, _ in compared][1:] == wrong[1:]
        # the official client: a wrong key is an AuthenticationError, the right one answers
        with pytest.raises(openai.AuthenticationError):
            client_for(server, api_key="s3cret-key-0124").models.list()
        reply = client_for(server, api_key=KEY).chat.completions.create(
            model="echo", messages=MESSAGES
        )
        assert reply.choices[0].message.content == "Echo: Sort these: pear, apple."
        assert len(compared) == len(wrong) + 2


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.20", False),
        ("10.0.0.1", False),
        ("128.0.0.1", False),
        ("my-host.example", False),
        ("localhost.example", False),
        ("", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_non_loopback_bind_without_a_key_refuses_to_start() -> None:
    """The real CLI: one line naming the address, exit 2, before any model is loaded or any
    socket bound."""
    for host in ("0.0.0.0", "192.168.1.20"):
        proc = subprocess.run(
            [sys.executable, "-m", "flows.cli", "serve-model", "--echo", "--host", host],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines() == [
            f"error: --host {host} is reachable from other machines: require a key "
            "(--api-key-env VAR) or pass --insecure-no-auth"
        ]
        assert proc.stdout == ""


def test_serve_model_binds_openly_only_with_a_key_or_insecure_no_auth(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    served: list[tuple[str, Any]] = []
    monkeypatch.setattr(
        uvicorn, "run", lambda app, host, port, log_level: served.append((host, app))
    )
    monkeypatch.setenv("TEST_SERVER_KEY", KEY)
    command = typer_app_with(serve_model)
    runner = CliRunner()
    refused = runner.invoke(command, ["--echo", "--host", "::"])
    assert refused.exit_code == 2 and "--host :: is reachable" in refused.stderr
    assert served == []
    for args in (
        ["--host", "::1"],  # loopback: no key needed
        ["--host", "0.0.0.0", "--api-key-env", "TEST_SERVER_KEY"],
        ["--host", "0.0.0.0", "--insecure-no-auth"],
    ):
        result = runner.invoke(command, ["--echo", *args])
        assert result.exit_code == 0, result.output
        warned = "warning: serving on 0.0.0.0 without a key" in result.stderr
        assert warned == ("--insecure-no-auth" in args)
    assert [host for host, _ in served] == ["::1", "0.0.0.0", "0.0.0.0"]
    with ServerThread(served[1][1]) as server:  # the one with a key asks for it
        assert httpx.get(f"{server.base_url}/models").status_code == 401
        ok = httpx.get(f"{server.base_url}/models", headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200


def test_cli_limits_reach_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    served: list[Any] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, log_level: served.append(app))
    result = CliRunner().invoke(
        typer_app_with(serve_model), ["--echo", "--max-body-bytes", "300", "--max-inflight", "3"]
    )
    assert result.exit_code == 0, result.output
    with ServerThread(served[0]) as server:
        url = f"{server.base_url}/chat/completions"
        small = {"model": "echo", "messages": [{"role": "user", "content": "x" * 100}]}
        large = {"model": "echo", "messages": [{"role": "user", "content": "x" * 300}]}
        assert httpx.post(url, json=small).status_code == 200
        assert httpx.post(url, json=large).status_code == 413
    # the CLI's defaults are the library's (kept apart: the CLI loads FastAPI only to serve)
    assert (flows.cli_models.DEFAULT_MAX_BODY_BYTES, flows.cli_models.DEFAULT_MAX_INFLIGHT) == (
        DEFAULT_MAX_BODY_BYTES,
        DEFAULT_MAX_INFLIGHT,
    )


LIMIT = 4096


@pytest.fixture(scope="module")
def capped() -> Iterator[ServerThread]:
    with ServerThread(create_app(EchoEngine(), max_body_bytes=LIMIT)) as server:
        yield server


def _body(size: int) -> bytes:
    """A valid chat request of exactly ``size`` bytes."""
    empty = json.dumps({"model": "echo", "messages": [{"role": "user", "content": ""}]})
    content = "y" * (size - len(empty))
    return json.dumps(
        {"model": "echo", "messages": [{"role": "user", "content": content}]}
    ).encode()


def test_an_oversized_body_is_413(capped: ServerThread) -> None:
    url = f"{capped.base_url}/chat/completions"
    assert httpx.post(url, content=_body(LIMIT)).status_code == 200  # at the cap: served
    resp = httpx.post(url, content=_body(LIMIT + 1))  # Content-Length: refused unread
    assert resp.status_code == 413
    assert resp.json() == {
        "error": {
            "message": f"Request body is larger than {LIMIT} bytes",
            "type": "invalid_request_error",
            "param": None,
            "code": "request_too_large",
        }
    }
    # chunked (no Content-Length): counted as it arrives
    data = _body(3 * LIMIT)
    chunked = httpx.post(url, content=iter([data[i : i + 1000] for i in range(0, len(data), 1000)]))
    assert chunked.status_code == 413
    assert "content-length" not in chunked.request.headers
    # the official client sees an ordinary API error
    with pytest.raises(openai.APIStatusError) as caught:
        client_for(capped).chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "z" * LIMIT}]
        )
    assert caught.value.status_code == 413


def test_an_endless_chunked_body_is_refused_after_the_cap(capped: ServerThread) -> None:
    """A client that never stops sending: the 413 comes back while it is still sending, long
    before it has sent 64 MB (the server holds at most the cap plus one chunk)."""
    chunk = b"z" * 8192
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    with socket.create_connection(("127.0.0.1", capped.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        sock.setblocking(False)
        sent, answer = 0, b""
        while sent < 64 * 2**20 and b"\r\n\r\n" not in answer:
            try:
                answer += sock.recv(65536)
                continue
            except BlockingIOError:
                pass
            try:
                sent += sock.send(frame)
            except BlockingIOError:
                time.sleep(0.001)
            except (BrokenPipeError, ConnectionResetError):
                break
        sock.setblocking(True)
        while b"\r\n\r\n" not in answer:
            more = sock.recv(65536)
            if not more:
                break
            answer += more
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:100]
    assert sent < 64 * 2**20


class GatedEngine(EchoEngine):
    """Holds every answer until ``gate`` opens; counts the requests that reached it."""

    def __init__(self) -> None:
        super().__init__("gated")
        self.gate = threading.Event()
        self.entered = 0
        self._lock = threading.Lock()

    def complete(
        self, messages: list[dict[str, Any]], max_tokens: int, temperature: float
    ) -> Iterator[str]:
        with self._lock:
            self.entered += 1
        self.gate.wait(timeout=30)
        yield from super().complete(messages, max_tokens, temperature)


def test_an_overload_is_429_with_retry_after() -> None:
    """Cap + 3 requests at once, all held by a slow engine: exactly the cap gets in, the others
    are 429 with Retry-After at once; once the held ones finish, slots are free again."""
    cap, extra = 3, 3
    engine = GatedEngine()
    with ServerThread(create_app(engine, max_inflight=cap)) as server:
        url = f"{server.base_url}/chat/completions"
        body = {"model": "gated", "messages": MESSAGES}
        results: list[httpx.Response] = []
        lock = threading.Lock()
        start = threading.Barrier(cap + extra)

        def fire(stream: bool) -> None:
            start.wait()
            resp = httpx.post(url, json={**body, "stream": stream}, timeout=30)
            with lock:
                results.append(resp)

        threads = [threading.Thread(target=fire, args=(i % 2 == 0,)) for i in range(cap + extra)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while (len(results) < extra or engine.entered < cap) and time.monotonic() < deadline:
            time.sleep(0.02)
        with lock:
            busy = list(results)
        assert engine.entered == cap  # the held ones
        assert [r.status_code for r in busy] == [429] * extra  # the others, at once
        for r in busy:
            assert r.headers["retry-after"] == "1" and r.headers["retry-after-ms"] == "1000"
            assert r.json()["error"]["type"] == "rate_limit_error"
            assert r.json()["error"]["code"] == "server_busy"
        # full: the official client gets a RateLimitError too
        with pytest.raises(openai.RateLimitError):
            client_for(server).chat.completions.create(model="gated", messages=MESSAGES)
        engine.gate.set()
        for t in threads:
            t.join(timeout=30)
        assert sorted(r.status_code for r in results) == [200] * cap + [429] * extra
        # slots free again
        reply = client_for(server).chat.completions.create(model="gated", messages=MESSAGES)
        assert reply.choices[0].message.content == "Echo: Sort these: pear, apple."


def test_create_app_refuses_impossible_limits() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        create_app(EchoEngine(), max_inflight=0)
    with pytest.raises(ValueError, match="at least 1"):
        create_app(EchoEngine(), max_body_bytes=0)
