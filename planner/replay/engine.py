"""Runs the sample through one candidate behind :class:`ReplayBackend`, with a cache that makes
runs resumable and nightly runs incremental.

A replay is keyed by the candidate's fingerprint, a hash of the request's messages and the
generation parameters (:func:`cache_key`, stored as ``replays.replay_id``); the same key without
the fingerprint is the request's :func:`content_key`, which maps one replay to every sampled
request that asked the same. Before sending, the
engine asks ``already_done(keys)`` which keys hold a final answer and skips them; results are
handed to ``store(batch)`` as they arrive — on a writer thread of their own, so a slow disk never
stalls the requests in flight, in small batches of whatever queued up during the previous write —
so a run killed midway resumes where it stopped and pays again only for what was in flight (or
answered within the last write, milliseconds) at the kill. Results of transient kinds
(:data:`RETRY_NEXT_RUN_KINDS`) are stored for the report but replayed by the next run;
successes and deterministic failures stay cached until ``refresh``. Requests the budget cap
kept from being sent are not stored at all: they are counted as skipped.

The engine knows nothing of the warehouse: ``flows`` passes ``store`` and ``already_done``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from planner.errors import AuthError, BackendError, BudgetExceeded, CircuitOpenError
from planner.replay.protocol import ReplayBackend, ReplayRequest, ReplayResult
from planner.stats import percentile

# Failed replays of these kinds are tried again by the next run (the world may have changed);
# every other outcome is final for its cache key until --refresh.
RETRY_NEXT_RUN_KINDS = frozenset(
    {
        "timeout",
        "rate_limited",
        "server_error",
        "connection",
        "budget",
        "circuit_open",
        "auth",
        "memory",  # free memory differs from run to run
    }
)
NOT_STORED_KINDS = frozenset({"budget"})  # never sent: counted as "skipped: budget"

StoreFn = Callable[[Sequence["KeyedResult"]], None]
AlreadyDoneFn = Callable[[Sequence[str]], set[str]]
ReportFn = Callable[[str], None]

_log = logging.getLogger("planner.replay")


@dataclass(frozen=True)
class KeyedResult:
    """A result with its cache key (the ``replay_id``), the candidate's fingerprint and the
    request's content key."""

    result: ReplayResult
    key: str
    fingerprint: str
    content: str | None = None


_END = object()


class _Writer:
    """Calls ``store`` on its own thread with whatever results queued up meanwhile."""

    def __init__(self, store: StoreFn, max_batch: int = 256) -> None:
        self._store = store
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="replay-writer", daemon=True)
        self._thread.start()

    def put(self, item: KeyedResult) -> None:
        self._queue.put(item)

    def _run(self) -> None:
        ended = False
        while not ended:
            batch: list[KeyedResult] = []
            item = self._queue.get()
            while True:
                if item is _END:
                    ended = True
                    break
                assert isinstance(item, KeyedResult)
                batch.append(item)
                if len(batch) >= self._max_batch:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch and self.error is None:
                try:
                    self._store(batch)
                except BaseException as exc:
                    self.error = exc

    def close(self) -> None:
        """Wait until everything queued is stored; re-raise a storage failure."""
        self._queue.put(_END)
        self._thread.join()
        if self.error is not None:
            raise self.error


