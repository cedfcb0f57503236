"""The replay flow: draw the sample, run it through every candidate, store what happened.

The flow reads the sample once and leaves out what is already replayed (the cache keys of the
engine), so a run killed at any point resumes where it stopped.

Relay candidates run side by side, one task each, in this process: their work is waiting on the
network, and what bounds it (the rate limiter, the circuit breaker, the run's cost budget) is one
object per candidate or per run that must see every request. They store each answer as it
arrives, and Prefect retries a relay whose circuit opened (answers already stored are not sent
again).

Local candidates are CPU work: their uncached requests are cut into shards of ``shard_size``
(:mod:`flows.shards`) that return their rows, stored here as each shard completes. Without a Dask
address the shards run here one after another once the relays are done, so latencies are not
measured on a shared CPU; with one (``[run] dask_address`` or ``dask_address=``, prefect-dask
installed) they run on the cluster, as many at once as it has worker threads, alongside the
relays (``"local"`` starts a one-worker LocalCluster here: one shard at a time, as without Dask).
Flow parameters are names and paths only: settings and keys are read inside.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State
from prefect.tasks import Task

from flows.shards import (
    DaskShards,
    InlineShards,
    LocalModelSpec,
    Shard,
    ShardRunner,
    clear_stop,
    dask_task_runner,
    fingerprint_task,
    merge_runs,
    pending_requests,
    release_models,
    replay_row,
    replay_shard_task,
    split,
    stop_event,
    stop_requested,
)
from planner.backends import ReplayRequest
from planner.errors import CircuitOpenError, ConfigError
from planner.ratelimit import CostBudget
from planner.relay import RelayBackend
from planner.replay_engine import RETRY_NEXT_RUN_KINDS, replay_candidate
from planner.settings import CandidateSettings, PlannerSettings, load_settings
from warehouse.connection import open_warehouse
from warehouse.replays import final_replay_ids, replay_stats, store_replays
from warehouse.sampling import SampledRequest, draw_sample, sampled_requests

__all__ = ["relay_backend", "replay_flow", "replay_requests", "replay_row", "request_stop"]

# What a local shard's rows keep in memory once stored: enough for the run's percentiles.
_FIGURES = ("error_kind", "ttft_ms", "latency_ms", "tokens_per_s")


def request_stop() -> None:
    """Ask the running replay to stop cleanly; the next run resumes where it stopped."""
    stop_event.set()


def relay_backend(c: CandidateSettings, budget: CostBudget | None = None) -> RelayBackend:
    """A relay candidate's backend from its settings (the key read from its env var, now)."""
    if c.kind != "relay" or not c.base_url or not c.model:
        raise ConfigError(f"candidate {c.name!r}", "not a relay (needs base_url and model)")
    return RelayBackend(
        c.name,
        c.base_url,
        c.model,
        c.api_key(),
        api_key_env=c.api_key_env,
        price_in=c.price_in,
        price_out=c.price_out,
        rpm=c.rpm,
        tpm=c.tpm,
        max_concurrency=c.max_concurrency,
        timeout_s=c.timeout_s,
        max_retries=c.max_retries,
        stream=c.stream,
        budget=budget,
    )


def replay_requests(rows: list[SampledRequest], max_new_tokens: int) -> list[ReplayRequest]:
    """Sampled rows as replay requests: logged max_tokens (capped), logged temperature (else 0)."""
    return [
        ReplayRequest(
            request_id=row.request_id,
            messages=row.messages,
            max_tokens=min(row.max_tokens or max_new_tokens, max_new_tokens),
            temperature=row.temperature if row.temperature is not None else 0.0,
            params=row.params,
        )
        for row in rows
    ]


