"""What keeps the model server safe to expose: whether a host is loopback-only, a cap on the
request body read without holding more than the cap, and a cap on requests in flight (429 with
``Retry-After`` when full). :mod:`planner.models.server` wires them into its app.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the CLI reads the defaults without loading FastAPI
    from fastapi import Request

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_MAX_BODY_BYTES = 1024 * 1024  # a chat request of ~250k tokens of text
DEFAULT_MAX_INFLIGHT = 64
BUSY_RETRY_AFTER_S = 1


def is_loopback(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ::1 (bracketed or not, IPv4-mapped too): an
    address only this machine can reach. Any other name or address (0.0.0.0, ::, a hostname)
    may be reachable from the network."""
    name = host.strip().removeprefix("[").removesuffix("]").lower()
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


class BodyTooLarge(Exception):
    pass


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (``BodyTooLarge``) past ``limit`` bytes without holding more:
    a larger declared length unread, a chunked body as soon as it goes past."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


class InflightLimit:
    """ASGI wrapper: at most ``limit`` HTTP requests in the app at once (a streamed answer
    counts until its last byte); one more is answered 429 with ``Retry-After`` at once. The
    count lives on the event loop's thread: no lock needed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.inflight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.inflight >= self.limit:
            await send_busy(send, self.limit)
            return
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1


async def send_busy(send: Send, limit: int) -> None:
    body = json.dumps(
        {
            "error": {
                "message": f"Too many requests in flight (at most {limit}); retry after "
                f"{BUSY_RETRY_AFTER_S} s",
                "type": "rate_limit_error",
                "param": None,
                "code": "server_busy",
            }
        }
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(BUSY_RETRY_AFTER_S).encode()),
        (b"retry-after-ms", str(BUSY_RETRY_AFTER_S * 1000).encode()),
    ]
    await send({"type": "http.response.start", "status": 429, "headers": headers})
    await send({"type": "http.response.body", "body": body})
