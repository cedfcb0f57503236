"""The replay stage: draw the sample, run it through every candidate, store what happened.

:func:`make_replay` reads the sample once and leaves out what is already replayed (the cache
keys of the engine), so a run killed at any point resumes where it stopped.

Relay candidates run side by side, one lane each, on the machine that runs the stage: their work
is waiting on the network, and what bounds it (the rate limiter, the circuit breaker, the run's
cost budget) is one object per candidate or per run that must see every request. A lane stores
each answer as it arrives. Local candidates are CPU work: their uncached requests are cut into
shards (:mod:`planner.replay.shards`) that return their rows, stored here as each shard
completes. Where lanes and shards run is the caller's: a :class:`RelayRunner` and a
:class:`ShardRunner` (the Prefect flow runs lanes as retried tasks and shards inline or on Dask).

A relay's answers expire (``[replay] relay_ttl_days``) and a rotating slice of them is sent again
each night (:mod:`planner.replay.freshness`). A lane notes what its answers say served them; when
that is not what the relay served before, the change is recorded (``relay_serving``), reported in
the candidate's summary, and every answer of the old model is sent again in the same lane.
Every sampled request's content key is stored, so a replay counts for each request that asked
the same (:mod:`pipeline.current` names what counts).

This module is long because the relay lanes, the local shards and the composition that runs
them side by side share one sample, one budget and one connection's bookkeeping; split, each
part would need the others' internals.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from pipeline.endpoints import check_endpoints, redactor_for
from pipeline.stage import Progress, Stage, direct, quiet
from planner.errors import CircuitOpenError, ConfigError
from planner.replay.engine import RETRY_NEXT_RUN_KINDS, CandidateRun, content_key, replay_candidate
from planner.replay.freshness import Identity, Renewal, dominant_identity, served_by, utc_now
from planner.replay.protocol import ReplayRequest
from planner.replay.ratelimit import CostBudget
from planner.replay.relay import RelayBackend
from planner.replay.shards import (
    LocalModelSpec,
    Shard,
    clear_stop,
    merge_runs,
    pending_requests,
    release_models,
    replay_row,
    split,
    stop_requested,
)
from planner.settings import CandidateSettings, PlannerSettings
from warehouse.connection import open_warehouse
from warehouse.replays import (
    Serving,
    current_serving,
    final_replay_ids,
    record_serving,
    replay_states,
    replay_stats,
    store_content_keys,
    store_replays,
)
from warehouse.sampling import SampledRequest, draw_sample, sampled_requests

# What a local shard's rows keep in memory once stored: enough for the run's percentiles.
_FIGURES = ("error_kind", "ttft_ms", "latency_ms", "tokens_per_s")


def relay_backend(
    c: CandidateSettings, budget: CostBudget | None = None, names: Sequence[str] = ()
) -> RelayBackend:
    """A relay candidate's backend from its settings (the key read from its env var, now),
    redacting what it sends when its data policy says so (``names``: ``[privacy] names``)."""
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
        redactor=redactor_for(c, names),
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


def select_candidates(
    settings: PlannerSettings, names: Sequence[str] | None
) -> list[CandidateSettings]:
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


def draw(warehouse: str, per_type: int, uncertain: int, seed: int) -> dict[str, Any]:
    """Write (or find) the seeded sample; returns its id and counts."""
    con = open_warehouse(warehouse)
    try:
        sample = draw_sample(con, per_type=per_type, seed=seed, uncertain=uncertain)
    finally:
        con.close()
    return {
        "sample_id": sample.sample_id,
        "counts": sample.counts,
        "uncertain_extra": sample.uncertain_extra,
        "total": sample.total,
        "new": sample.created,
        "multi_model_prompts": sample.multi_model_prompts,
    }


# ---------------------------------------------------------------- relay lanes


@dataclass(frozen=True)
class RelayLane:
    """One relay candidate's work of this run: every sampled request (the lane sends what is not
    answered, fresh and of the current model yet; ``cached`` counts none twice)."""

    candidate: str
    requests: list[ReplayRequest]
    cached: int


def _identity(serving: Serving | None) -> Identity | None:
    return None if serving is None else (serving.served_model, serving.system_fingerprint)


def relay_final_ids(
    con: Any, keys: Sequence[str], renewal: Renewal, serving: Serving | None
) -> tuple[set[str], int]:
    """The keys a relay need not send again (answered for good, fresh, not in tonight's slice,
    of what it serves now) and how many stored answers are due for renewal."""
    done: set[str] = set()
    renewed = 0
    current = _identity(serving)
    for key, state in replay_states(con, keys).items():
        if state.error_kind in RETRY_NEXT_RUN_KINDS:
            continue
        if renewal.due(key, state.created_at) or not served_by(
            state.served_model, state.system_fingerprint, current
        ):
            renewed += 1
            continue
        done.add(key)
    return done, renewed


def _add_runs(first: CandidateRun, second: CandidateRun) -> dict[str, Any]:
    """One lane's two passes (before and after a change of served model) as one summary."""
    out = first.to_dict()
    for name in ("sent", "ok", "retries", "cost_usd", "skipped_budget", "seconds"):
        out[name] += getattr(second, name)
    errors = dict(first.errors)
    for kind, n in second.errors.items():
        errors[kind] = errors.get(kind, 0) + n
    out["errors"] = dict(sorted(errors.items()))
    out["cached"] = max(first.cached - second.sent, 0)
    if second.stopped and not first.stopped:
        out["stopped"], out["message"] = second.stopped, second.message
    return out


