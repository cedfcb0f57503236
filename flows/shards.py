"""Where local-model shards run: in this process (:class:`InlineShards`) or on a Dask cluster
through prefect-dask (:class:`DaskShards`), each shard a Prefect task of the replay flow.

The shard work itself is :func:`planner.replay.shards.replay_shard`; these runners only decide
where it runs and hand back its outcome. A Dask worker keeps the last model it loaded and runs
one shard at a time, so no two models share its CPU while they are being timed.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pipeline.replay import shard_parameters
from planner.errors import ConfigError
from planner.replay.shards import LocalModelSpec, Shard, fingerprint_of, replay_shard

LOCAL_DASK = "local"  # --dask-address local: a LocalCluster started in this process


def _report(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
    get_run_logger().info(line)


def _replay_shard(
    spec: dict[str, Any], fingerprint: str, requests: list[dict[str, Any]]
) -> dict[str, Any]:
    return replay_shard(spec, fingerprint, requests, _report)


fingerprint_task = task(name="fingerprint-local", cache_policy=NO_CACHE)(fingerprint_of)
replay_shard_task = task(name="replay-local-shard", cache_policy=NO_CACHE)(_replay_shard)


class InlineShards:
    """In this process, one at a time, run at submission."""

    capacity = 1
    concurrent_with_relays = False

    def fingerprint(self, spec: LocalModelSpec) -> Any:
        return fingerprint_task(spec=asdict(spec), return_state=True)

    def replay(self, spec: LocalModelSpec, fingerprint: str, shard: Shard) -> Any:
        return replay_shard_task(**shard_parameters(spec, fingerprint, shard), return_state=True)

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

    def fingerprint(self, spec: LocalModelSpec) -> Any:
        return self.runner.submit(fingerprint_task, {"spec": asdict(spec)})

    def replay(self, spec: LocalModelSpec, fingerprint: str, shard: Shard) -> Any:
        return self.runner.submit(replay_shard_task, shard_parameters(spec, fingerprint, shard))

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
