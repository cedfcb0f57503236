"""The nightly parent flow: ingest → predict (train when due) → sample → replay → score → plan →
render, with run history, attention signals and atomic run folders. (Being written.)"""

from __future__ import annotations

from typing import Any

from prefect import flow


@flow(name="migration-planner-nightly")
def nightly_flow(config_path: str | None = None, logs: list[str] | None = None) -> dict[str, Any]:
    """One nightly run; returns the run id, its folder, status and headline figures."""
    raise NotImplementedError
