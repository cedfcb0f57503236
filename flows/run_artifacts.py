"""A run's plan, shown where people already look: Prefect artifacts on the flow run.

Three artifacts per run, under stable keys so the Prefect UI's Artifacts page keeps one
collection per key with the latest run on top: a link to the run's ``plan.html`` (a ``file://``
URI: the plan is self-contained and opens from the machine, or share, that holds ``out/``), the
run's summary as markdown, and the chosen routes as a table. An optional fourth links the index of
all runs. Call it inside a flow or task run so the artifacts attach to that run.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)

# Prefect's rule for artifact keys (prefect.types.names): lowercase letters, digits and dashes.
_KEY = re.compile(r"^[a-z0-9-]+$")


def artifact_key(text: str) -> str:
    """``text`` folded into a valid artifact key: lowercase, runs of anything else become '-'."""
    key = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if not key:
        raise ValueError(f"{text!r} has no letters or digits to make an artifact key from")
    return key


def _cell(value: Any) -> Any:
    """A table cell the Prefect API can store as JSON (paths, dates, sets become text)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, (list, tuple)):
        return " → ".join(str(v) for v in value)
    if isinstance(value, Mapping):
        return json.dumps(value, default=str, ensure_ascii=False, sort_keys=True)
    return str(value)


def route_rows(routes: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows of the routes table with the same columns in the same order (first seen first)."""
    columns: list[str] = []
    for row in routes:
        columns += [str(c) for c in row if str(c) not in columns]
    return [{c: _cell(row.get(c)) for c in columns} for row in routes]


def publish_run_artifacts(
    *,
    run_id: str,
    plan_html: Path | None,
    markdown: str,
    routes: Sequence[Mapping[str, Any]],
    index_html: Path | None = None,
    prefix: str = "plan",
) -> list[str]:
    """Create the run's link, summary and routes artifacts; returns their keys in that order.

    ``plan_html`` None (a run that stopped before rendering) skips the link. Keys are
    ``<prefix>-link``, ``<prefix>-summary``, ``<prefix>-routes`` and ``<prefix>-runs-index``.
    """
    if not _KEY.fullmatch(prefix):
        raise ValueError(
            f"artifact key prefix {prefix!r}: only lowercase letters, digits and dashes"
        )
    made: list[str] = []
    if plan_html is not None:
        key = f"{prefix}-link"
        create_link_artifact(
            link=plan_html.resolve().as_uri(),
            link_text=f"Migration plan, run {run_id}",
            key=key,
            description=f"plan.html of run `{run_id}` (self-contained; open it from this machine).",
        )
        made.append(key)
    key = f"{prefix}-summary"
    create_markdown_artifact(
        markdown=markdown, key=key, description=f"Summary of migration-planner run `{run_id}`."
    )
    made.append(key)
    key = f"{prefix}-routes"
    rows = route_rows(routes)
    create_table_artifact(
        table=rows,
        key=key,
        description=f"Route per task type, run `{run_id}`"
        + ("" if rows else " (no routes: see the summary).")
        + ".",
    )
    made.append(key)
    if index_html is not None:
        key = f"{prefix}-runs-index"
        create_link_artifact(
            link=index_html.resolve().as_uri(),
            link_text="All migration-planner runs",
            key=key,
            description="Index of every run's plan, newest first.",
        )
        made.append(key)
    return made
