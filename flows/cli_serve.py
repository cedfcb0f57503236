"""`migration-planner serve`: run the nightly flow on its cron schedule, served from here."""

from __future__ import annotations

from pathlib import Path

import typer

from flows.cli_common import ConfigOption, settings_from
from planner.settings import DEFAULT_CONFIG


def serve(
    config: Path | None = ConfigOption,
    cron: str | None = typer.Option(
        None,
        "--cron",
        help='When the nightly run starts, cron syntax (default: [schedule] cron, "0 2 * * *").',
        show_default=False,
    ),
    timezone: str | None = typer.Option(
        None,
        "--timezone",
        help="IANA time zone of --cron, e.g. Europe/Berlin (default: [schedule] timezone, UTC).",
        show_default=False,
    ),
    name: str = typer.Option("nightly", "--name", help="Name of the Prefect deployment."),
) -> None:
    """Serve the nightly flow as a scheduled Prefect deployment until Ctrl-C.

    With PREFECT_API_URL set (or a Prefect profile pointing at a server), the deployment is
    registered on that server and its runs execute in this process. Without it, a Prefect
    server is started on 127.0.0.1 only (database and log under PREFECT_HOME, default
    ./.prefect), its UI address is printed, and it is stopped when serving stops.

    To deploy onto an existing Prefect server and work pool instead of serving from here, edit
    prefect.yaml at the repository root and run `prefect deploy --name nightly`.
    """
    from flows.serve import serve_nightly

    settings = settings_from(config)  # a bad planner.toml fails here, before any server starts
    path = config if config is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    serve_nightly(
        str(path) if path is not None else None,
        cron or settings.schedule.cron,
        timezone or settings.schedule.timezone,
        name=name,
        echo=typer.echo,
    )


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
