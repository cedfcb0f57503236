"""The plan flow: :func:`pipeline.plan.make_plan` with each step recorded as a Prefect task.

Flow parameters are paths, names and plain numbers only: the settings are loaded once, here, and
keys are read where a request header is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from flows.tasks import as_task
from pipeline.plan import make_plan
from planner.settings import load_settings


@flow(name="plan")
def plan_flow(
    config_path: str | None = None,
    out_dir: str | None = None,
    warehouse_path: str | None = None,
    judge: str | None = None,
    rescore: bool = False,
    classifier_path: str | None = None,
    device_power_w: float | None = None,
    battery_wh: float | None = None,
    run_id: str | None = None,
    judge_spent_usd: float = 0.0,
) -> dict[str, Any]:
    """Score the replays, decide the routes, project the month, write the artifacts and the HTML.
    ``run_id`` names the run in metrics.json and the configs (the parent flow passes its own);
    ``judge_spent_usd`` what the run's replay rounds already spent of the judge's cap."""
    return make_plan(
        load_settings(config_path),
        warehouse=warehouse_path,
        run_dir=Path(out_dir) if out_dir else None,
        run_id=run_id,
        judge=judge,
        rescore=rescore,
        classifier_path=classifier_path,
        device_power_w=device_power_w,
        battery_wh=battery_wh,
        judge_spent_usd=judge_spent_usd,
        stage=as_task,
    )
