"""The nightly parent flow: :func:`pipeline.nightly.run_nightly` with its stages recorded in
Prefect (ingest and classify as tasks, replay and plan as subflows), the run published as Prefect
artifacts, and a final state named "Needs attention" when something does.

One run at a time per warehouse (:mod:`flows.lock`); the run history is shared by scope (the
warehouse, or ``[history] scope``), so runs of other warehouses are neither marked interrupted
nor compared with. The flow's parameters are the config path, the logs and the trigger: the
settings are loaded once here and handed to the pipeline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, State

from flows.lock import run_lock
from flows.plan_flow import plan_flow
from flows.replay_flow import replay_flow
from flows.run_artifacts import publish_run_artifacts
from flows.subflow import subflow_settings
from flows.warehouse_flow import ingest_task
from pipeline.classify import classify_when_due
from pipeline.nightly import NightlyRun, resolve_logs, run_nightly
from planner.runs.diff import Signal
from planner.runs.folder import new_run_id
from planner.settings import PlannerSettings, load_settings

ATTENTION_STATE = "Needs attention"


@task(name="classify-when-due", cache_policy=NO_CACHE)
def classify_stage(settings: PlannerSettings, warehouse: str) -> dict[str, Any]:
    """Train when due, predict when the requests or the classifier changed."""
    return classify_when_due(settings, warehouse, get_run_logger().info)


class PrefectSteps:
    """The nightly stages as tasks and subflows of the running flow."""

    def __init__(self, settings: PlannerSettings, config_path: str | None) -> None:
        self.settings = settings
        self.config_path = config_path
        self.warehouse = str(settings.warehouse.path)

    def ingest(self, paths: list[str]) -> dict[str, Any]:
        return ingest_task(self.warehouse, paths, prices=self.settings.price_overrides() or None)

    def classify(self) -> dict[str, Any]:
        return classify_stage(self.settings, self.warehouse)

    def replay(self) -> dict[str, Any]:
        with subflow_settings():
            return replay_flow(
                config_path=self.config_path,
                warehouse_path=self.warehouse,
                shard_size=self.settings.run.shard_size,
                dask_address=self.settings.run.dask_address,
            )

    def plan(
        self, out_dir: Path, classifier_path: Path, run_id: str, judge_spent_usd: float = 0.0
    ) -> dict[str, Any]:
        with subflow_settings():
            return plan_flow(
                config_path=self.config_path,
                out_dir=str(out_dir),
                warehouse_path=self.warehouse,
                classifier_path=str(classifier_path),
                run_id=run_id,
                judge_spent_usd=judge_spent_usd,
            )

    def info(self, line: str) -> None:
        get_run_logger().info(line)

    def warning(self, line: str) -> None:
        get_run_logger().warning(line)


def _attention_line(signals: list[Signal]) -> str:
    return "Needs attention: " + " ".join(s.message for s in signals)


@flow(name="migration-planner-nightly")
def nightly_flow(
    config_path: str | None = None, logs: list[str] | None = None, trigger: str = "manual"
) -> State[Any]:
    """One nightly run; its result holds the run id, its folder, status and headline figures.

    The flow's final state is Completed, named "Needs attention" (with the reasons as its
    message) when a decision flipped, a route the previous run deployed fails tonight's evidence
    (below its floor, or otherwise), a relay now serves another model, the task mix of the last
    window drifted past ``[alerts] drift_threshold``, or a retrained classifier moved the mix."""
    settings = load_settings(config_path)
    warehouse = str(settings.warehouse.path)
    paths = resolve_logs(list(logs) if logs else list(settings.run.logs), settings.source)
    run_id = new_run_id()
    with run_lock(warehouse, wait_s=settings.run.lock_wait_s, run=run_id):
        run = run_nightly(settings, paths, run_id, PrefectSteps(settings, config_path), trigger)
    return _publish(run)


def _publish(run: NightlyRun) -> State[Any]:
    """Prefect artifacts and the final state."""
    assert run.figures is not None and run.index is not None
    publish_run_artifacts(
        run_id=run.run_id,
        plan_html=run.run_dir / "plan.html",
        markdown=run.markdown(),
        routes=[r.to_dict() for r in run.figures.routes],
        index_html=run.index,
    )
    result = run.summary()
    if run.signals:
        return Completed(name=ATTENTION_STATE, message=_attention_line(run.signals), data=result)
    return Completed(message=f"plan: {run.artifacts['plan']}", data=result)
