"""The ``migration-planner`` command line: one Typer app, a module per command group."""

from __future__ import annotations

from flows import cli_classify, cli_models, cli_plan, cli_replay, cli_run, cli_runs
from flows.cli_common import new_app
from flows.cli_serve import register as register_serve_command
from flows.cli_warehouse import register as register_warehouse_commands

app = new_app(
    "Plan the migration of production LLM traffic to local ONNX models or a cheaper relay.\n\n"
    "Start with `migration-planner demo` (offline, built-in data), then `ingest` your own logs."
)
register_warehouse_commands(app)
app.add_typer(cli_classify.app, name="classify")
app.command("replay")(cli_replay.replay)
app.command("plan")(cli_plan.plan)
app.command("run")(cli_run.run)
app.add_typer(cli_runs.app, name="runs")
register_serve_command(app)
app.add_typer(cli_models.app, name="models")
app.command("serve-model")(cli_models.serve_model)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
