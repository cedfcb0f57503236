"""The pipeline's stages run in this process, without Prefect: relay lanes and local shards
through the same functions the flows call (:func:`pipeline.replay.replay_relay`,
:func:`planner.replay.shards.replay_shard`), one at a time."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pipeline.replay import RelayLane, make_replay, replay_relay
from planner.models.server import EchoEngine, ServerThread, create_app
from planner.replay.ratelimit import CostBudget
from planner.replay.shards import LocalModelSpec, Shard, fingerprint_of, replay_shard
from planner.settings import PlannerSettings, load_settings


def _report(line: str) -> None:
    print(line, file=sys.stderr)


class DirectRelays:
    """Relay lanes run at submission, in this process."""

    def __init__(self, settings: PlannerSettings, warehouse: str) -> None:
        self.settings = settings
        self.warehouse = warehouse

    def submit(self, lane: RelayLane, budget: CostBudget) -> Any:
        try:
            return replay_relay(
                self.settings,
                self.warehouse,
                lane.candidate,
                lane.requests,
                False,
                budget,
                set(),
                _report,
            )
        except Exception as exc:
            return exc

    def outcome(self, handle: Any) -> Any:
        return handle


class Done:
    """A finished piece of work (handles must be hashable)."""

    def __init__(self, value: Any) -> None:
        self.value = value


class DirectShards:
    """Local shards run at submission, in this process."""

    capacity = 1
    concurrent_with_relays = False

    def fingerprint(self, spec: LocalModelSpec) -> Any:
        try:
            return Done(fingerprint_of(asdict(spec)))
        except Exception as exc:
            return Done(exc)

    def replay(self, spec: LocalModelSpec, fingerprint: str, shard: Shard) -> Any:
        try:
            return Done(replay_shard(asdict(spec), fingerprint, shard.requests, _report))
        except Exception as exc:
            return Done(exc)

    def done(self, handles: Sequence[Any]) -> list[Any]:
        return list(handles)

    def outcome(self, handle: Any) -> Any:
        return handle.value


def replay_here(settings: PlannerSettings, **kwargs: Any) -> dict[str, Any]:
    """The replay stage as `migration-planner replay` runs it, minus Prefect."""
    warehouse = str(kwargs.pop("warehouse", settings.warehouse.path))
    return make_replay(
        settings,
        DirectRelays(settings, warehouse),
        DirectShards(),
        warehouse=warehouse,
        **kwargs,
    )


def write_settings(tmp: Path, body: str) -> PlannerSettings:
    """planner.toml with the warehouse and output folder in ``tmp`` and ``body`` below."""
    config = tmp / "planner.toml"
    config.write_text(
        f"[warehouse]\npath = {json.dumps(str(tmp / 'planner.duckdb'))}\n"
        f"[output]\ndir = {json.dumps(str(tmp / 'out'))}\n" + body,
        encoding="utf-8",
    )
    return load_settings(config)


def relay_block(name: str, base_url: str, model: str = "echo", extra: str = "") -> str:
    return f"""
[[candidates]]
name = "{name}"
kind = "relay"
base_url = "{base_url}"
model = "{model}"
price_in = 0.5
price_out = 1.5
max_concurrency = 4
max_retries = 0
{extra}
"""


@pytest.fixture
def relay() -> Iterator[ServerThread]:
    """An OpenAI-compatible relay on 127.0.0.1 (its answers echo the prompt)."""
    with ServerThread(create_app(EchoEngine("echo"))) as server:
        yield server


@pytest.fixture
def pipe() -> SimpleNamespace:
    """The helpers above, for test modules (conftest modules are not imported by name)."""
    return SimpleNamespace(
        DirectRelays=DirectRelays,
        DirectShards=DirectShards,
        replay_here=replay_here,
        write_settings=write_settings,
        relay_block=relay_block,
    )


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight tiny decoder (seeded), built once; copy it before changing it."""
    from planner.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("pipeline-tiny")
    return build_tiny_model(
        root / "tiny-fp32", layers=2, hidden=64, heads=4, context_length=512, seed=0
    )
