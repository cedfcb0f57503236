"""The relay backend: any OpenAI-compatible ``/v1/chat/completions`` endpoint, over httpx.

Streaming (server-sent events) measures time to first token and asks for exact token counts with
``stream_options.include_usage``; a server that sends no usage gets counts estimated from the
text (about four characters a token) and the result says so (``tokens_estimated``).

What the world does to a relay, and what this client does about it:

- 429, 5xx, timeouts and dropped connections are retried with exponential backoff and jitter,
  honouring ``Retry-After`` (or ``retry-after-ms``); every attempt passes the rate limiter, so a
  retry spends rpm/tpm budget like any request and the limits hold under retries.
- 400/404/422 are the request's fault: recorded (``client_error``/``context_overflow``), never
  retried. 401/403 stop the candidate at once (:class:`AuthError` naming the key's variable).
- Malformed SSE or JSON is recorded on that sample as ``protocol``.
- The response's ``model`` and ``system_fingerprint`` are kept on each result: a provider that
  moves an alias (``gpt-4o-mini``, ``deepseek-chat``) to another model shows there.
- After ``breaker_threshold`` consecutive failed samples the candidate stops; the rest are
  reported ``circuit_open`` without being sent (:class:`CircuitOpenError`).
- A shared :class:`CostBudget` is asked before each send for the worst case (prompt estimate +
  ``max_tokens``); when it says no, the rest are reported ``budget`` unsent
  (:class:`BudgetExceeded`) after the requests in flight finish.

The API key is a ``SecretStr`` unwrapped only where the ``Authorization`` header is built.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr

from planner.errors import AuthError, BudgetExceeded, CircuitOpenError, ConfigError
from planner.messages import estimate_tokens, message_text
from planner.models.guards import is_loopback
from planner.replay.privacy import Redactor
from planner.replay.protocol import ReplayRequest, ReplayResult
from planner.replay.ratelimit import CircuitBreaker, CostBudget, SlidingWindowLimiter
from planner.replay.wire import (
    Answer,
    StreamState,
    WireFailure,
    endpoint_url,
    failure_for_exception,
    failure_for_status,
    parse_completion,
    served_identity,
    take_event,
    usage_counts,
)

# error kinds retried within a run (after backoff) and counted by the circuit breaker
RETRIED_KINDS = frozenset({"rate_limited", "server_error", "timeout", "connection"})
BREAKER_KINDS = RETRIED_KINDS | {"protocol"}
# logged request fields that change the answer and are sent again as logged; others ("user",
# "metadata", "store", "stream", "n", ...) are the client's business and are not replayed
REPLAYED_PARAMS = frozenset(
    {"top_p", "stop", "seed", "response_format", "tools", "tool_choice", "parallel_tool_calls",
     "presence_penalty", "frequency_penalty", "logit_bias", "reasoning_effort"}
)  # fmt: skip
_MESSAGE_OVERHEAD_TOKENS = 4
_MAX_PROMPT_RATIO = 8.0


def estimate_prompt_tokens(request: ReplayRequest) -> int:
    """Prompt tokens as a relay would count them, estimated (text + a few per message)."""
    total = sum(
        estimate_tokens(message_text(m.get("content"))) + _MESSAGE_OVERHEAD_TOKENS
        for m in request.messages
    )
    extra = {k: v for k, v in request.params.items() if k in REPLAYED_PARAMS}
    if extra:
        total += estimate_tokens(json.dumps(extra, default=str))
    return total


def cost_usd(
    prompt_tokens: int, completion_tokens: int, price_in: float, price_out: float
) -> float:
    """USD for one call at prices given per million tokens."""
    return (prompt_tokens * price_in + completion_tokens * price_out) / 1_000_000


def run_coroutine(factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a coroutine to the end from sync code, even when this thread already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(factory())
        return
    failure: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(factory())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=target, name="relay-replay")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


class RelayBackend:
    """One relay candidate: an OpenAI-compatible endpoint with its prices and limits.

    ``prices`` are USD per million input/output tokens. ``rate_window_s`` is the rpm/tpm window
    (60 s; benches may shrink it). ``transport`` replaces the network (tests of byte-level edge
    cases only).
    """

    def __init__(
        self,
        name: str,
        base_url: str,
        model: str,
        api_key: SecretStr | None = None,
        *,
        api_key_env: str | None = None,
        price_in: float = 0.0,
        price_out: float = 0.0,
        rpm: int | None = None,
        tpm: int | None = None,
        max_concurrency: int = 8,
        timeout_s: float = 60.0,
        connect_timeout_s: float = 10.0,
        max_retries: int = 4,
        stream: bool = True,
        breaker_threshold: int = 5,
        budget: CostBudget | None = None,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        max_retry_after_s: float = 120.0,
        rate_window_s: float = 60.0,
        jitter_seed: int | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        if max_concurrency <= 0:
            raise ValueError(f"candidate {name!r}: max_concurrency must be positive")
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._api_key = api_key
        self.api_key_env = api_key_env
        self.price_in = price_in
        self.price_out = price_out
        self.max_concurrency = max_concurrency
        self.timeout = httpx.Timeout(timeout_s, connect=min(connect_timeout_s, timeout_s))
        self.max_retries = max_retries
        self.stream = stream
        self.breaker = CircuitBreaker(breaker_threshold)
        self.budget = budget if budget is not None else CostBudget(None)
        self.limiter = SlidingWindowLimiter(rpm, tpm, window_s=rate_window_s)
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.max_retry_after_s = max_retry_after_s
        self._rng = random.Random(jitter_seed)
        self._transport = transport
        self._ssl: ssl.SSLContext | None = None
        self._prompt_ratio = 1.0  # real prompt tokens / estimate, the worst seen (>= 1)
        self.redactor = redactor  # set: production text goes out redacted (planner.replay.privacy)
        if api_key is not None and urlsplit(self.base_url).scheme == "http":
            host = urlsplit(self.base_url).hostname or ""
            if not is_loopback(host):
                raise ConfigError(
                    f"candidate {name!r}",
                    f"refusing to send an API key over plain http to {host}; use https",
                )

    def __repr__(self) -> str:
        return f"RelayBackend(name={self.name!r}, base_url={self.base_url!r}, model={self.model!r})"

    def fingerprint(self) -> str:
        """Identifies what answers: the endpoint (credentials stripped) and the model name."""
        ident = f"{endpoint_url(self.base_url)}\n{self.model}"
        return "relay-" + hashlib.sha256(ident.encode("utf-8")).hexdigest()[:16]

    def close(self) -> None:
        """Nothing held between runs: each ``replay`` opens and closes its own HTTP client."""

    # -- the ReplayBackend protocol -------------------------------------------------------------

    def replay(
        self,
        requests: Sequence[ReplayRequest],
        on_result: Callable[[ReplayResult], None],
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        """Send every request (``max_concurrency`` at a time), reporting each as it finishes."""
        run_coroutine(lambda: self.replay_async(requests, on_result, should_stop))

    async def replay_async(
        self,
        requests: Sequence[ReplayRequest],
        on_result: Callable[[ReplayResult], None],
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        """The async core of :meth:`replay`, for callers that already run an event loop.

        Each call starts with a closed circuit breaker; the rate limiter's window carries over.
        """
        self.breaker.record(success=True)
        pending = list(range(len(requests)))
        pending.reverse()  # pop() from the end hands them out in order
        started: set[int] = set()
        stop: dict[str, bool] = {"budget": False}

        def stopping() -> bool:
            return stop["budget"] or self.breaker.is_open or should_stop()

        async def worker(client: httpx.AsyncClient) -> None:
            while pending and not stopping():
                index = pending.pop()
                request = requests[index]
                worst = self._worst_case_usd(request)
                if not self.budget.reserve(worst):
                    pending.append(index)
                    stop["budget"] = True
                    return
                started.add(index)
                result: ReplayResult | None = None
                try:
                    result = await self._replay_one(client, request)
                finally:
                    self.budget.settle(worst, result.cost_usd if result is not None else 0.0)
                if result.error_kind in BREAKER_KINDS:
                    self.breaker.record(success=False)
                elif result.ok:
                    self.breaker.record(success=True)
                on_result(result)

        # One client (one kept-alive connection) per worker: a worker sends one request at a
        # time, and a shared pool of N connections costs O(N) bookkeeping on every request.
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        workers = min(self.max_concurrency, len(requests))
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()  # loading CA certificates is slow: once
        clients = [
            httpx.AsyncClient(
                timeout=self.timeout, limits=limits, transport=self._transport, verify=self._ssl
            )
            for _ in range(workers)
        ]
        try:
            async with asyncio.TaskGroup() as group:
                for client in clients:
                    group.create_task(worker(client))
        except BaseExceptionGroup as group_error:
            auth = group_error.subgroup(AuthError)
            if auth is not None:
                raise auth.exceptions[0] from None
            raise group_error.exceptions[0] from None
        finally:
            for client in clients:
                await client.aclose()

        unsent = [requests[i] for i in sorted(pending) if i not in started]
        if self.breaker.is_open and unsent:
            for request in unsent:
                on_result(self._not_sent(request, "circuit_open", "circuit breaker open"))
            raise CircuitOpenError(
                self.name,
                f"stopped after {self.breaker.consecutive} consecutive failed requests; "
                f"{len(unsent)} not sent",
            )
        if stop["budget"] and unsent:
            for request in unsent:
                on_result(self._not_sent(request, "budget", "run cost cap reached"))
            cap = self.budget.max_cost_usd
            raise BudgetExceeded(
                self.name,
                f"the run's cost cap of ${cap:.4f} would be exceeded; {len(unsent)} not sent",
            )

    # -- one request ----------------------------------------------------------------------------

    def _prompt_tokens_bound(self, request: ReplayRequest) -> int:
        """The prompt's tokens, estimated and scaled by the worst under-estimate seen so far
        (text far from English, say, has more tokens per character than the rule of thumb)."""
        return math.ceil(estimate_prompt_tokens(request) * self._prompt_ratio)

    def _worst_case_usd(self, request: ReplayRequest) -> float:
        return cost_usd(
            self._prompt_tokens_bound(request), request.max_tokens, self.price_in, self.price_out
        )

    def _auth_advice(self, status: str) -> str:
        if not self.api_key_env:
            hint = "the candidate names no api_key_env, so no key was sent"
        elif self._api_key is None:
            hint = f"${self.api_key_env} is not set, so no key was sent"
        else:
            hint = f"check the key in ${self.api_key_env}"
        return f"the relay refused the request ({status}); {hint}"

    def _not_sent(self, request: ReplayRequest, kind: str, message: str) -> ReplayResult:
        return ReplayResult(
            request.request_id, self.name, error_kind=kind, error_message=message, attempts=0
        )

    def _backoff(self, attempt: int, retry_after: float | None) -> float | None:
        """Seconds before the next attempt, or None when the server asks for too long a wait."""
        if retry_after is not None:
            if retry_after > self.max_retry_after_s:
                return None
            return retry_after + self._rng.uniform(0.0, min(0.1 * retry_after, 1.0))
        cap = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        return self._rng.uniform(cap / 2, cap)

    async def _replay_one(self, client: httpx.AsyncClient, request: ReplayRequest) -> ReplayResult:
        """One request to its answer or final failure. Its latency is end to end: failed
        attempts and the waits between retries count (waits on this client's own rate limiter
        do not: they are the replay's pacing, not the endpoint's)."""
        redaction = None
        if self.redactor is not None:  # what leaves the machine is redacted; the answer restored
            messages, redaction = self.redactor.messages(request.messages)
            request = replace(request, messages=messages)
        estimate = self._prompt_tokens_bound(request) + request.max_tokens
        attempt = 0
        lost_ms = 0.0  # failed attempts and backoff before the answering attempt
        while True:
            attempt += 1
            admission = await self.limiter.acquire(estimate)
            tried = time.perf_counter()
            try:
                answer = await self._attempt(client, request)
            except WireFailure as failure:
                if failure.kind in ("rate_limited", "server_error", "client_error", "auth"):
                    self.limiter.settle(admission, 0)  # refused: no tokens were processed
                if failure.kind == "auth":
                    raise AuthError(self.name, self._auth_advice(failure.message)) from None
                delay = None
                if failure.kind in RETRIED_KINDS and attempt <= self.max_retries:
                    delay = self._backoff(attempt, failure.retry_after)
                if delay is None:
                    return ReplayResult(
                        request.request_id,
                        self.name,
                        error_kind=failure.kind,
                        error_message=failure.message,
                        attempts=attempt,
                    )
                await asyncio.sleep(delay)
                lost_ms += (time.perf_counter() - tried) * 1000
                continue
            result = self._result(request, answer, attempt)
            if redaction is not None:
                result.output_text = redaction.restore(result.output_text)
            if lost_ms:
                result.latency_ms = (result.latency_ms or 0.0) + lost_ms
                if result.ttft_ms is not None:
                    result.ttft_ms += lost_ms
            self.limiter.settle(
                admission, (result.prompt_tokens or 0) + (result.completion_tokens or 0)
            )
            return result

    def _result(self, request: ReplayRequest, answer: Answer, attempts: int) -> ReplayResult:
        counts = usage_counts(answer.usage)
        estimated = counts is None
        if counts is None:
            counts = (estimate_prompt_tokens(request), estimate_tokens(answer.text))
        else:
            guess = max(estimate_prompt_tokens(request), 1)
            self._prompt_ratio = min(max(self._prompt_ratio, counts[0] / guess), _MAX_PROMPT_RATIO)
        prompt_tokens, completion_tokens = counts
        generating_ms = answer.latency_ms
        if answer.ttft_ms is not None and answer.latency_ms > answer.ttft_ms:
            generating_ms = answer.latency_ms - answer.ttft_ms
        tokens_per_s = completion_tokens / (generating_ms / 1000) if generating_ms > 0 else None
        result = ReplayResult(
            request.request_id,
            self.name,
            output_text=answer.text,
            ttft_ms=answer.ttft_ms,
            latency_ms=answer.latency_ms,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            tokens_estimated=estimated,
            tokens_per_s=tokens_per_s,
            cost_usd=cost_usd(prompt_tokens, completion_tokens, self.price_in, self.price_out),
            attempts=attempts,
            served_model=answer.model,
            system_fingerprint=answer.system_fingerprint,
        )
        if not answer.text.strip():
            result.error_kind = "empty_output"
            result.error_message = "the relay answered with no text"
        return result

    def _body(self, request: ReplayRequest) -> dict[str, Any]:
        body = {k: v for k, v in request.params.items() if k in REPLAYED_PARAMS}
        body.update(
            model=self.model,
            messages=request.messages,
            max_tokens=request.max_tokens,
            temperature=request.temperature,
        )
        if self.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream" if self.stream else "application/json"}
        if self._api_key is not None:
            headers["Authorization"] = f"Bearer {self._api_key.get_secret_value()}"
        return headers

    async def _attempt(self, client: httpx.AsyncClient, request: ReplayRequest) -> Answer:
        url = f"{self.base_url}/chat/completions"
        started = time.perf_counter()
        try:
            if not self.stream:
                response = await client.post(url, json=self._body(request), headers=self._headers())
                if response.status_code != 200:
                    raise failure_for_status(response)
                return self._whole_answer(response, started)
            async with client.stream(
                "POST", url, json=self._body(request), headers=self._headers()
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise failure_for_status(response)
                if "text/event-stream" not in response.headers.get("content-type", ""):
                    await response.aread()  # a server that ignores "stream": one JSON answer
                    return self._whole_answer(response, started)
                return await self._streamed_answer(response, started)
        except WireFailure:
            raise
        except Exception as exc:
            raise failure_for_exception(exc) from exc

    @staticmethod
    def _whole_answer(response: httpx.Response, started: float) -> Answer:
        latency_ms = (time.perf_counter() - started) * 1000
        try:
            data = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise WireFailure(
                "protocol", f"response body is not JSON: {response.text[:80]!r}"
            ) from exc
        text, usage = parse_completion(data)
        return Answer(text, None, latency_ms, usage, *served_identity(data))

    @staticmethod
    async def _streamed_answer(response: httpx.Response, started: float) -> Answer:
        state = StreamState()
        data_lines: list[str] = []
        ended: float | None = None
        async for line in response.aiter_lines():
            if ended is not None:
                continue  # after [DONE]: read to the end so the connection can be reused
            if line == "":
                if data_lines:
                    take_event("\n".join(data_lines), state, time.perf_counter())
                    data_lines = []
                    if state.done:
                        ended = time.perf_counter()
                continue
            if line.startswith(":"):
                continue  # an SSE comment (keep-alive)
            name, _, value = line.partition(":")
            if name == "data":
                data_lines.append(value.removeprefix(" "))
            elif name not in ("event", "id", "retry"):
                raise WireFailure("protocol", f"malformed SSE line: {line[:80]!r}")
        if data_lines and ended is None:
            take_event("\n".join(data_lines), state, time.perf_counter())
        if not state.done and state.finish_reason is None:
            raise WireFailure(
                "protocol", "the stream ended before [DONE] and without a finish_reason"
            )
        end = ended if ended is not None else time.perf_counter()
        first = state.first_token_at if state.first_token_at is not None else state.first_event_at
        ttft_ms = (first - started) * 1000 if first is not None else None
        return Answer(
            "".join(state.pieces),
            ttft_ms,
            (end - started) * 1000,
            state.usage,
            state.model,
            state.system_fingerprint,
        )
