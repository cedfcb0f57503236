"""One chat completion at a time through a relay backend, for the services that ask a model
something of their own: the LLM judge and the classifier's annotator.

They go through :class:`planner.replay.relay.RelayBackend` like every replay, so the candidate's
rate limits, retries with backoff, auth rules, circuit breaker and the run's cost budget hold
for them too: there is one OpenAI-compatible client in the project.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from planner.errors import CompletionError
from planner.replay.protocol import ReplayRequest, ReplayResult
from planner.replay.relay import RelayBackend

Complete = Callable[[list[dict[str, Any]]], str]


def completion_function(backend: RelayBackend, *, max_tokens: int, purpose: str) -> Complete:
    """A ``messages -> text`` function over ``backend`` (temperature 0).

    An auth failure raises :class:`planner.errors.AuthError` (nothing more can be asked); any
    other failed call raises :class:`CompletionError`, which the caller counts as one lost
    answer. ``purpose`` names the calls in the backend's logs ("judge", "annotator").
    """

    def complete(messages: list[dict[str, Any]]) -> str:
        results: list[ReplayResult] = []
        backend.replay(
            [ReplayRequest(purpose, messages, max_tokens=max_tokens, temperature=0.0)],
            results.append,
        )
        if not results:
            raise CompletionError(backend.name, "not_sent", f"{purpose} request not sent")
        result = results[0]
        if result.error_kind is not None:
            raise CompletionError(backend.name, result.error_kind, result.error_message or "")
        return result.output_text or ""

    return complete