def request_hash(request: ReplayRequest) -> str:
    """What was asked: the messages and the other request fields, canonical JSON, hashed."""
    canonical = json.dumps(
        {"messages": request.messages, "params": request.params},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _asked(request: ReplayRequest) -> tuple[str, str, str]:
    return request_hash(request), str(request.max_tokens), repr(float(request.temperature))


def cache_key(fingerprint: str, request: ReplayRequest) -> str:
    """The replay's identity: who answers, what was asked, and how (max_tokens, temperature)."""
    ident = "\n".join((fingerprint, *_asked(request)))
    return "rp-" + hashlib.sha256(ident.encode("utf-8")).hexdigest()[:32]


def content_key(request: ReplayRequest) -> str:
    """What was asked and how, whoever answers: two requests with the same content key share
    every candidate's replay (the evidence maps a replay to every sampled request with its
    content key, not only to the one it was sent for)."""
    return "ck-" + hashlib.sha256("\n".join(_asked(request)).encode("utf-8")).hexdigest()[:32]


@dataclass
class CandidateRun:
    """What one candidate did in this run (cached replays are counted, not re-measured)."""

    candidate: str
    fingerprint: str
    planned: int
    cached: int = 0
    sent: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    cost_usd: float = 0.0
    skipped_budget: int = 0
    stopped: str | None = None  # 'auth' | 'circuit_open' | 'budget' | 'backend' | 'interrupted'
    message: str | None = None
    seconds: float = 0.0
    ttft_ms_p50: float | None = None
    ttft_ms_p95: float | None = None
    latency_ms_p50: float | None = None
    latency_ms_p95: float | None = None
    tokens_per_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Progress:
    """One line per interval: done/total, rate, ETA, errors so far."""

    def __init__(self, name: str, total: int, report: ReportFn, every_s: float) -> None:
        self.name = name
        self.total = total
        self.report = report
        self.every_s = every_s
        self.started = time.monotonic()
        self.last = self.started
        self.done = 0
        self.errors = 0

    def tick(self, failed: bool) -> None:
        self.done += 1
        self.errors += failed
        now = time.monotonic()
        if now - self.last >= self.every_s and self.done < self.total:
            self.last = now
            self.report(self.line(now))

    def line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        left = self.total - self.done
        eta = f"{left / rate:.0f}s" if rate > 0 else "?"
        pct = 100 * self.done / self.total if self.total else 100.0
        return (
            f"replay {self.name}: {self.done}/{self.total} ({pct:.0f}%) {rate:.1f} req/s "
            f"ETA {eta} errors {self.errors}"
        )


def _to_stderr_and_log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
    _log.info(line)


def _dedupe(
    requests: Iterable[ReplayRequest], fingerprint: str
) -> tuple[list[ReplayRequest], dict[str, str], dict[str, str]]:
    """Requests with a distinct cache key (first wins), request_id -> key, request_id -> content
    key."""
    keyed: dict[str, ReplayRequest] = {}
    for request in requests:
        keyed.setdefault(cache_key(fingerprint, request), request)
    key_of = {r.request_id: k for k, r in keyed.items()}
    return list(keyed.values()), key_of, {r.request_id: content_key(r) for r in keyed.values()}


def replay_candidate(
    backend: ReplayBackend,
    requests: Sequence[ReplayRequest],
    *,
    store: StoreFn,
    already_done: AlreadyDoneFn,
    refresh: bool = False,
    should_stop: Callable[[], bool] = lambda: False,
    report: ReportFn = _to_stderr_and_log,
    progress_every_s: float = 5.0,
) -> CandidateRun:
    """Replay what is not cached yet through ``backend``, storing results as they arrive.

    A backend that stops (bad key, circuit open, budget) ends this candidate cleanly: what was
    done is stored and the reason is in ``CandidateRun.stopped``/``message``.
    """
    fingerprint = backend.fingerprint()
    unique, key_of, content_of = _dedupe(requests, fingerprint)
    run = CandidateRun(backend.name, fingerprint, planned=len(unique))
    done = set() if refresh else already_done(list(key_of.values()))
    todo = [r for r in unique if key_of[r.request_id] not in done]
    run.cached = len(unique) - len(todo)
    started = time.monotonic()
    progress = _Progress(backend.name, len(todo), report, progress_every_s)
    ttfts: list[float] = []
    latencies: list[float] = []
    rates: list[float] = []
    kinds: Counter[str] = Counter()

    writer = _Writer(store)

    def on_result(result: ReplayResult) -> None:
        if result.error_kind in NOT_STORED_KINDS:
            run.skipped_budget += 1
            return
        key = key_of.get(result.request_id)
        if key is None:
            raise BackendError(backend.name, f"answered unknown request {result.request_id!r}")
        writer.put(KeyedResult(result, key, fingerprint, content_of[result.request_id]))
        if result.attempts > 0:
            run.sent += 1
        run.retries += max(result.attempts - 1, 0)
        run.cost_usd += result.cost_usd
        if result.ok:
            run.ok += 1
            if result.ttft_ms is not None:
                ttfts.append(result.ttft_ms)
            if result.latency_ms is not None:
                latencies.append(result.latency_ms)
            if result.tokens_per_s is not None:
                rates.append(result.tokens_per_s)
        else:
            kinds[str(result.error_kind)] += 1
        progress.tick(not result.ok)

    report(f"replay {backend.name}: {len(todo)} to send, {run.cached} cached")
    try:
        if todo:
            backend.replay(todo, on_result, lambda: writer.error is not None or should_stop())
    except AuthError as exc:
        run.stopped, run.message = "auth", str(exc)
    except CircuitOpenError as exc:
        run.stopped, run.message = "circuit_open", str(exc)
    except BudgetExceeded as exc:
        run.stopped, run.message = "budget", str(exc)
    except BackendError as exc:
        run.stopped, run.message = "backend", str(exc)
    finally:
        writer.close()  # everything answered is stored before anything else happens
    if run.stopped is None and should_stop() and progress.done < len(todo):
        run.stopped, run.message = "interrupted", "stopped on request; the rest resumes next run"
    run.seconds = time.monotonic() - started
    run.errors = dict(sorted(kinds.items()))
    run.ttft_ms_p50, run.ttft_ms_p95 = percentile(ttfts, 50), percentile(ttfts, 95)
    run.latency_ms_p50, run.latency_ms_p95 = percentile(latencies, 50), percentile(latencies, 95)
    run.tokens_per_s = statistics.median(rates) if rates else None
    summary = progress.line(time.monotonic())
    if run.stopped:
        summary += f" — stopped ({run.stopped}): {run.message}"
    report(summary)
    return run
