"""Replay shards: a local candidate's uncached requests cut into pieces that can run anywhere.

A shard is plain data (the model folder's path, the requests as dicts, the fingerprint the run
planned with) and :func:`replay_shard` *returns* the replay rows instead of writing them: on a
remote worker the warehouse is another machine's file (and DuckDB admits one writer process), so
the caller stores each shard's rows as it completes. A run killed midway loses at most the shards
in flight.

A process keeps the last model it loaded (:func:`backend_for`), so a candidate's shards pay the
cold start once per worker, and replays one shard at a time, so no two models share its CPU while
they are being timed. Where shards run (here, or on a Dask cluster) is the caller's business.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from planner.errors import BackendError, ConfigError
from planner.models.folder import fingerprint as folder_fingerprint
from planner.replay.engine import cache_key, replay_candidate
from planner.replay.protocol import ReplayBackend, ReplayRequest, ReplayResult
from planner.stats import percentile

# Set by request_stop() (the CLI's first Ctrl-C). Shards in this process see it and stop after
# the requests in flight; shards on remote workers finish, and no new shard is dispatched.
# (A flow's function is pickled by value to Dask workers: it must reach the event through these
# functions, never name it, as a lock cannot be pickled.)
stop_event = threading.Event()


def stop_requested() -> bool:
    return stop_event.is_set()


def request_stop() -> None:
    """Ask the running replay to stop cleanly; the next run resumes where it stopped."""
    stop_event.set()


def clear_stop() -> None:
    stop_event.clear()


@dataclass(frozen=True)
class LocalModelSpec:
    """What a worker needs to load a local candidate: no settings file, no secrets."""

    name: str
    path: str
    threads: int | None
    max_new_tokens: int
    batch_size: int = 1


@dataclass(frozen=True)
class Shard:
    """A slice of one candidate's uncached requests (``requests`` as plain dicts)."""

    candidate: str
    index: int
    requests: list[dict[str, Any]]


def replay_row(
    result: ReplayResult, key: str, fingerprint: str, content: str | None = None
) -> dict[str, Any]:
    """A ``replays`` row from a result (the key is the replay_id; ``content`` its content key)."""
    return {
        "replay_id": key,
        "request_id": result.request_id,
        "candidate": result.candidate,
        "candidate_fingerprint": fingerprint,
        "content_key": content,
        "served_model": result.served_model,
        "system_fingerprint": result.system_fingerprint,
        "output_text": result.output_text,
        "ttft_ms": result.ttft_ms,
        "latency_ms": result.latency_ms,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "tokens_estimated": result.tokens_estimated,
        "tokens_per_s": result.tokens_per_s,
        "peak_rss_mb": result.peak_rss_mb,
        "cost_usd": result.cost_usd,
        "error_kind": result.error_kind,
        "error_message": result.error_message,
        "attempts": result.attempts,
    }


def pending_requests(
    fingerprint: str,
    requests: Sequence[ReplayRequest],
    already_done: Callable[[Sequence[str]], set[str]],
    refresh: bool,
) -> tuple[list[ReplayRequest], int]:
    """The requests still to replay (one per cache key) and how many are cached already."""
    keyed: dict[str, ReplayRequest] = {}
    for request in requests:
        keyed.setdefault(cache_key(fingerprint, request), request)
    done = set() if refresh else already_done(list(keyed))
    todo = [r for k, r in keyed.items() if k not in done]
    return todo, len(keyed) - len(todo)


