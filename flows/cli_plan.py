"""`migration-planner plan`: score the replays, decide the routes, write the plan and configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from flows.cli_common import (
    ConfigOption,
    JsonOption,
    print_json,
    progress,
    settings_from,
    warehouse_path,
)
from warehouse.connection import open_warehouse


def format_result(result: dict[str, Any]) -> str:
    """What a person reads after a plan run: the verdict, the routes and where the files are."""
    lines = [result["verdict"], ""]
    width = max((len(t) for t in result["routes"]), default=10)
    lines += [f"  {task:<{width}}  -> {route}" for task, route in sorted(result["routes"].items())]
    scoring = result["scoring"]
    judge = f", judge {scoring['judge']}" if scoring.get("judge") else ", no judge"
    lines += [
        "",
        f"scored {scoring['scored']} of {scoring['replays']} replays{judge}",
        f"plan:     {result['plan']}",
        f"routing:  {result['routing']}",
        f"litellm:  {result['litellm']}",
        f"rollback: {result['rollback']}",
        f"metrics:  {result['metrics']}",
    ]
    return "\n".join(lines)


def plan(
    config: Path | None = ConfigOption,
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Folder for the run's files (default: [output] dir / <run-id>)."
    ),
    json_output: bool = JsonOption,
    warehouse: Path | None = typer.Option(
        None, "--warehouse", "-w", help="The DuckDB warehouse (default: [warehouse] path)."
    ),
    judge: str | None = typer.Option(
        None,
        "--judge",
        help="The [judge] that scores open-ended answers (default: the configured one, if any).",
    ),
    rescore: bool = typer.Option(False, "--rescore", help="Score every replay again."),
    classifier: Path | None = typer.Option(
        None, "--classifier", help="classifier.onnx to ship with the plan (its JSON card is read)."
    ),
    device_power_w: float | None = typer.Option(
        None, "--device-power-w", min=0.1, help="Device power draw under load, W (energy figures)."
    ),
    battery_wh: float | None = typer.Option(
        None, "--battery-wh", min=0.1, help="Device battery capacity, Wh (battery drain figures)."
    ),
) -> None:
    """Decide where each task type's traffic should go, and write plan.html + gateway configs."""
    settings = settings_from(config)
    if judge is not None:  # an unknown or judged name is one clear error before anything starts
        from pipeline.judge import judge_enabled

        judge_enabled(settings, judge)
    path = warehouse_path(settings, warehouse)
    open_warehouse(path, create=False).close()  # missing or locked: one line, before Prefect
    from flows.plan_flow import plan_flow

    progress("planning: score -> evidence -> decide -> project -> artifacts -> render")
    result = plan_flow(
        config_path=str(config) if config is not None else None,
        out_dir=str(out) if out is not None else None,
        warehouse_path=str(path),
        judge=judge,
        rescore=rescore,
        classifier_path=str(classifier) if classifier is not None else None,
        device_power_w=device_power_w,
        battery_wh=battery_wh,
    )
    if json_output:
        print_json(result)
    else:
        typer.echo(format_result(result))