def _selected(settings: PlannerSettings, names: list[str] | None) -> list[CandidateSettings]:
    """The candidates to replay; two relays with the same endpoint and model would share one
    cache (replays are keyed by what answers, not by name), so that is refused."""
    if not settings.candidates:
        raise ConfigError(settings.source, "no [[candidates]] configured; nothing to replay")
    chosen = [settings.candidate(n) for n in names] if names else list(settings.candidates)
    seen: dict[str, str] = {}
    for c in chosen:
        if c.kind == "relay" and c.base_url and c.model:
            fingerprint = RelayBackend(c.name, c.base_url, c.model).fingerprint()
            if fingerprint in seen:
                raise ConfigError(
                    settings.source,
                    f"candidates {seen[fingerprint]!r} and {c.name!r} are the same endpoint and "
                    "model; keep one of them",
                )
            seen[fingerprint] = c.name
    return chosen


@task(name="draw-sample", cache_policy=NO_CACHE)
def draw_sample_task(
    warehouse_path: str, per_type: int, uncertain: int, seed: int
) -> dict[str, Any]:
    """Write (or find) the seeded sample; returns its id and counts."""
    con = open_warehouse(warehouse_path)
    try:
        draw = draw_sample(con, per_type=per_type, seed=seed, uncertain=uncertain)
    finally:
        con.close()
    return {
        "sample_id": draw.sample_id,
        "counts": draw.counts,
        "uncertain_extra": draw.uncertain_extra,
        "total": draw.total,
        "new": draw.created,
    }


def _run_relay(
    config_path: str | None,
    warehouse_path: str,
    candidate: str,
    requests: list[ReplayRequest],
    refresh: bool,
    budget: CostBudget,
    answered: set[str],
) -> dict[str, Any]:
    """One relay candidate's uncached requests, each answer stored as it arrives.

    ``answered`` outlives a retry: with ``refresh`` the warehouse cannot tell this run's answers
    from older ones, so a retried attempt skips what the failed one answered from that set.
    """
    settings = load_settings(config_path)
    c = settings.candidate(candidate)
    logger = get_run_logger()

    def report(line: str) -> None:
        print(line, file=sys.stderr, flush=True)
        logger.info(line)

    def store(batch: Any) -> None:
        store_replays(writer, [replay_row(k.result, k.key, k.fingerprint) for k in batch])
        answered.update(k.key for k in batch if k.result.error_kind not in RETRY_NEXT_RUN_KINDS)

    def already_done(keys: Sequence[str]) -> set[str]:
        if refresh:
            return answered.intersection(keys)
        return final_replay_ids(con, keys, RETRY_NEXT_RUN_KINDS)

    backend = relay_backend(c, budget)
    con = open_warehouse(warehouse_path)
    writer = con.cursor()  # the engine stores from a thread of its own: a connection for it
    try:
        run = replay_candidate(
            backend,
            requests,
            store=store,
            already_done=already_done,
            should_stop=stop_requested,
            report=report,
        )
    finally:
        backend.close()
        writer.close()
        con.close()
    if run.stopped == "circuit_open":
        raise CircuitOpenError(c.name, run.message or "circuit breaker open")
    return run.to_dict()


