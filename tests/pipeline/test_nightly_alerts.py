"""The nightly run's alerts and history on real parts, without Prefect: a route deployed last
night that degrades tonight raises the alert (and the relay's new model is named), and two
warehouses share one history without touching each other's runs. The relay is the project's
model server on 127.0.0.1, answering as production did until its provider moves the alias."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from demo.logs import write_chat_log
from pipeline.classify import classify_when_due
from pipeline.nightly import run_nightly
from pipeline.plan import make_plan
from planner.messages import message_text
from planner.models.server import ServerThread, create_app
from planner.runs.folder import new_run_id
from planner.runs.history import open_history
from planner.settings import PlannerSettings
from warehouse.connection import open_warehouse
from warehouse.ingest import ingest_paths

ALIAS = "deepseek-chat"


class ProductionLike:
    """Answers what production answered to the same last user message (a relay as good as
    production), or a useless sentence once ``degraded``."""

    def __init__(self, log: Path) -> None:
        self.model_name = ALIAS
        self.degraded = False
        self.answers: dict[str, str] = {}
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
                last = [m for m in record["request"]["messages"] if m["role"] == "user"][-1]
                text = record["response"]["choices"][0]["message"]["content"]
            except (ValueError, KeyError, IndexError, TypeError):
                continue
            self.answers[message_text(last["content"])] = text

    def complete(
        self, messages: list[dict[str, Any]], max_tokens: int, temperature: float
    ) -> Iterator[str]:
        last = [m for m in messages if m.get("role") == "user"][-1]
        text = self.answers.get(message_text(last.get("content")), "")
        if self.degraded or not text:
            text = "Sorry, I cannot help with that request today."
        yield from re.findall(r"\s*\S+", text)

    def count_tokens(self, text: str) -> int:
        return len(text.split())


class DirectSteps:
    """The nightly stages called directly (the flow records them in Prefect instead)."""

    def __init__(self, settings: PlannerSettings, pipe: Any) -> None:
        self.settings = settings
        self.pipe = pipe
        self.warehouse = str(settings.warehouse.path)
        self.lines: list[str] = []

    def ingest(self, paths: list[str]) -> dict[str, Any]:
        con = open_warehouse(self.warehouse)
        try:
            return ingest_paths(con, paths).as_dict()
        finally:
            con.close()

    def classify(self) -> dict[str, Any]:
        return classify_when_due(self.settings, self.warehouse)

    def replay(self) -> dict[str, Any]:
        return self.pipe.replay_here(self.settings)

    def plan(
        self, out_dir: Path, classifier_path: Path, run_id: str, judge_spent_usd: float = 0.0
    ) -> dict[str, Any]:
        return make_plan(
            self.settings,
            run_dir=out_dir,
            run_id=run_id,
            classifier_path=str(classifier_path),
            judge_spent_usd=judge_spent_usd,
        )

    def info(self, line: str) -> None:
        self.lines.append(line)

    def warning(self, line: str) -> None:
        self.lines.append("warning: " + line)


def settings_for(
    pipe: Any, root: Path, relay_url: str, logs: Path, history: Path
) -> PlannerSettings:
    root.mkdir(parents=True, exist_ok=True)
    return pipe.write_settings(
        root,
        f"""
[objectives]
quality_floor = 0.8
p95_latency_ms = 4000

[replay]
per_type = 60                   # enough for an always-right relay to qualify at floor 0.8
uncertain = 0
max_new_tokens = 512

[history]
url = "sqlite:///{history}"