def replay_relay(
    settings: PlannerSettings,
    warehouse: str,
    candidate: str,
    requests: list[ReplayRequest],
    refresh: bool,
    budget: CostBudget,
    answered: set[str],
    report: Progress = quiet,
) -> dict[str, Any]:
    """One relay candidate's requests, each answer stored as it arrives.

    ``answered`` outlives a retry: with ``refresh`` the warehouse cannot tell this run's answers
    from older ones, so a retried attempt skips what the failed one answered from that set.
    Stored answers that expired, fall in tonight's renewal slice or were served by another
    model than the relay serves now are sent again. When this run's answers name another model
    (or system fingerprint) than the one recorded, the change is recorded and reported
    (``serving.changed_from``), and the rest of the sample is sent again to the new model.
    Raises :class:`CircuitOpenError` when the relay looked down (a retry may recover).
    """
    c = settings.candidate(candidate)
    renewal = Renewal(settings.replay.relay_ttl_days, utc_now())
    seen: list[Identity] = []
    renewed: list[int] = []
    backend = relay_backend(c, budget, settings.privacy.names)
    fingerprint = backend.fingerprint()
    con = open_warehouse(warehouse)
    writer = con.cursor()  # the engine stores from a thread of its own: a connection for it
    serving = before = current_serving(con, fingerprint)

    def store(batch: Any) -> None:
        store_replays(
            writer, [replay_row(k.result, k.key, k.fingerprint, k.content) for k in batch]
        )
        answered.update(k.key for k in batch if k.result.error_kind not in RETRY_NEXT_RUN_KINDS)
        seen.extend(
            (k.result.served_model, k.result.system_fingerprint) for k in batch if k.result.ok
        )

    def already_done(keys: Sequence[str]) -> set[str]:
        if refresh:
            return answered.intersection(keys)
        done, due = relay_final_ids(con, keys, renewal, serving)
        renewed.append(due)
        return done

    try:
        run = replay_candidate(
            backend,
            requests,
            store=store,
            already_done=already_done,
            should_stop=stop_requested,
            report=report,
        )
        summary = run.to_dict()
        found = dominant_identity(seen)
        changed_from = None
        if found is not None and found[0] != _identity(serving):
            serving = Serving(*found[0])
            record_serving(con, fingerprint, c.name, serving, found[1])
            if before is not None:
                changed_from = before.label()
                report(
                    f"replay {c.name}: the relay now serves {serving.label()} (was "
                    f"{changed_from}); sending the rest of the sample again"
                )
                again = replay_candidate(
                    backend,
                    requests,
                    store=store,
                    already_done=already_done,
                    should_stop=stop_requested,
                    report=report,
                )
                summary = _add_runs(run, again)
                run = again if again.stopped else run
    finally:
        backend.close()
        writer.close()
        con.close()
    if run.stopped == "circuit_open":
        raise CircuitOpenError(c.name, run.message or "circuit breaker open")
    summary["renewed"] = renewed[0] if renewed else 0
    summary["serving"] = (
        None
        if serving is None
        else {
            "served_model": serving.served_model,
            "system_fingerprint": serving.system_fingerprint,
            "changed_from": changed_from,
        }
    )
    return summary


def failed_run(candidate: str, exc: BaseException) -> dict[str, Any]:
    """A candidate's summary when its lane or shards failed as a whole."""
    stopped = "circuit_open" if isinstance(exc, CircuitOpenError) else "failed"
    return {"candidate": candidate, "stopped": stopped, "message": str(exc)}


