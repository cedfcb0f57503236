"""What every CLI command shares: the error-to-exit-code rule, JSON output, the settings option.

Library errors (warehouse, classifiers, planner) are a user's problem to fix: they become one line
on stderr and exit code 2. Anything else is a bug and keeps its traceback. Typer 0.29 vendors its
own click (``typer._click``): errors must derive from that ClickException to be caught.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from typer._click import Context
from typer._click.exceptions import ClickException
from typer.core import TyperGroup

from classifiers.errors import ClassifierError
from planner.errors import PlannerError
from planner.settings import PlannerSettings, load_settings
from warehouse.errors import WarehouseError

USER_ERRORS = (WarehouseError, PlannerError, ClassifierError)
EXIT_USER_ERROR = 2


class UserError(ClickException):
    """Printed as ``error: <message>`` with exit code 2."""

    exit_code = EXIT_USER_ERROR

    def show(self, file: Any = None) -> None:
        typer.echo(f"error: {self.format_message()}", err=True)


class PlannerGroup(TyperGroup):
    """Turns the library error tree into :class:`UserError` for every nested command."""

    def invoke(self, ctx: Context) -> Any:
        try:
            return super().invoke(ctx)
        except USER_ERRORS as exc:
            raise UserError(str(exc)) from exc


def new_app(help_text: str) -> typer.Typer:
    return typer.Typer(
        cls=PlannerGroup,
        help=help_text,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,  # plain `error: ...` lines, not rich boxes: one line per error
        context_settings={"help_option_names": ["-h", "--help"]},
    )


ConfigOption = typer.Option(
    None,
    "--config",
    "-c",
    help="planner.toml to read (default: ./planner.toml if present).",
    show_default=False,
)
JsonOption = typer.Option(
    False, "--json", help="Print one JSON object for machines instead of tables."
)


def settings_from(config: Path | None) -> PlannerSettings:
    return load_settings(config)


def warehouse_path(settings: PlannerSettings, override: Path | None) -> Path:
    return override if override is not None else settings.warehouse.path


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str, ensure_ascii=False))


def progress(message: str) -> None:
    """Progress for people goes to stderr so stdout stays clean for --json."""
    print(message, file=sys.stderr, flush=True)