def split(candidate: str, requests: Sequence[ReplayRequest], size: int) -> list[Shard]:
    """Consecutive slices of at most ``size`` requests."""
    if size < 1:
        raise ConfigError("[run] shard_size", f"must be at least 1, got {size}")
    return [
        Shard(candidate, i // size, [asdict(r) for r in requests[i : i + size]])
        for i in range(0, len(requests), size)
    ]


# -- the worker side ----------------------------------------------------------------------

_loaded: dict[LocalModelSpec, ReplayBackend] = {}
_loaded_lock = threading.Lock()
_replaying = threading.Lock()  # one shard at a time per process: latencies on an unshared CPU


def current_fingerprint(spec: LocalModelSpec) -> str:
    """What the folder holds now (every byte; cheap when nothing changed since it was hashed)."""
    return "local-" + folder_fingerprint(spec.path)


def backend_for(spec: LocalModelSpec) -> ReplayBackend:
    """This process's backend for ``spec``; the model loaded before (another spec, or the same
    folder before its content changed) is released."""
    from planner.replay.local import LocalBackend  # onnxruntime-genai: imported where used

    now = current_fingerprint(spec)
    with _loaded_lock:
        backend = _loaded.get(spec)
        if backend is not None and backend.fingerprint() != now:
            backend = None  # the weights changed under the loaded model: load them again
        if backend is None:
            release_models()
            backend = LocalBackend(
                spec.name,
                Path(spec.path),
                max_new_tokens=spec.max_new_tokens,
                threads=spec.threads,
                batch_size=spec.batch_size,
            )
            _loaded[spec] = backend
        return backend


def release_models() -> None:
    """Unload the models this process keeps between shards."""
    for backend in _loaded.values():
        backend.close()
    _loaded.clear()


def fingerprint_of(spec: dict[str, Any]) -> str:
    """The fingerprint of the model folder as a worker sees it (every byte of it)."""
    return backend_for(LocalModelSpec(**spec)).fingerprint()


def replay_shard(
    spec: dict[str, Any],
    fingerprint: str,
    requests: list[dict[str, Any]],
    report: Callable[[str], None],
) -> dict[str, Any]:
    """One shard through this process's model: ``{"run": figures, "rows": replays rows}``.

    A worker whose folder is not the one the run planned with refuses: its content (every byte,
    not only names and sizes) must have the fingerprint the run planned with."""
    model = LocalModelSpec(**spec)
    rows: list[dict[str, Any]] = []
    with _replaying:
        backend = backend_for(model)
        found = backend.fingerprint()
        if found != fingerprint:
            raise BackendError(
                model.name,
                f"the model folder {model.path} on {socket.gethostname()} is not the one the "
                f"run planned with ({found} != {fingerprint}); every worker needs the same folder",
            )
        run = replay_candidate(
            backend,
            [ReplayRequest(**r) for r in requests],
            store=lambda batch: rows.extend(
                replay_row(k.result, k.key, k.fingerprint, k.content) for k in batch
            ),
            already_done=lambda keys: set(),  # the flow sent only what is not done
            should_stop=stop_requested,
            report=report,
        )
    # what batching was asked and what ran (a local backend that batches says why not)
    return {"run": {**run.to_dict(), "batching": getattr(backend, "batching", None)}, "rows": rows}


# -- a candidate's outcome over its shards --------------------------------------------------


def merge_runs(
    candidate: str,
    fingerprint: str,
    planned: int,
    cached: int,
    runs: Iterable[dict[str, Any]],
    rows: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    """One candidate's figures for this run from its shards' runs and the rows they returned."""
    merged: dict[str, Any] = {
        "candidate": candidate,
        "fingerprint": fingerprint,
        "planned": planned,
        "cached": cached,
        "sent": 0,
        "ok": 0,
        "errors": {},
        "retries": 0,
        "cost_usd": 0.0,
        "skipped_budget": 0,
        "stopped": None,
        "message": None,
        "seconds": 0.0,
        "batching": None,
    }
    errors: dict[str, int] = {}
    for run in runs:
        batching = run.get("batching")
        if batching and (merged["batching"] is None or batching["used"] < batching["requested"]):
            merged["batching"] = batching  # one line per candidate: the shard that fell back
        for field in ("sent", "ok", "retries", "cost_usd", "skipped_budget", "seconds"):
            merged[field] += run[field]
        for kind, n in run["errors"].items():
            errors[kind] = errors.get(kind, 0) + n
        if run["stopped"] and merged["stopped"] is None:
            merged["stopped"], merged["message"] = run["stopped"], run["message"]
    merged["errors"] = dict(sorted(errors.items()))
    good = [r for r in rows if r["error_kind"] is None]
    ttfts = [r["ttft_ms"] for r in good if r["ttft_ms"] is not None]
    latencies = [r["latency_ms"] for r in good if r["latency_ms"] is not None]
    rates = [r["tokens_per_s"] for r in good if r["tokens_per_s"] is not None]
    merged["ttft_ms_p50"], merged["ttft_ms_p95"] = percentile(ttfts, 50), percentile(ttfts, 95)
    merged["latency_ms_p50"] = percentile(latencies, 50)
    merged["latency_ms_p95"] = percentile(latencies, 95)
    merged["tokens_per_s"] = percentile(rates, 50)
    return merged
