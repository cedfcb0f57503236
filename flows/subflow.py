"""How a stage runs as a subflow of a bigger run (the nightly run, the demo)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings


@contextmanager
def subflow_settings() -> Iterator[None]:
    """Prefect settings for a stage's subflow: no heartbeat of its own. The parent's heartbeat
    already tells Prefect the run is alive, and a heartbeat thread sleeps in one-second steps, so
    stopping it at a subflow's end cost up to a second per subflow (measured: 2 s of a 5 s
    second nightly run, for the replay and plan subflows)."""
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield
