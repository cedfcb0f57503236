"""An OpenAI-compatible HTTP server over a local model, with fault injection for tests and demos.

``create_app(engine, faults)`` serves ``GET /v1/models`` and ``POST /v1/chat/completions``
(non-streaming, and streaming as server-sent events with ``usage`` in a last chunk when
``stream_options.include_usage`` is set), answering with any
:class:`planner.models.engines.ChatEngine`: ``EchoEngine`` (no model; fast and deterministic, for
relay tests and benches) or ``LocalEngine`` (an onnxruntime-genai folder). :class:`ServerThread`
runs it under uvicorn on 127.0.0.1 in a background thread, so a test gets a real socket and a real
protocol.

Behaviour a client can rely on:

- ``api_key`` set: every ``/v1`` request without ``Authorization: Bearer <key>`` gets 401 (the
  header is compared in constant time, ``hmac.compare_digest``).
- At most ``max_inflight`` requests are served at once (a stream counts until it ends); one
  more gets 429 with ``Retry-After: 1`` at once, before anything else is looked at.
- A chat request body over ``max_body_bytes`` gets 413 (``request_too_large``): a declared
  ``Content-Length`` is refused unread, a chunked body is counted as it arrives and refused
  once past the cap, so no more than the cap (plus one chunk) is ever held.
- A ``model`` other than the engine's ``model_name`` gets 404 (``model_not_found``); a malformed
  body gets 400 (``invalid_request_error``). Neither is ever subject to fault injection.
- Answers name ``app.state.served_model`` (default: the requested name) as their ``model``, and
  carry ``app.state.system_fingerprint`` when set: a relay whose alias moves to another model.
- Faults apply to chat completions only, decided per request in arrival order by a
  ``random.Random(seed)`` (same seed, same sequence): one draw ``u`` picks 429 if
  ``u < rate_429``, else 503 if ``u < rate_429 + rate_503``, else a hang if below that plus
  ``hang_rate``. A 429 carries ``Retry-After`` (and ``retry-after-ms``) unless
  ``retry_after_s`` is None. A hang answers nothing until the client disconnects.
  ``extra_latency_ms`` is slept (without blocking the loop) before every chat answer.
  A second draw per stream decides ``malformed_sse_rate``: that stream's second event is a
  ``data:`` line holding broken JSON, and the stream then ends without ``[DONE]``.
- Generation runs in worker threads, never on the event loop; a client that goes away mid-stream
  stops its generation.

Where it listens is the caller's choice; ``is_loopback`` tells whether a host is reachable only
from this machine (the CLI refuses any other without a key).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from planner.errors import ModelMemoryError, ModelRuntimeError
from planner.messages import message_text
from planner.models.engines import (
    ChatEngine,
    ContextOverflow,
    EchoEngine,
    LocalEngine,
    default_model_name,
)
from planner.models.faults import FaultConfig, FaultDice
from planner.models.guards import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_INFLIGHT,
    BodyTooLarge,
    InflightLimit,
    is_loopback,
    read_body,
)

__all__ = [
    "ChatEngine",
    "ContextOverflow",
    "EchoEngine",
    "FaultConfig",
    "LocalEngine",
    "ServerThread",
    "create_app",
    "default_model_name",
    "is_loopback",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_MAX_TOKENS = 256


class _BadRequest(Exception):
    def __init__(self, status: int, message: str, err_type: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.err_type = err_type
        self.code = code


def _error(
    status: int, message: str, err_type: str, code: str | None = None, headers: Any = None
) -> JSONResponse:
    body = {"error": {"message": message, "type": err_type, "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


@dataclass(frozen=True)
class _ChatCall:
    messages: list[dict[str, Any]]
    max_tokens: int
    temperature: float
    stream: bool
    include_usage: bool


def _parse_chat(body: Any, model_name: str) -> _ChatCall:
    if not isinstance(body, dict):
        raise _BadRequest(400, "request body must be a JSON object", "invalid_request_error")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest(400, "'model' is required", "invalid_request_error")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest(400, "'messages' must be a non-empty list", "invalid_request_error")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise _BadRequest(
                400, f"messages[{i}] must be an object with a 'role'", "invalid_request_error"
            )
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise _BadRequest(400, "'max_tokens' must be a positive integer", "invalid_request_error")
    temperature = body.get("temperature", 1.0)
    if temperature is None:
        temperature = 1.0
    if not isinstance(temperature, int | float) or not 0 <= temperature <= 2:
        raise _BadRequest(400, "'temperature' must be within [0, 2]", "invalid_request_error")
    stream = bool(body.get("stream", False))
    options = body.get("stream_options") or {}
    include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
    if model != model_name:
        raise _BadRequest(
            404,
            f"The model '{model}' does not exist (this server serves '{model_name}')",
            "invalid_request_error",
            "model_not_found",
        )
    return _ChatCall(messages, max_tokens, float(temperature), stream, include_usage)


_DONE = object()


def _produce(
    engine: ChatEngine,
    call: _ChatCall,
    loop: asyncio.AbstractEventLoop,
    queue: asyncio.Queue[Any],
    cancelled: threading.Event,
) -> None:
    """Worker thread: pulls text pieces from the engine and hands them to the event loop."""
    gen = engine.complete(call.messages, call.max_tokens, call.temperature)
    try:
        for piece in gen:
            if cancelled.is_set():
                break
            loop.call_soon_threadsafe(queue.put_nowait, piece)
        loop.call_soon_threadsafe(queue.put_nowait, _DONE)
    except Exception as exc:
        loop.call_soon_threadsafe(queue.put_nowait, exc)
    finally:
        close = getattr(gen, "close", None)
        if close is not None:
            close()


def _completion_tokens(engine: ChatEngine, text: str, pieces: list[str]) -> int:
    if getattr(engine, "pieces_are_tokens", False):
        return len(pieces)
    return engine.count_tokens(text) if text else 0


def _generation_error(exc: Exception) -> JSONResponse:
    if isinstance(exc, ContextOverflow):
        return _error(400, str(exc), "invalid_request_error", "context_length_exceeded")
    if isinstance(exc, ModelMemoryError):
        # The host cannot hold this request's KV cache now: the server is fine and a shorter
        # request (or the same one later) may fit, so this is "unavailable", not a crash.
        return _error(503, str(exc), "server_error", "insufficient_memory")
    if isinstance(exc, ModelRuntimeError):
        return _error(500, str(exc), "server_error", "model_error")
    return _error(500, f"generation failed: {type(exc).__name__}: {exc}", "server_error")


def _prompt_tokens(engine: ChatEngine, messages: list[dict[str, Any]]) -> int:
    counter = getattr(engine, "count_prompt_tokens", None)
    if callable(counter):
        return int(counter(messages))
    text = "\n".join(message_text(m.get("content")) for m in messages)
    return engine.count_tokens(text)


def create_app(
    engine: ChatEngine,
    faults: FaultConfig = FaultConfig(),
    api_key: str | None = None,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_inflight: int = DEFAULT_MAX_INFLIGHT,
) -> FastAPI:
    """An ASGI app speaking the OpenAI chat completions protocol over ``engine``."""
    if max_body_bytes < 1 or max_inflight < 1:
        raise ValueError("max_body_bytes and max_inflight must be at least 1")
    app = FastAPI(title="migration-planner model server", docs_url=None, redoc_url=None)
    app.add_middleware(InflightLimit, limit=max_inflight)
    dice = FaultDice(faults)
    executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="model-server")
    app.state.engine = engine
    app.state.faults = faults
    expected = None if api_key is None else b"Bearer " + api_key.encode()
    app.state.served_model = None  # what answers say served them (default: the name asked for)
    app.state.system_fingerprint = None

    def fingerprint_field() -> dict[str, str]:
        return {"system_fingerprint": fp} if (fp := app.state.system_fingerprint) else {}

    def refused(request: Request) -> JSONResponse | None:
        """401 unless the request carries the configured key (constant time: how much of a
        guess matched never shows in how long the answer takes)."""
        if expected is None:
            return None
        # Starlette decodes header bytes as latin-1: encoding back gives the bytes sent
        sent = request.headers.get("authorization", "").encode("latin-1")
        if hmac.compare_digest(sent, expected):
            return None
        return _error(401, "Incorrect API key provided", "invalid_request_error", "invalid_api_key")

    @app.get("/v1/models")
    async def list_models(request: Request) -> Any:
        if (denied := refused(request)) is not None:
            return denied
        return {
            "object": "list",
            "data": [
                {"id": engine.model_name, "object": "model", "created": 0, "owned_by": "local"}
            ],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        if (denied := refused(request)) is not None:
            return denied
        try:
            body = json.loads(await read_body(request, max_body_bytes))
        except BodyTooLarge:
            return _error(
                413,
                f"Request body is larger than {max_body_bytes} bytes",
                "invalid_request_error",
                "request_too_large",
            )
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "request body is not valid JSON", "invalid_request_error")
        try:
            call = _parse_chat(body, engine.model_name)
        except _BadRequest as exc:
            return _error(exc.status, exc.message, exc.err_type, exc.code)

        fault = dice.roll()
        if faults.extra_latency_ms > 0:
            await asyncio.sleep(faults.extra_latency_ms / 1000.0)
        if fault == "429":
            headers = {}
            if faults.retry_after_s is not None:
                after = faults.retry_after_s
                headers["Retry-After"] = (
                    str(int(after)) if float(after).is_integer() else f"{after:g}"
                )
                headers["retry-after-ms"] = str(math.ceil(after * 1000))
            return _error(
                429, "Rate limit reached (injected)", "rate_limit_error", "rate_limit", headers
            )
        if fault == "503":
            return _error(503, "Service unavailable (injected)", "server_error", "overloaded")
        if fault == "hang":
            while not await request.is_disconnected():
                await asyncio.sleep(0.05)
            return Response(status_code=499)

        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancelled = threading.Event()
        loop.run_in_executor(executor, _produce, engine, call, loop, queue, cancelled)

        if not call.stream:
            pieces: list[str] = []
            try:
                while (item := await queue.get()) is not _DONE:
                    if isinstance(item, Exception):
                        return _generation_error(item)
                    pieces.append(item)
            finally:
                cancelled.set()
            text = "".join(pieces)
            completion_tokens = _completion_tokens(engine, text, pieces)
            finish = "length" if len(pieces) >= call.max_tokens else "stop"
            answer: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                **fingerprint_field(),
                "model": app.state.served_model or engine.model_name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": finish,
                        "logprobs": None,
                    }
                ],
            }
            if not faults.omit_usage:
                prompt = await loop.run_in_executor(executor, _prompt_tokens, engine, call.messages)
                answer["usage"] = {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt + completion_tokens,
                }
            return JSONResponse(answer)

        malformed = dice.roll_malformed()
        # wait for the first piece, so a failure before any output is a proper HTTP error
        first = await queue.get()
        if isinstance(first, Exception):
            cancelled.set()
            return _generation_error(first)

        def chunk(delta: dict[str, Any], finish: str | None) -> str:
            data = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": app.state.served_model or engine.model_name,
                **fingerprint_field(),
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return f"data: {json.dumps(data)}\n\n"

        async def events() -> Any:
            pieces: list[str] = []
            try:
                yield chunk({"role": "assistant", "content": ""}, None)
                if malformed:
                    yield f'data: {{"id": "{completion_id}", "object": "chat.completion.chu\n\n'
                    return
                item = first
                while item is not _DONE:
                    if isinstance(item, Exception):
                        error = {"error": {"message": f"generation failed: {item}"}}
                        yield f"data: {json.dumps(error)}\n\n"
                        return
                    pieces.append(item)
                    yield chunk({"content": item}, None)
                    item = await queue.get()
                finish = "length" if len(pieces) >= call.max_tokens else "stop"
                yield chunk({}, finish)
                if call.include_usage and not faults.omit_usage:
                    completion_tokens = _completion_tokens(engine, "".join(pieces), pieces)
                    prompt = await loop.run_in_executor(
                        executor, _prompt_tokens, engine, call.messages
                    )
                    usage: dict[str, Any] = {
                        "id": completion_id,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": app.state.served_model or engine.model_name,
                        "choices": [],
                        "usage": {
                            "prompt_tokens": prompt,
                            "completion_tokens": completion_tokens,
                            "total_tokens": prompt + completion_tokens,
                        },
                    }
                    yield f"data: {json.dumps(usage)}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                cancelled.set()

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return app


class _RequestLogger:
    """ASGI wrapper recording (arrival time, path, status) of every HTTP request.

    The entry is added on arrival with status 0 and completed when the response starts, so the
    log is ordered by arrival; a request still unanswered shows status 0, and a hang the
    client gave up on is logged 499 (nginx's "client closed request") once noticed.
    """

    def __init__(self, app: ASGIApp, log: list[tuple[float, str, int]]) -> None:
        self.app = app
        self.log = log
        self._lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        arrived = time.monotonic()
        path = str(scope.get("path", ""))
        with self._lock:
            index = len(self.log)
            self.log.append((arrived, path, 0))

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                with self._lock:
                    self.log[index] = (arrived, path, int(message["status"]))
            await send(message)

        await self.app(scope, receive, recording_send)


class ServerThread:
    """uvicorn serving ``app`` on ``host:port`` in a background thread, as a context manager.

    ``port=0`` lets the OS pick a free port; ``base_url`` (ending in ``/v1``) is valid inside the
    ``with``. Requests still hanging at exit are cancelled after one second.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.request_log: list[tuple[float, str, int]] = []
        self.base_url = ""
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ServerThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        import uvicorn

        config = uvicorn.Config(
            _RequestLogger(self.app, self.request_log),
            host=self.host,
            port=self.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
            timeout_keep_alive=30,
        )
        # (uvicorn's own bind: handing it a pre-bound socket costs ~40 ms per request here)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True, name="uvicorn")
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"model server on {self.host}:{self.port} failed to start")
            if time.monotonic() > deadline:
                raise RuntimeError(f"model server on {self.host}:{self.port} did not start")
            time.sleep(0.01)
        self.port = int(self._server.servers[0].sockets[0].getsockname()[1])
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.base_url = f"http://{host}:{self.port}/v1"

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None