class RelayRunner(Protocol):
    """Runs relay lanes (concurrently, with retries where the caller wants them)."""

    def submit(self, lane: RelayLane, budget: CostBudget) -> Any: ...

    def outcome(self, handle: Any) -> Any:
        """Waits; the lane's summary dict, or the exception it failed with."""
        ...


# ---------------------------------------------------------------- local shards


class ShardRunner(Protocol):
    """Runs local-model work somewhere; ``capacity`` is how many may be in flight at once."""

    capacity: int
    concurrent_with_relays: bool

    def fingerprint(self, spec: LocalModelSpec) -> Any: ...

    def replay(self, spec: LocalModelSpec, fingerprint: str, shard: Shard) -> Any: ...

    def done(self, handles: Sequence[Any]) -> list[Any]:
        """Those of ``handles`` that finished (waits for at least one)."""
        ...

    def outcome(self, handle: Any) -> Any:
        """The work's return value, or the exception it failed with."""
        ...


@dataclass
class LocalRuns:
    """What the local candidates' shards did, gathered as they complete."""

    fingerprint: dict[str, str] = field(default_factory=dict)
    planned: dict[str, int] = field(default_factory=dict)
    cached: dict[str, int] = field(default_factory=dict)
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    failed: dict[str, BaseException] = field(default_factory=dict)
    shards: int = 0
    done: int = 0
    left: dict[str, int] = field(default_factory=dict)  # never dispatched (stop, or failure)

    def summary(self, name: str) -> dict[str, Any]:
        if name not in self.fingerprint:
            return failed_run(name, self.failed[name])
        out = merge_runs(
            name,
            self.fingerprint[name],
            self.planned[name],
            self.cached[name],
            self.runs[name],
            self.rows[name],
        )
        if name in self.failed:
            out["stopped"], out["message"] = "failed", str(self.failed[name])
        elif self.left.get(name) and out["stopped"] is None:
            out["stopped"] = "interrupted"
            out["message"] = "stopped on request; the rest resumes next run"
        return out


def plan_local(
    pool: ShardRunner,
    specs: dict[str, LocalModelSpec],
    requests: list[ReplayRequest] | Mapping[str, list[ReplayRequest]],
    already_done: Callable[[Sequence[str]], set[str]],
    refresh: bool,
    size: int,
    runs: LocalRuns,
) -> list[Shard]:
    """Each local candidate's fingerprint (read where its shards run) and its shards."""
    handles = [(name, pool.fingerprint(spec)) for name, spec in specs.items()]
    shards: list[Shard] = []
    for name, handle in handles:
        pool.done([handle])
        found = pool.outcome(handle)
        if not isinstance(found, str):
            runs.failed[name] = found
            continue
        mine = requests[name] if isinstance(requests, Mapping) else requests
        todo, cached = pending_requests(found, mine, already_done, refresh)
        runs.fingerprint[name] = found
        runs.planned[name] = len(todo) + cached
        runs.cached[name] = cached
        runs.runs[name], runs.rows[name] = [], []
        shards += split(name, todo, size)
    runs.shards = len(shards)
    return shards


