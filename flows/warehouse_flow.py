"""Prefect flows of the warehouse stages: thin wrappers that open the warehouse, call one core
function, and hand back a small summary (never the data itself)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task

from warehouse import ingest_paths, list_rejects, open_warehouse, profile_warehouse


@task(name="ingest-logs")
def ingest_task(
    warehouse: str,
    paths: list[str],
    fmt: str = "auto",
    batch_output: str | None = None,
    prices: dict[str, tuple[float, float]] | None = None,
) -> dict[str, Any]:
    """Deterministic (no retries): a failed ingest leaves the warehouse as it was."""
    from prefect.logging import get_run_logger

    logger = get_run_logger()
    con = open_warehouse(warehouse)
    try:
        report = ingest_paths(
            con,
            paths,
            fmt=fmt,
            batch_output=batch_output,
            prices=prices,
            progress=logger.info,
        )
        return report.as_dict()
    finally:
        con.close()


@task(name="profile-warehouse")
def profile_task(warehouse: str) -> dict[str, Any]:
    con = open_warehouse(warehouse, read_only=True)
    try:
        return profile_warehouse(con)
    finally:
        con.close()


@task(name="list-rejects")
def rejects_task(warehouse: str, limit: int = 20) -> dict[str, Any]:
    con = open_warehouse(warehouse, read_only=True)
    try:
        return list_rejects(con, limit=limit)
    finally:
        con.close()


@flow(name="ingest", log_prints=True)
def ingest_flow(
    warehouse: str,
    paths: list[str],
    fmt: str = "auto",
    batch_output: str | None = None,
    prices: dict[str, tuple[float, float]] | None = None,
) -> dict[str, Any]:
    """Ingest log files into the warehouse; returns the counts (read = loaded + duplicates +
    rejected + blank + joined)."""
    Path(warehouse).parent.mkdir(parents=True, exist_ok=True)
    return ingest_task(warehouse, paths, fmt, batch_output, prices)


@flow(name="profile")
def profile_flow(warehouse: str) -> dict[str, Any]:
    return profile_task(warehouse)
