"""The one small interface every replay backend speaks (local onnxruntime-genai, relay httpx).

The replay engine hands a backend a batch of :class:`ReplayRequest` and receives one
:class:`ReplayResult` per request through ``on_result`` as each finishes, so it can persist
results as they arrive (resume after a kill) and show progress. A failed sample is a result with
``error_kind`` set; an exception out of ``replay`` means the whole backend cannot go on
(:class:`planner.errors.BackendError`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

# error_kind values shared by all backends (the report groups by them)
ERROR_KINDS = (
    "context_overflow",  # prompt longer than the model's context window
    "empty_output",  # the model produced no text
    "runtime",  # the local runtime raised
    "memory",  # the local model's KV cache and buffers for this request do not fit in memory
    "timeout",  # no (complete) answer within the read timeout
    "rate_limited",  # 429 after every retry
    "server_error",  # 5xx after every retry
    "connection",  # connection refused / dropped after every retry
    "client_error",  # 400/404/422: the request itself is wrong; never retried
    "auth",  # 401/403: stops the candidate
    "protocol",  # malformed SSE or JSON from the server
    "budget",  # not sent: the run's cost cap was reached
    "circuit_open",  # not sent: the candidate's circuit breaker is open
)


@dataclass(frozen=True)
class ReplayRequest:
    """One logged request to re-run. ``messages`` are OpenAI chat messages as logged."""

    request_id: str
    messages: list[dict[str, Any]]
    max_tokens: int = 256
    temperature: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReplayResult:
    """What happened when one request went through one candidate."""

    request_id: str
    candidate: str
    output_text: str | None = None
    ttft_ms: float | None = None
    latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    tokens_estimated: bool = False
    tokens_per_s: float | None = None
    peak_rss_mb: float | None = None
    cost_usd: float = 0.0
    error_kind: str | None = None
    error_message: str | None = None
    attempts: int = 1
    served_model: str | None = None  # relay: the response's ``model`` (an alias resolved)
    system_fingerprint: str | None = None  # relay: the response's ``system_fingerprint``

    @property
    def ok(self) -> bool:
        return self.error_kind is None


class ReplayBackend(Protocol):
    """A candidate that can answer chat requests."""

    name: str

    def fingerprint(self) -> str:
        """Identifies what answers: a model folder's content hash, or relay base URL + model."""
        ...

    def replay(
        self,
        requests: Sequence[ReplayRequest],
        on_result: Callable[[ReplayResult], None],
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        """Run every request, calling ``on_result`` once per request as it finishes.

        Stops early (without calling ``on_result`` for the rest) when ``should_stop()`` is true.
        """
        ...

    def close(self) -> None:
        """Release the model or the HTTP client."""
        ...