def _relay_may_recover(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry a relay shard when the relay looked down, never for a key, config or budget."""
    try:
        state.result()
    except CircuitOpenError:
        return True
    except Exception:
        return False
    return False


# A retry builds a new backend with a fresh rate limiter: waiting out the 60-s rpm/tpm window
# first keeps the limits exact across attempts (and gives a relay that was down time to recover).
relay_task = task(
    name="replay-relay",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[65, 120],
    retry_condition_fn=_relay_may_recover,
)(_run_relay)


def _failed(c: CandidateSettings, exc: BaseException) -> dict[str, Any]:
    stopped = "circuit_open" if isinstance(exc, CircuitOpenError) else "failed"
    return {"candidate": c.name, "stopped": stopped, "message": str(exc)}


class _LocalRuns:
    """What the local candidates' shards did, gathered as they complete."""

    def __init__(self) -> None:
        self.fingerprint: dict[str, str] = {}
        self.planned: dict[str, int] = {}
        self.cached: dict[str, int] = {}
        self.runs: dict[str, list[dict[str, Any]]] = {}
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.failed: dict[str, BaseException] = {}
        self.shards = 0
        self.done = 0
        self.left: dict[str, int] = {}  # shards never dispatched (stop, or the candidate failed)

    def summary(self, c: CandidateSettings) -> dict[str, Any]:
        if c.name not in self.fingerprint:
            return _failed(c, self.failed[c.name])
        out = merge_runs(
            c.name,
            self.fingerprint[c.name],
            self.planned[c.name],
            self.cached[c.name],
            self.runs[c.name],
            self.rows[c.name],
        )
        if c.name in self.failed:
            out["stopped"], out["message"] = "failed", str(self.failed[c.name])
        elif self.left.get(c.name) and out["stopped"] is None:
            out["stopped"] = "interrupted"
            out["message"] = "stopped on request; the rest resumes next run"
        return out


def _plan_local(
    pool: ShardRunner,
    local: list[CandidateSettings],
    requests: list[ReplayRequest],
    already_done: Any,
    refresh: bool,
    size: int,
    max_new: int,
    runs: _LocalRuns,
) -> tuple[dict[str, LocalModelSpec], list[Shard]]:
    """Each local candidate's fingerprint (read where its shards run) and its shards."""
    specs = {
        c.name: LocalModelSpec(c.name, str(c.path), c.threads, max_new) for c in local if c.path
    }
    handles = [
        (name, pool.submit(fingerprint_task, {"spec": asdict(spec)}))
        for name, spec in specs.items()
    ]
    shards: list[Shard] = []
    for name, handle in handles:
        pool.done([handle])
        found = pool.outcome(handle)
        if not isinstance(found, str):
            runs.failed[name] = found
            continue
        todo, cached = pending_requests(found, requests, already_done, refresh)
        runs.fingerprint[name] = found
        runs.planned[name] = len(todo) + cached
        runs.cached[name] = cached
        runs.runs[name], runs.rows[name] = [], []
        shards += split(name, todo, size)
    runs.shards = len(shards)
    return specs, shards


def _run_local(
    pool: ShardRunner,
    specs: dict[str, LocalModelSpec],
    shards: list[Shard],
    con: Any,
    runs: _LocalRuns,
) -> None:
    """Dispatch shards (at most ``pool.capacity`` in flight) and store each one's rows as it
    completes. A candidate whose shard failed gets no more shards; a stop dispatches none."""
    queue = deque(shards)
    inflight: dict[Any, Shard] = {}
    while queue or inflight:
        while queue and len(inflight) < pool.capacity and not stop_requested():
            shard = queue.popleft()
            if shard.candidate in runs.failed:
                runs.left[shard.candidate] = runs.left.get(shard.candidate, 0) + 1
                continue
            parameters = {
                "spec": asdict(specs[shard.candidate]),
                "fingerprint": runs.fingerprint[shard.candidate],
                "requests": shard.requests,
            }
            inflight[pool.submit(replay_shard_task, parameters)] = shard
        if not inflight:
            break
        for handle in pool.done(list(inflight)):
            shard = inflight.pop(handle)
            outcome = pool.outcome(handle)
            if not isinstance(outcome, dict):
                runs.failed.setdefault(shard.candidate, outcome)
                continue
            store_replays(con, outcome["rows"])
            runs.done += 1
            runs.runs[shard.candidate].append(outcome["run"])
            runs.rows[shard.candidate] += [{k: r[k] for k in _FIGURES} for r in outcome["rows"]]
            if outcome["run"]["stopped"] and outcome["run"]["stopped"] != "interrupted":
                runs.failed.setdefault(
                    shard.candidate,
                    RuntimeError(outcome["run"]["message"] or outcome["run"]["stopped"]),
                )
    for shard in queue:
        runs.left[shard.candidate] = runs.left.get(shard.candidate, 0) + 1


@flow(name="replay")
def replay_flow(
    config_path: str | None = None,
    per_type: int | None = None,
    candidates: list[str] | None = None,
    refresh: bool = False,
    warehouse_path: str | None = None,
    shard_size: int | None = None,
    dask_address: str | None = None,
) -> dict[str, Any]:
    """Sample, replay through every (or the named) candidates, and summarize from the warehouse.

    ``shard_size`` and ``dask_address`` default to ``[run]`` in the settings; ``"local"`` as the
    address starts a LocalCluster in this process.
    """
    clear_stop()
    settings = load_settings(config_path)
    chosen = _selected(settings, candidates)
    size = shard_size or settings.run.shard_size
    if size < 1:
        raise ConfigError("[run] shard_size", f"must be at least 1, got {size}")
    address = dask_address or settings.run.dask_address
    runner = dask_task_runner(address) if address else None  # prefect-dask missing: fail now
    warehouse = warehouse_path or str(settings.warehouse.path)
    sample = draw_sample_task(
        warehouse,
        per_type or settings.replay.per_type,
        settings.replay.uncertain,
        settings.replay.seed,
    )
    max_new = settings.replay.max_new_tokens
    budget = CostBudget(settings.replay.max_cost_usd)
    relays = [c for c in chosen if c.kind == "relay"]
    local = [c for c in chosen if c.kind == "local"]
    results: dict[str, dict[str, Any]] = {}
    fingerprints: dict[str, str] = {}
    local_runs = _LocalRuns()
    lanes_done: list[str] = []
    con = open_warehouse(warehouse)
    try:
        requests = replay_requests(sampled_requests(con, sample["sample_id"]), max_new)

        def already_done(keys: Sequence[str]) -> set[str]:
            return final_replay_ids(con, keys, RETRY_NEXT_RUN_KINDS)

        futures = []
        for c in relays:
            assert c.base_url and c.model
            fingerprints[c.name] = RelayBackend(c.name, c.base_url, c.model).fingerprint()
            todo, cached = pending_requests(fingerprints[c.name], requests, already_done, refresh)
            if not todo:
                results[c.name] = merge_runs(c.name, fingerprints[c.name], cached, cached, [], [])
                continue
            future = relay_task.submit(
                config_path=config_path,
                warehouse_path=warehouse,
                candidate=c.name,
                requests=todo,
                refresh=refresh,
                budget=budget,
                answered=set(),
            )
            futures.append((c, cached, future))

        def wait_relays() -> None:
            for c, cached, future in futures:
                future.wait()
                outcome = future.result(raise_on_failure=False)
                if isinstance(outcome, dict):
                    outcome["planned"] += cached
                    outcome["cached"] += cached
                    lanes_done.append(c.name)
                results[c.name] = outcome if isinstance(outcome, dict) else _failed(c, outcome)

        with runner if runner is not None else nullcontext():
            pool: ShardRunner = DaskShards(runner, str(address)) if runner else InlineShards()
            if not pool.concurrent_with_relays:
                wait_relays()
            if local and not stop_requested():
                specs, shards = _plan_local(
                    pool, local, requests, already_done, refresh, size, max_new, local_runs
                )
                _run_local(pool, specs, shards, con, local_runs)
                for c in local:
                    results[c.name] = local_runs.summary(c)
            if pool.concurrent_with_relays:
                wait_relays()
        fingerprints.update(local_runs.fingerprint)
        stats = replay_stats(con, sample["sample_id"], fingerprints)
    finally:
        con.close()
        release_models()
    kinds = {c.name: c.kind for c in chosen}
    report = [
        {"kind": kinds[c.name], **results[c.name], "stored": stats.get(c.name)}
        for c in chosen
        if c.name in results
    ]
    return {
        "sample": sample,
        "max_cost_usd": settings.replay.max_cost_usd,
        "spent_usd": budget.spent_usd,
        "candidates": report,
        "shards": {
            "total": local_runs.shards + len(futures),  # a relay's lane counts as one shard
            "done": local_runs.done + len(lanes_done),
            "cached_requests": sum(r.get("cached", 0) for r in report),
            "replayed_requests": sum(r.get("sent", 0) for r in report),
        },
    }