[run]
logs = [{json.dumps(str(logs))}]
"""
        + pipe.relay_block("relay", relay_url, ALIAS),
    )


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    path = tmp_path / "logs" / "prod.jsonl"
    write_chat_log(path, 600, seed=3)
    return path


def test_a_deployed_route_that_degrades_tonight_raises_the_alert(
    pipe: Any, tmp_path: Path, logs: Path
) -> None:
    engine = ProductionLike(logs)
    with ServerThread(create_app(engine)) as relay:
        settings = settings_for(pipe, tmp_path / "a", relay.base_url, logs, tmp_path / "h.sqlite")
        steps = DirectSteps(settings, pipe)
        first = run_nightly(settings, [str(logs)], new_run_id(), steps, "test")
        deployed = {r.task_type for r in first.figures.routes if r.migrated}  # type: ignore[union-attr]
        assert deployed  # the relay answers as production did: types move to it
        assert first.signals == []

        # Tonight the provider moves the alias to a worse model. One answer had expired, so it
        # is sent again, names the new model, and the rest of the sample follows.
        engine.degraded = True
        relay.app.state.served_model = "deepseek-v9-lite"
        con = open_warehouse(settings.warehouse.path)
        con.execute(
            "UPDATE replays SET created_at = created_at - INTERVAL 30 DAY WHERE replay_id = "
            "(SELECT min(replay_id) FROM replays)"
        )
        con.close()
        second = run_nightly(settings, [str(logs)], new_run_id(), steps, "test")
    kinds = [(s.kind, s.task_type) for s in second.signals]
    below = {t for k, t in kinds if k == "quality_below_floor"}
    assert below == deployed  # every deployed route, re-measured on tonight's evidence
    assert ("relay_serving_changed", None) in kinds
    serving = next(s for s in second.signals if s.kind == "relay_serving_changed")
    assert "deepseek-v9-lite (was deepseek-chat)" in serving.message
    assert {t for k, t in kinds if k == "decision_flipped"} == deployed
    assert kinds.index(("relay_serving_changed", None)) > max(
        kinds.index(("quality_below_floor", t)) for t in deployed
    )
    summary = second.summary()
    assert all(not c["holds"] for c in summary["deployed_checks"])
    assert {c["task_type"] for c in summary["deployed_checks"]} == deployed
    record = open_history(settings.history_url(), scope=settings.history_scope())
    try:
        stored = record.get_run(second.run_id).signals
    finally:
        record.close()
    assert [s["kind"] for s in stored] == [k for k, _ in kinds]


def test_two_warehouses_share_one_history_without_touching_each_others_runs(
    pipe: Any, tmp_path: Path, logs: Path
) -> None:
    engine = ProductionLike(logs)
    history = tmp_path / "shared.sqlite"
    with ServerThread(create_app(engine)) as relay:
        eu = settings_for(pipe, tmp_path / "eu", relay.base_url, logs, history)
        us = settings_for(pipe, tmp_path / "us", relay.base_url, logs, history)
        assert eu.history_scope() != us.history_scope()
        eu_first = run_nightly(eu, [str(logs)], new_run_id(), DirectSteps(eu, pipe), "test")
        # Europe's next run is under way (it holds Europe's lock, not America's) ...
        live = new_run_id()
        with open_history(eu.history_url(), scope=eu.history_scope()) as store:
            from datetime import UTC, datetime

            store.start_run(live, started_at=datetime.now(UTC), config_hash="x", trigger="test")
        # ... while America runs: it must not mark Europe's run interrupted, nor diff against it
        us_steps = DirectSteps(us, pipe)
        us_first = run_nightly(us, [str(logs)], new_run_id(), us_steps, "test")
    assert us_first.diff is None  # America's first run has no previous run
    assert not any("interrupted" in line for line in us_steps.lines)
    with open_history(eu.history_url(), scope=eu.history_scope()) as store:
        assert store.get_run(live).status == "running"
        assert [r.run_id for r in store.list_runs()] == [live, eu_first.run_id]
    with open_history(us.history_url(), scope=us.history_scope()) as store:
        assert [r.run_id for r in store.list_runs()] == [us_first.run_id]
    index = (tmp_path / "us" / "out" / "index.html").read_text("utf-8")
    assert us_first.run_id in index and eu_first.run_id not in index
