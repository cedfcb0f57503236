"""`migration-planner run`: the whole nightly flow once, now."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import typer

from flows.cli_common import ConfigOption, JsonOption, print_json, progress, settings_from
from flows.lock import run_lock
from pipeline.endpoints import check_endpoints


def format_result(result: dict[str, Any]) -> str:
    """Attention first, then the verdict, the stage times and where the files are."""
    lines: list[str] = []
    if result["attention"]:
        lines.append("NEEDS ATTENTION")
        lines += [f"  - {line}" for line in result["attention"]]
        if result.get("webhook"):
            hook = result["webhook"]
            sent = "posted" if hook["ok"] else f"NOT posted ({hook['reason']})"
            lines.append(f"  webhook: {sent}")
        lines.append("")
    lines.append(str(result.get("verdict") or ""))
    inputs = result["inputs"]
    lines.append(
        f"requests: {inputs.get('requests', 0)} ({inputs.get('new_requests', 0)} new); "
        f"replays: {inputs.get('replayed', 0)} new, {inputs.get('replays_cached', 0)} from cache"
    )
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in result["stage_seconds"].items())
    lines.append(f"stages: {stages}")
    lines += [
        "",
        f"run:   {result['run_id']}",
        f"plan:  {result['plan_html']}",
    ]
    if result.get("diff_html"):
        lines.append(f"diff:  {result['diff_html']} (against {result['previous_run']})")
    lines.append(f"index: {result['index_html']}")
    return "\n".join(lines)


def run(
    config: Path | None = ConfigOption,
    logs: list[str] | None = typer.Option(
        None,
        "--logs",
        "-l",
        help="Log file, glob or Parquet folder to ingest (repeatable; default: [run] logs).",
        show_default=False,
    ),
    json_output: bool = JsonOption,
) -> None:
    """Run the nightly job once: ingest → predict (train when due) → sample → replay → score →
    plan → render. Stages with nothing new are cheap: ingested files, replays and scores are
    reused. Writes out/<run-id>/, records the run in the history (`runs list`), updates
    out/index.html, and posts to the webhook in [alerts] when something needs attention.
    One run at a time per warehouse: a second one waits [run] lock_wait_s, then refuses."""
    settings = settings_from(config)
    check_endpoints(settings)  # an external endpoint without a data policy: one line, now
    wait = settings.run.lock_wait_s
    with run_lock(settings.warehouse.path, wait_s=wait, run="starting"):  # refuse before Prefect
        from flows.nightly import nightly_flow

        progress("run: ingest -> classify -> replay -> plan (progress below)")
        state = nightly_flow(
            config_path=str(config) if config is not None else None,
            logs=list(logs) if logs else None,
            return_state=True,
        )
    result = cast(dict[str, Any], state.result())  # the flow's data: the run's summary
    if json_output:
        print_json({**result, "state": state.name, "message": state.message})
    else:
        typer.echo(format_result(result))
