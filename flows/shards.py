"""Replay shards: a local candidate's uncached requests cut into pieces that can run anywhere.

A shard is plain data (the model folder's path, the requests as dicts, the fingerprint the flow
planned with) and its task *returns* the replay rows instead of writing them: on a Dask worker
the warehouse is another machine's file (and DuckDB admits one writer process), so the flow
stores each shard's rows as it completes. A run killed midway loses at most the shards in flight.

Shards run one at a time in this process (:class:`InlineShards`: latencies are measured on an
unshared CPU), or on a Dask cluster through prefect-dask (:class:`DaskShards`). A worker process
keeps the last model it loaded, so a candidate's shards pay the cold start once per worker, and
runs one shard at a time, so no two models share its CPU while they are being timed.
"""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import Task

from planner.backends import ReplayBackend, ReplayRequest, ReplayResult
from planner.errors import BackendError, ConfigError
from planner.replay_engine import cache_key, percentile, replay_candidate

LOCAL_DASK = "local"  # --dask-address local: a LocalCluster started in this process

# Set by request_stop() (the CLI's first Ctrl-C). Shards in this process see it and stop after
# the requests in flight; shards on Dask workers finish, and no new shard is dispatched.
# (A flow's function is pickled by value to Dask workers: it must reach the event through these
# functions, never name it, as a lock cannot be pickled.)
stop_event = threading.Event()


def stop_requested() -> bool:
    return stop_event.is_set()


def clear_stop() -> None:
    stop_event.clear()


@dataclass(frozen=True)
class LocalModelSpec:
    """What a worker needs to load a local candidate: no settings file, no secrets."""

    name: str
    path: str
    threads: int | None
    max_new_tokens: int


@dataclass(frozen=True)
class Shard:
    """A slice of one candidate's uncached requests (``requests`` as plain dicts)."""

    candidate: str
    index: int
    requests: list[dict[str, Any]]


def replay_row(result: ReplayResult, key: str, fingerprint: str) -> dict[str, Any]:
    """A ``replays`` row from a result (the key is the replay_id)."""
    return {
        "replay_id": key,
        "request_id": result.request_id,
        "candidate": result.candidate,
        "candidate_fingerprint": fingerprint,
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


# -- the worker side ----------------------------------------------------------------------------

_loaded: dict[LocalModelSpec, ReplayBackend] = {}
_loaded_lock = threading.Lock()
_replaying = threading.Lock()  # one shard at a time per process: latencies on an unshared CPU


def _backend_for(spec: LocalModelSpec) -> ReplayBackend:
    """This process's backend for ``spec``; the model loaded before (another spec) is released."""
    from planner.local_backend import LocalBackend

    with _loaded_lock:
        backend = _loaded.get(spec)
        if backend is None:
            release_models()
            backend = LocalBackend(
                spec.name,
                Path(spec.path),
                max_new_tokens=spec.max_new_tokens,
                threads=spec.threads,
            )
            _loaded[spec] = backend
        return backend


def release_models() -> None:
    """Unload the models this process keeps between shards."""
    for backend in _loaded.values():
        backend.close()
    _loaded.clear()


def _fingerprint(spec: dict[str, Any]) -> str:
    return _backend_for(LocalModelSpec(**spec)).fingerprint()


def _replay_shard(spec: dict[str, Any], fingerprint: str, requests: list[dict[str, Any]]) -> dict:
    model = LocalModelSpec(**spec)
    logger = get_run_logger()

    def report(line: str) -> None:
        print(line, file=sys.stderr, flush=True)
        logger.info(line)

    rows: list[dict[str, Any]] = []
    with _replaying:
        backend = _backend_for(model)
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
                replay_row(k.result, k.key, k.fingerprint) for k in batch
            ),
            already_done=lambda keys: set(),  # the flow sent only what is not done
            should_stop=stop_requested,
            report=report,
        )
    return {"run": run.to_dict(), "rows": rows}


fingerprint_task = task(name="fingerprint-local", cache_policy=NO_CACHE)(_fingerprint)
replay_shard_task = task(name="replay-local-shard", cache_policy=NO_CACHE)(_replay_shard)


# -- where shards run ---------------------------------------------------------------------------


class ShardRunner(Protocol):
    """Runs tasks somewhere; ``capacity`` is how many may be in flight at once."""

    capacity: int
    concurrent_with_relays: bool

    def submit(self, fn: Task[..., Any], parameters: dict[str, Any]) -> Any: ...

    def done(self, handles: Sequence[Any]) -> list[Any]:
        """Those of ``handles`` that finished (waits for at least one)."""
        ...

    def outcome(self, handle: Any) -> Any:
        """The task's return value, or the exception it failed with."""
        ...


class InlineShards:
    """In this process, one at a time, run at submission."""

    capacity = 1
    concurrent_with_relays = False

    def submit(self, fn: Task[..., Any], parameters: dict[str, Any]) -> Any:
        return fn(**parameters, return_state=True)

    def done(self, handles: Sequence[Any]) -> list[Any]:
        return list(handles)

    def outcome(self, handle: Any) -> Any:
        return handle.result(raise_on_failure=False)


class DaskShards:
    """On a Dask cluster through prefect-dask's task runner (entered by the caller)."""

    def __init__(self, runner: Any, address: str) -> None:
        self.runner = runner
        self.address = address
        # A LocalCluster shares this machine: one shard at a time, after the relays, as inline.
        remote = address != LOCAL_DASK
        try:
            threads = sum(runner.client.nthreads().values()) if remote else 1
        except (OSError, TimeoutError) as exc:
            raise ConfigError(
                "[run] dask_address", f"cannot reach the Dask scheduler at {address}: {exc}"
            ) from exc
        self.capacity = max(threads, 1)
        self.concurrent_with_relays = remote

    def submit(self, fn: Task[..., Any], parameters: dict[str, Any]) -> Any:
        return self.runner.submit(fn, parameters)

    def done(self, handles: Sequence[Any]) -> list[Any]:
        import distributed

        with self.runner.client.as_current():  # the runner's client is not the default one
            finished, _ = distributed.wait(
                [h.wrapped_future for h in handles], return_when="FIRST_COMPLETED"
            )
        return [h for h in handles if h.wrapped_future in finished]

    def outcome(self, handle: Any) -> Any:
        try:
            return handle.result(raise_on_failure=False)
        except Exception as exc:  # the worker died, or the cluster went away
            return exc


def dask_task_runner(address: str) -> Any:
    """prefect-dask's runner for ``address`` (``"local"``: a one-worker LocalCluster here)."""
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:
        raise ConfigError(
            "[run] dask_address",
            f"running replay shards on Dask ({address}) needs prefect-dask: "
            "pip install prefect-dask",
        ) from exc
    if not address.strip():
        raise ConfigError("[run] dask_address", "is empty; give tcp://host:8786 or 'local'")
    if address == LOCAL_DASK:
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": 1,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": ":0",  # a free port: never clash with another cluster
            }
        )
    return DaskTaskRunner(address=address)


# -- a candidate's outcome over its shards ------------------------------------------------------


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
    }
    errors: dict[str, int] = {}
    for run in runs:
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
