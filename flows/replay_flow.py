"""The replay flow: :func:`pipeline.replay.make_replay` with relay lanes as retried Prefect tasks
and local-model shards as tasks run here or on a Dask cluster.

Relay lanes run side by side as tasks of this flow; Prefect retries a lane whose circuit opened
(answers already stored are not sent again). Without a Dask address the local shards run here
one after another once the relays are done, so latencies are not measured on a shared CPU; with
one (``[run] dask_address`` or ``dask_address=``, prefect-dask installed) they run on the
cluster, as many at once as it has worker threads, alongside the relays (``"local"`` starts a
one-worker LocalCluster here: one shard at a time, as without Dask). Flow parameters are names
and paths only: the settings are loaded once, here, and keys are read inside.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State
from prefect.tasks import Task

from flows.shards import DaskShards, InlineShards, dask_task_runner
from flows.tasks import as_task
from pipeline.replay import RelayLane, make_replay, replay_relay
from planner.errors import CircuitOpenError
from planner.replay.ratelimit import CostBudget
from planner.replay.shards import request_stop
from planner.settings import PlannerSettings, load_settings

__all__ = ["replay_flow", "request_stop"]


def _report(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
    get_run_logger().info(line)


def _run_relay(
    settings: PlannerSettings,
    warehouse: str,
    candidate: str,
    requests: list[Any],
    refresh: bool,
    budget: CostBudget,
    answered: set[str],
) -> dict[str, Any]:
    return replay_relay(
        settings, warehouse, candidate, requests, refresh, budget, answered, _report
    )


def _relay_may_recover(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry a relay lane when the relay looked down, never for a key, config or budget."""
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


class PrefectRelays:
    """Relay lanes as concurrent Prefect tasks of the running flow."""

    def __init__(self, settings: PlannerSettings, warehouse: str, refresh: bool) -> None:
        self.settings = settings
        self.warehouse = warehouse
        self.refresh = refresh

    def submit(self, lane: RelayLane, budget: CostBudget) -> Any:
        return relay_task.submit(
            settings=self.settings,
            warehouse=self.warehouse,
            candidate=lane.candidate,
            requests=lane.requests,
            refresh=self.refresh,
            budget=budget,
            answered=set(),
        )

    def outcome(self, handle: Any) -> Any:
        handle.wait()
        return handle.result(raise_on_failure=False)


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
    settings = load_settings(config_path)
    address = dask_address or settings.run.dask_address
    runner = dask_task_runner(address) if address else None  # prefect-dask missing: fail now
    warehouse = warehouse_path or str(settings.warehouse.path)
    relays = PrefectRelays(settings, warehouse, refresh)
    with runner if runner is not None else nullcontext():
        shards = DaskShards(runner, str(address)) if runner else InlineShards()
        return make_replay(
            settings,
            relays,
            shards,
            candidates=candidates,
            per_type=per_type,
            refresh=refresh,
            warehouse=warehouse,
            shard_size=shard_size,
            stage=as_task,
        )
