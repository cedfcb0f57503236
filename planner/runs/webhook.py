"""Posts a run's "attention needed" message to a chat webhook (Slack, Teams, Mattermost, ...).

A webhook URL is a secret: whoever has it can post to the channel. It lives in an environment
variable only, and no message, result or log line this module produces carries more of it than
``scheme://host[:port]`` (httpx's own INFO line "HTTP Request: POST <url>" is redacted too).
Delivery is best effort: an alert that cannot be sent must not fail the run that raised it, so
every failure comes back as a :class:`WebhookResult` with ``ok=False`` and a reason.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from planner.replay.wire import parse_retry_after

_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class WebhookResult:
    """What became of one post: delivered or not, after how many attempts, and why not."""

    ok: bool
    target: str  # scheme://host[:port] only: the path and query are the secret
    attempts: int
    status_code: int | None = None
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "target": self.target,
            "attempts": self.attempts,
            "status_code": self.status_code,
            "reason": self.reason,
        }


def webhook_url_from_env(name: str) -> str | None:
    """The webhook URL held by the environment variable ``name``; None when unset or blank."""
    value = os.environ.get(name, "").strip()
    return value or None


def public_target(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: the part of a webhook URL safe to show a person."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "(unparseable URL)"
    if not parts.scheme or not host:
        return "(not a URL)"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


class _RedactSecretUrls(logging.Filter):
    """Rewrites httpx's request log line so a registered webhook URL shows as its target only."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._secrets: dict[str, int] = {}

    @contextmanager
    def hiding(self, url: str) -> Iterator[None]:
        forms = {url, str(httpx.URL(url))}  # httpx logs its normalized form of the URL
        with self._lock:
            for form in forms:
                self._secrets[form] = self._secrets.get(form, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                for form in forms:
                    self._secrets[form] -= 1
                    if not self._secrets[form]:
                        del self._secrets[form]

    def scrub(self, text: str) -> str:
        with self._lock:
            secrets = list(self._secrets)
        for url in sorted(secrets, key=len, reverse=True):
            if url in text:
                text = text.replace(url, public_target(url) + "/[redacted]")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self._secrets:
            if isinstance(record.args, tuple):
                record.args = tuple(
                    self.scrub(str(a)) if isinstance(a, (str, httpx.URL)) else a
                    for a in record.args
                )
            record.msg = self.scrub(str(record.msg))
        return True


_REDACTOR = _RedactSecretUrls()
logging.getLogger("httpx").addFilter(_REDACTOR)


def _describe(exc: Exception, url: str) -> str:
    """A transport error as text, with anything of the URL beyond scheme://host removed."""
    text = _REDACTOR.scrub(str(exc)) if str(exc) else ""
    parts = urlsplit(url)
    for secret in (url, parts.path if len(parts.path) > 1 else "", parts.query, parts.fragment):
        if secret:
            text = text.replace(secret, "[redacted]")
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def post_webhook(
    url: str,
    payload: Mapping[str, Any],
    *,
    timeout_s: float = 10.0,
    attempts: int = 3,
    client: httpx.Client | None = None,
    backoff_s: float = 0.5,
    max_wait_s: float = 10.0,
) -> WebhookResult:
    """POST ``payload`` as JSON to ``url``; retry connection errors, timeouts, 429 and 5xx.

    ``payload`` must carry a ``text`` string (what Slack, Teams and Mattermost incoming webhooks
    display); other keys travel as structured fields. Waits ``backoff_s * 2**n`` between
    attempts, or the server's Retry-After, never longer than ``max_wait_s``. Never raises for a
    failed delivery: the result says what happened, naming only ``scheme://host``.
    """
    if not isinstance(payload.get("text"), str) or not payload["text"]:
        raise ValueError("webhook payload needs a non-empty 'text' string (chat tools show it)")
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    target = public_target(url)
    parts = urlsplit(url)
    try:
        httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        parts = urlsplit("")
    if parts.scheme not in ("http", "https") or target.startswith("("):
        return WebhookResult(False, target, 0, reason="webhook URL is not a valid http(s) URL")
    own_client = client is None
    http = client if client is not None else httpx.Client(timeout=timeout_s)
    status: int | None = None
    reason = ""
    tried = 0
    try:
        with _REDACTOR.hiding(url):
            for tried in range(1, attempts + 1):
                wait = min(backoff_s * 2 ** (tried - 1), max_wait_s)
                try:
                    response = http.post(url, json=dict(payload), timeout=timeout_s)
                except httpx.TransportError as exc:
                    status, reason = None, f"{_describe(exc, url)} (posting to {target})"
                else:
                    status = response.status_code
                    if response.is_success:
                        return WebhookResult(True, target, tried, status)
                    reason = f"HTTP {status} from {target}"
                    if status not in _RETRY_STATUS:
                        break
                    after = parse_retry_after(response.headers)
                    if after is not None:
                        wait = min(after, max_wait_s)
                if tried < attempts:
                    time.sleep(wait)
    finally:
        if own_client:
            http.close()
    return WebhookResult(False, target, tried, status, f"{reason} after {tried} attempt(s)")
