"""The replay flow: draw the sample, run it through every candidate, store what happened.

One coarse task per candidate (a shard); the per-request concurrency lives inside it (asyncio +
httpx for a relay, the local backend's own threads for a model folder). Relay shards run side by
side and may be retried by Prefect when the relay looked down (circuit open); local shards run one
after another afterwards, so their latencies are not measured on a machine shared with another
model. Flow parameters are names and paths only: settings and keys are read inside the tasks.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State
from prefect.tasks import Task

from planner.backends import ReplayBackend, ReplayRequest, ReplayResult
from planner.errors import CircuitOpenError, ConfigError
from planner.ratelimit import CostBudget
from planner.relay import RelayBackend
from planner.replay_engine import RETRY_NEXT_RUN_KINDS, replay_candidate
from planner.settings import CandidateSettings, PlannerSettings, load_settings
from warehouse.connection import open_warehouse
from warehouse.replays import final_replay_ids, replay_stats, store_replays
from warehouse.sampling import SampledRequest, draw_sample, sampled_requests

# Set by request_stop() (the CLI's first Ctrl-C): shards finish what is in flight, store it, stop.
_stop = threading.Event()


def request_stop() -> None:
    """Ask the running replay to stop cleanly; the next run resumes where it stopped."""
    _stop.set()


def relay_backend(c: CandidateSettings, budget: CostBudget | None = None) -> RelayBackend:
    """A relay candidate's backend from its settings (the key read from its env var, now)."""
    if c.kind != "relay" or not c.base_url or not c.model:
        raise ConfigError("planner.toml", f"candidate {c.name!r} is not a relay")
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


def local_backend(c: CandidateSettings, max_new_tokens: int) -> ReplayBackend:
    """A local candidate's backend: an onnxruntime-genai model folder."""
    from planner.local_backend import LocalBackend

    if c.kind != "local" or c.path is None:
        raise ConfigError("planner.toml", f"candidate {c.name!r} is not a local model folder")
    return LocalBackend(c.name, Path(c.path), max_new_tokens=max_new_tokens, threads=c.threads)


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


def _selected(settings: PlannerSettings, names: list[str] | None) -> list[CandidateSettings]:
    """The candidates to replay; two relays with the same endpoint and model would share one
    cache (replays are keyed by what answers, not by name), so that is refused."""
    if not settings.candidates:
        raise ConfigError("planner.toml", "no [[candidates]] configured; nothing to replay")
    chosen = [settings.candidate(n) for n in names] if names else list(settings.candidates)
    seen: dict[str, str] = {}
    for c in chosen:
        if c.kind == "relay" and c.base_url and c.model:
            fingerprint = RelayBackend(c.name, c.base_url, c.model).fingerprint()
            if fingerprint in seen:
                raise ConfigError(
                    "planner.toml",
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


def _run_shard(
    config_path: str | None,
    warehouse_path: str,
    candidate: str,
    sample_id: str,
    refresh: bool,
    budget: CostBudget,
) -> dict[str, Any]:
    settings = load_settings(config_path)
    c = settings.candidate(candidate)
    max_new = settings.replay.max_new_tokens
    logger = get_run_logger()

    def report(line: str) -> None:
        print(line, file=sys.stderr, flush=True)
        logger.info(line)

    backend = relay_backend(c, budget) if c.kind == "relay" else local_backend(c, max_new)
    con = open_warehouse(warehouse_path)
    writer = con.cursor()  # the engine stores from a thread of its own: a connection for it
    try:
        requests = replay_requests(sampled_requests(con, sample_id), max_new)
        run = replay_candidate(
            backend,
            requests,
            store=lambda batch: store_replays(
                writer, [replay_row(k.result, k.key, k.fingerprint) for k in batch]
            ),
            already_done=lambda keys: final_replay_ids(con, keys, RETRY_NEXT_RUN_KINDS),
            refresh=refresh,
            should_stop=_stop.is_set,
            report=report,
        )
    finally:
        backend.close()
        writer.close()
        con.close()
    if run.stopped == "circuit_open":
        raise CircuitOpenError(c.name, run.message or "circuit breaker open")
    return {"kind": c.kind, **run.to_dict()}


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
relay_shard = task(
    name="replay-relay",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[65, 120],
    retry_condition_fn=_relay_may_recover,
)(_run_shard)
local_shard = task(name="replay-local", cache_policy=NO_CACHE)(_run_shard)


def _failed(c: CandidateSettings, exc: BaseException) -> dict[str, Any]:
    stopped = "circuit_open" if isinstance(exc, CircuitOpenError) else "failed"
    return {"kind": c.kind, "candidate": c.name, "stopped": stopped, "message": str(exc)}


@flow(name="replay")
def replay_flow(
    config_path: str | None = None,
    per_type: int | None = None,
    candidates: list[str] | None = None,
    refresh: bool = False,
    warehouse_path: str | None = None,
) -> dict[str, Any]:
    """Sample, replay through every (or the named) candidates, and summarize from the warehouse."""
    _stop.clear()
    settings = load_settings(config_path)
    chosen = _selected(settings, candidates)
    warehouse = warehouse_path or str(settings.warehouse.path)
    sample = draw_sample_task(
        warehouse,
        per_type or settings.replay.per_type,
        settings.replay.uncertain,
        settings.replay.seed,
    )
    budget = CostBudget(settings.replay.max_cost_usd)
    shard = {
        "config_path": config_path,
        "warehouse_path": warehouse,
        "sample_id": sample["sample_id"],
        "refresh": refresh,
        "budget": budget,
    }
    runs: dict[str, dict[str, Any]] = {}
    relays = [c for c in chosen if c.kind == "relay"]
    futures = [(c, relay_shard.submit(candidate=c.name, **shard)) for c in relays]
    for c, future in futures:
        future.wait()
        outcome = future.result(raise_on_failure=False)
        runs[c.name] = outcome if isinstance(outcome, dict) else _failed(c, outcome)
    for c in chosen:
        if c.kind == "local" and not _stop.is_set():
            state = local_shard(candidate=c.name, return_state=True, **shard)
            outcome = state.result(raise_on_failure=False)
            runs[c.name] = outcome if isinstance(outcome, dict) else _failed(c, outcome)

    fingerprints = {
        name: run["fingerprint"] for name, run in runs.items() if run.get("fingerprint")
    }
    for c in relays:
        if c.base_url and c.model:
            fingerprints.setdefault(c.name, RelayBackend(c.name, c.base_url, c.model).fingerprint())
    con = open_warehouse(warehouse)
    try:
        stats = replay_stats(con, sample["sample_id"], fingerprints)
    finally:
        con.close()
    return {
        "sample": sample,
        "max_cost_usd": settings.replay.max_cost_usd,
        "spent_usd": budget.spent_usd,
        "candidates": [
            {**runs[c.name], "stored": stats.get(c.name)} for c in chosen if c.name in runs
        ],
    }
