"""Fixtures every test package shares: a clean environment, and one Prefect test harness."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


@pytest.fixture(autouse=True)
def _clean_planner_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No PLANNER_* variable from the developer's shell leaks into a test."""
    for key in list(os.environ):
        if key.startswith("PLANNER_"):
            monkeypatch.delenv(key, raising=False)


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One temporary Prefect server/database for every flow test in the session (slow to start)."""
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect-home")
    os.environ["PREFECT_HOME"] = str(home)
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def warehouse_file(tmp_path: Path) -> Path:
    """Path of a fresh (not yet created) DuckDB warehouse file."""
    return tmp_path / "planner.duckdb"
