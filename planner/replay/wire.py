"""The OpenAI chat-completions wire format, as a client reads it: errors, ``Retry-After``, whole
and streamed (server-sent events) completions, usage counts.

Plain parsing, no I/O: :mod:`planner.replay.relay` sends and times requests and hands responses
here. A malformed answer raises :class:`WireFailure` with an error kind the replay records
(``protocol``, ``server_error``, ``rate_limited``, ...); an error text a server sends back is
redacted before anyone stores or logs it, because some gateways echo the request, key included.
"""

from __future__ import annotations

import email.utils
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from planner.messages import message_text
from planner.redact import redact

ERROR_TEXT_CHARS = 300


def parse_retry_after(headers: httpx.Headers, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(float(millis) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    reference = datetime.now(UTC).timestamp() if now is None else now
    return max(when.timestamp() - reference, 0.0)


class WireFailure(Exception):
    """One attempt went wrong; ``kind`` is an ERROR_KINDS value."""

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after


@dataclass
class Answer:
    text: str
    ttft_ms: float | None
    latency_ms: float
    usage: dict[str, Any] | None
    model: str | None = None  # what the server says answered (an alias resolved)
    system_fingerprint: str | None = None


def served_identity(data: Any) -> tuple[str | None, str | None]:
    """The ``model`` and ``system_fingerprint`` a completion (or a stream chunk) names."""
    if not isinstance(data, dict):
        return None, None
    model, fp = data.get("model"), data.get("system_fingerprint")
    return (
        model if isinstance(model, str) and model else None,
        fp if isinstance(fp, str) and fp else None,
    )


def error_text(response: httpx.Response) -> str:
    try:
        data = response.json()
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict) and error.get("message"):
            message = str(error["message"])
        elif isinstance(error, str):
            message = error
        else:
            message = response.text
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        message = response.text
    # Some gateways echo the request (and its key) in errors: redact before it is stored or logged.
    return redact(" ".join(message.split()))[:ERROR_TEXT_CHARS]


def failure_for_status(response: httpx.Response) -> WireFailure:
    status = response.status_code
    text = error_text(response)
    message = f"HTTP {status}: {text}" if text else f"HTTP {status}"
    retry_after = parse_retry_after(response.headers)
    if status in (401, 403):
        return WireFailure("auth", message, status=status)
    if status == 429:
        return WireFailure("rate_limited", message, status=status, retry_after=retry_after)
    if status >= 500:
        return WireFailure("server_error", message, status=status, retry_after=retry_after)
    if status == 408:
        return WireFailure("timeout", message, status=status, retry_after=retry_after)
    lowered = text.lower()
    if status == 413 or "context_length" in lowered or "maximum context" in lowered:
        return WireFailure("context_overflow", message, status=status)
    return WireFailure("client_error", message, status=status)


def failure_for_exception(exc: Exception) -> WireFailure:
    detail = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    if isinstance(exc, httpx.TimeoutException):
        return WireFailure("timeout", detail)
    if isinstance(exc, httpx.DecodingError):
        return WireFailure("protocol", detail)
    if isinstance(exc, httpx.TransportError):
        return WireFailure("connection", detail)
    raise exc


def choice_text(choice: Any, key: str) -> str:
    if not isinstance(choice, dict):
        raise WireFailure("protocol", f"choices[0] is not an object: {str(choice)[:80]}")
    part = choice.get(key) or {}
    if not isinstance(part, dict):
        raise WireFailure("protocol", f"choices[0].{key} is not an object")
    return message_text(part.get("content"))


def parse_completion(data: Any) -> tuple[str, dict[str, Any] | None]:
    """Text and usage of a non-streamed chat completion."""
    if not isinstance(data, dict):
        raise WireFailure("protocol", "response body is not a JSON object")
    if "error" in data:
        error = data["error"]
        message = error.get("message") if isinstance(error, dict) else error
        raise WireFailure("server_error", f"error in a 200 response: {str(message)[:200]}")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        raise WireFailure("protocol", "response has no choices")
    usage = data.get("usage")
    return choice_text(choices[0], "message"), usage if isinstance(usage, dict) else None


@dataclass
class StreamState:
    pieces: list[str] = field(default_factory=list)
    first_token_at: float | None = None
    first_event_at: float | None = None
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None
    done: bool = False
    model: str | None = None
    system_fingerprint: str | None = None


def take_event(data: str, state: StreamState, now: float) -> None:
    """Apply one SSE ``data`` payload of a chat completion stream."""
    if state.first_event_at is None:
        state.first_event_at = now
    if data.strip() == "[DONE]":
        state.done = True
        return
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError as exc:
        raise WireFailure("protocol", f"malformed SSE data (not JSON): {data[:80]!r}") from exc
    if not isinstance(chunk, dict):
        raise WireFailure("protocol", f"SSE data is not a JSON object: {data[:80]!r}")
    if "error" in chunk:
        error = chunk["error"]
        message = error.get("message") if isinstance(error, dict) else error
        raise WireFailure("server_error", f"error event in stream: {str(message)[:200]}")
    usage = chunk.get("usage")
    if isinstance(usage, dict):
        state.usage = usage
    model, system_fingerprint = served_identity(chunk)
    state.model = state.model or model
    state.system_fingerprint = state.system_fingerprint or system_fingerprint
    choices = chunk.get("choices") or []
    if not isinstance(choices, list):
        raise WireFailure("protocol", "SSE chunk 'choices' is not a list")
    if choices:
        text = choice_text(choices[0], "delta")
        if text:
            if state.first_token_at is None:
                state.first_token_at = now
            state.pieces.append(text)
        finish = choices[0].get("finish_reason")
        if finish:
            state.finish_reason = str(finish)


def usage_counts(usage: dict[str, Any] | None) -> tuple[int, int] | None:
    if not usage:
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if isinstance(prompt, int) and isinstance(completion, int) and prompt >= 0 and completion >= 0:
        return prompt, completion
    return None


def endpoint_url(url: str) -> str:
    """``scheme://host[:port]/path`` of a base URL: no user, password, query or fragment."""
    parts = urlsplit(url.strip())
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme.lower(), netloc.lower(), parts.path.rstrip("/"), "", ""))