def run_local(
    pool: ShardRunner,
    specs: dict[str, LocalModelSpec],
    shards: list[Shard],
    con: Any,
    runs: LocalRuns,
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
            handle = pool.replay(specs[shard.candidate], runs.fingerprint[shard.candidate], shard)
            inflight[handle] = shard
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


# ---------------------------------------------------------------- the composition


def make_replay(
    settings: PlannerSettings,
    relays_runner: RelayRunner,
    shards_runner: ShardRunner,
    *,
    candidates: Sequence[str] | None = None,
    per_type: int | None = None,
    refresh: bool = False,
    warehouse: str | None = None,
    shard_size: int | None = None,
    stage: Stage = direct,
    only: Mapping[str, Collection[str]] | None = None,
    budget: CostBudget | None = None,
    adaptive: bool | None = None,
    sample: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Sample, replay through every (or the named) candidates, and summarize from the warehouse.

    ``shard_size`` defaults to ``[run] shard_size``. The summary has the sample, the money spent
    against the cap, one row per candidate (this run's figures and the stored ones) and the
    shard counts. With ``[verdict] adaptive`` (or ``adaptive=True``) the sample is replayed in
    rounds that stop each (type, candidate) once its verdict is decided
    (:func:`pipeline.adaptive.replay_in_rounds`); a round is this function with ``only`` (the
    request ids each candidate replays), the run's shared ``budget`` and the ``sample`` the
    rounds drew (drawn once: the draw hashes every eligible request)."""
    if only is None and (settings.verdict.adaptive if adaptive is None else adaptive):
        from pipeline.adaptive import replay_in_rounds

        return replay_in_rounds(
            settings,
            relays_runner,
            shards_runner,
            candidates=candidates,
            per_type=per_type,
            refresh=refresh,
            warehouse=warehouse,
            shard_size=shard_size,
            stage=stage,
        )
    clear_stop()
    chosen = select_candidates(settings, candidates)
    check_endpoints(settings, [c.name for c in chosen])  # before anything is sent
    size = shard_size or settings.run.shard_size
    if size < 1:
        raise ConfigError("[run] shard_size", f"must be at least 1, got {size}")
    warehouse = warehouse or str(settings.warehouse.path)
    if sample is None:
        sample = stage(
            "draw-sample",
            draw,
            warehouse,
            per_type or settings.replay.per_type,
            settings.replay.uncertain,
            settings.replay.seed,
        )
    max_new = settings.replay.max_new_tokens
    budget = budget if budget is not None else CostBudget(settings.replay.max_cost_usd)
    relays = [c for c in chosen if c.kind == "relay"]
    local = [c for c in chosen if c.kind == "local"]
    results: dict[str, dict[str, Any]] = {}
    fingerprints: dict[str, str] = {}
    local_runs = LocalRuns()
    lanes_done: list[str] = []
    con = open_warehouse(warehouse)
    try:
        requests = replay_requests(sampled_requests(con, sample["sample_id"]), max_new)
        store_content_keys(con, [(r.request_id, content_key(r)) for r in requests])
        wanted = {c.name: set(only.get(c.name, ())) for c in chosen} if only is not None else {}
        mine = {
            c.name: [r for r in requests if r.request_id in wanted[c.name]] if wanted else requests
            for c in chosen
        }

        def already_done(keys: Sequence[str]) -> set[str]:
            return final_replay_ids(con, keys, RETRY_NEXT_RUN_KINDS)

        renewal = Renewal(settings.replay.relay_ttl_days, utc_now())
        lanes: list[tuple[RelayLane, Any]] = []
        for c in relays:
            assert c.base_url and c.model
            fp = RelayBackend(c.name, c.base_url, c.model).fingerprint()
            fingerprints[c.name] = fp
            serving = current_serving(con, fp)

            def relay_done(keys: Sequence[str], s: Serving | None = serving) -> set[str]:
                return relay_final_ids(con, keys, renewal, s)[0]

            todo, cached = pending_requests(fp, mine[c.name], relay_done, refresh)
            if not todo:
                results[c.name] = merge_runs(c.name, fp, cached, cached, [], [])
                results[c.name]["renewed"] = 0
                continue
            lane = RelayLane(c.name, mine[c.name], 0)  # the lane skips what is done itself
            lanes.append((lane, relays_runner.submit(lane, budget)))

        def wait_relays() -> None:
            for lane, handle in lanes:
                outcome = relays_runner.outcome(handle)
                if isinstance(outcome, dict):
                    outcome["planned"] += lane.cached
                    outcome["cached"] += lane.cached
                    lanes_done.append(lane.candidate)
                    results[lane.candidate] = outcome
                else:
                    results[lane.candidate] = failed_run(lane.candidate, outcome)

        if not shards_runner.concurrent_with_relays:
            wait_relays()
        if local and not stop_requested():
            specs = {
                c.name: LocalModelSpec(c.name, str(c.path), c.threads, max_new, c.batch_size)
                for c in local
                if c.path
            }
            shards = plan_local(shards_runner, specs, mine, already_done, refresh, size, local_runs)
            run_local(shards_runner, specs, shards, con, local_runs)
            for c in local:
                results[c.name] = local_runs.summary(c.name)
        if shards_runner.concurrent_with_relays:
            wait_relays()
        fingerprints.update(local_runs.fingerprint)
        fresh = renewal.fresh_after()
        stats = replay_stats(
            con,
            sample["sample_id"],
            fingerprints,
            {c.name: fresh for c in relays} if fresh is not None else None,
        )
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
            "total": local_runs.shards + len(lanes),  # a relay's lane counts as one shard
            "done": local_runs.done + len(lanes_done),
            "cached_requests": sum(r.get("cached", 0) for r in report),
            "replayed_requests": sum(r.get("sent", 0) for r in report),
        },
    }


def shard_parameters(spec: LocalModelSpec, fingerprint: str, shard: Shard) -> dict[str, Any]:
    """A shard's work as plain parameters (what travels to a worker)."""
    return {"spec": asdict(spec), "fingerprint": fingerprint, "requests": shard.requests}
