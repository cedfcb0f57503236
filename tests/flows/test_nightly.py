"""The nightly parent flow as real Prefect flow runs on a real warehouse, a committed demo model and
a relay played by the project's model server on 127.0.0.1: a first run, a second run that reuses
everything, a decision flip that alerts a webhook, a render failure that leaves the last good plan,
a run killed mid-replay that the next run finishes, and a second run refused while one holds the
lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from typer.testing import CliRunner

from demo.logs import write_chat_log
from planner.models.server import EchoEngine, FaultConfig, ServerThread, create_app
from warehouse import open_warehouse

ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / "models" / "edge-small" / "int4"
CHAT = "/v1/chat/completions"
KEY_ENV = "NIGHTLY_TEST_RELAY_KEY"


def write_config(
    tmp: Path, relay_url: str, logs: Path, *, floor: float = 0.9, extra: str = ""
) -> Path:
    text = f"""
[warehouse]
path = {json.dumps(str(tmp / "planner.duckdb"))}

[objectives]
quality_floor = {floor}
p95_latency_ms = 4000

[replay]
per_type = 6
uncertain = 0
max_new_tokens = 16

[output]
dir = {json.dumps(str(tmp / "out"))}

[run]
logs = [{json.dumps(str(logs))}]
shard_size = 4

[[candidates]]
name = "edge-small-int4"
kind = "local"
path = {json.dumps(str(LOCAL))}

[[candidates]]
name = "relay"
kind = "relay"
base_url = {json.dumps(relay_url)}
model = "echo"
api_key_env = "{KEY_ENV}"
price_in = 0.1
price_out = 0.2
max_concurrency = 2
max_retries = 3
{extra}
"""
    path = tmp / "planner.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def relay(monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerThread]:
    monkeypatch.setenv(KEY_ENV, "test-key-123")
    with ServerThread(create_app(EchoEngine("echo"), FaultConfig(), api_key="test-key-123")) as s:
        yield s


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    path = tmp_path / "logs" / "prod.jsonl"
    path.parent.mkdir()
    write_chat_log(path, 300, seed=3, malformed=2)
    return path


def run_once(config: Path) -> tuple[Any, dict[str, Any]]:
    from flows.nightly import nightly_flow

    state = nightly_flow(config_path=str(config), return_state=True)
    return state, state.result()


def history_runs(config: Path) -> list[Any]:
    from planner.runs.history import open_history
    from planner.settings import load_settings

    store = open_history(load_settings(config).history_url())
    try:
        return store.list_runs()
    finally:
        store.close()


@pytest.mark.usefixtures("prefect_harness")
def test_second_run_reuses_everything_and_history_diffs(
    tmp_path: Path, relay: ServerThread, logs: Path
) -> None:
    config = write_config(tmp_path, relay.base_url, logs)
    first_state, first = run_once(config)
    assert first_state.is_completed()
    assert first["inputs"]["loaded"] == 300 and first["inputs"]["rejected"] == 2
    assert first["classifier"]["trained"] and first["inputs"]["replayed"] > 0
    plan = Path(first["plan_html"])
    assert plan.is_file() and plan.parent.name == first["run_id"]
    sent_first = sum(1 for _, p, s in relay.request_log if p == CHAT and s == 200)
    assert sent_first > 0

    second_state, second = run_once(config)
    assert second_state.is_completed()
    assert second["inputs"]["loaded"] == 0  # the file was ingested before (content hash)
    assert second["classifier"]["trained"] is False
    assert second["classifier"]["predicted"] is False
    assert second["inputs"]["replayed"] == 0
    assert second["inputs"]["replays_cached"] == first["inputs"]["replayed"]
    assert sum(1 for _, p, s in relay.request_log if p == CHAT and s == 200) == sent_first
    assert second["previous_run"] == first["run_id"]
    assert Path(second["diff_html"]).is_file()
    assert second["attention"] == []  # same data, same config: nothing changed

    runs = history_runs(config)
    assert [r.run_id for r in runs] == [second["run_id"], first["run_id"]]
    assert {r.status for r in runs} == {"completed"}
    index = (tmp_path / "out" / "index.html").read_text("utf-8")
    assert f"{first['run_id']}/plan.html" in index and f"{second['run_id']}/diff.html" in index

    # A decision flip (a lower floor migrates more) alerts, in the state and on the webhook.
    received: list[dict[str, Any]] = []
    hook = FastAPI()

    @hook.post("/hooks/secret-token")
    async def _receive(request: Request) -> dict[str, bool]:
        received.append(await request.json())
        return {"ok": True}

    with ServerThread(hook) as hook_server:
        os.environ["PLANNER_WEBHOOK_URL"] = hook_server.base_url.removesuffix("/v1") + (
            "/hooks/secret-token"
        )
        os.environ["PLANNER_OBJECTIVES__QUALITY_FLOOR"] = "0.05"
        os.environ["PLANNER_VERDICT__MIN_SAMPLES"] = "5"  # 6 samples a type in this test
        try:
            third_state, third = run_once(config)
        finally:
            os.environ.pop("PLANNER_WEBHOOK_URL")
            os.environ.pop("PLANNER_OBJECTIVES__QUALITY_FLOOR")
            os.environ.pop("PLANNER_VERDICT__MIN_SAMPLES")
    assert third_state.name == "Needs attention"
    assert third["attention"] and third_state.message.startswith("Needs attention")
    assert third["webhook"]["ok"] is True
    assert len(received) == 1 and received[0]["run_id"] == third["run_id"]
    kinds = {signal["kind"] for signal in received[0]["signals"]}
    assert "decision_flipped" in kinds
    assert f"Attention needed ({len(third['attention'])})" in received[0]["text"]


@pytest.mark.usefixtures("prefect_harness")
def test_failing_render_keeps_the_last_good_plan(
    tmp_path: Path, relay: ServerThread, logs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.plan

    config = write_config(tmp_path, relay.base_url, logs)
    _, good = run_once(config)
    good_plan = Path(good["plan_html"])
    before = good_plan.read_bytes()

    def broken(*args: Any, **kwargs: Any) -> Path:
        raise OSError("disk full while writing plan.html")

    monkeypatch.setattr(pipeline.plan, "write_plan", broken)
    from flows.nightly import nightly_flow

    state = nightly_flow(config_path=str(config), return_state=True)
    assert state.is_failed()
    out = tmp_path / "out"
    assert good_plan.read_bytes() == before
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [good["run_id"]]
    runs = history_runs(config)
    assert [r.status for r in runs] == ["failed", "completed"]
    assert "disk full" in (runs[0].error or "")
    assert f"{good['run_id']}/plan.html" in (out / "index.html").read_text("utf-8")


def test_a_second_run_is_refused_while_one_holds_the_lock(tmp_path: Path) -> None:
    from flows.cli import app

    warehouse = tmp_path / "planner.duckdb"
    config = tmp_path / "planner.toml"
    config.write_text(f"[warehouse]\npath = {json.dumps(str(warehouse))}\n", encoding="utf-8")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from flows.lock import run_lock\n"
            # as `run` does: the CLI takes it first, then the flow, which names the run
            "with run_lock(sys.argv[1], run='starting'):\n"
            "    with run_lock(sys.argv[1], run='holder'):\n"
            "        print('held', flush=True)\n"
            "        time.sleep(60)\n",
            str(warehouse),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        result = CliRunner().invoke(app, ["run", "-c", str(config)])
        assert result.exit_code == 2
        assert "run holder" in result.output and str(warehouse) in result.output
        assert not warehouse.exists()  # refused before touching anything
    finally:
        holder.kill()
        holder.wait(timeout=10)
    # the kernel released the lock with the process: the next run may take it
    from flows.lock import run_lock

    with run_lock(warehouse):
        pass


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_run_killed_mid_replay_is_finished_by_the_next(
    tmp_path: Path, logs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "test-key-123")
    faults = FaultConfig(extra_latency_ms=150)
    with ServerThread(create_app(EchoEngine("echo"), faults, api_key="test-key-123")) as slow:
        config = write_config(tmp_path, slow.base_url, logs)
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "PREFECT_HOME": str(tmp_path / "prefect-child"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        env.pop("PREFECT_API_URL", None)
        child = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "run", "-c", str(config)],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its group holds the Prefect server it starts, too
        )
        deadline = time.monotonic() + 240
        while sum(1 for _, p, s in slow.request_log if p == CHAT and s == 200) < 12:
            assert child.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the run never reached the relay"
            time.sleep(0.02)
        os.killpg(child.pid, signal.SIGKILL)  # as a dying machine would: nothing left behind
        child.wait(timeout=10)
        sent_before = sum(1 for _, p, _ in slow.request_log if p == CHAT)

        con = open_warehouse(tmp_path / "planner.duckdb", read_only=True)
        stored = con.execute("SELECT count(*) FROM replays WHERE candidate = 'relay'").fetchall()[
            0
        ][0]
        con.close()
        assert stored > 0  # finished shards were stored before the kill
        runs = history_runs(config)
        assert [r.status for r in runs] == ["running"]

        state, result = run_once(config)
        sent_after = sum(1 for _, p, _ in slow.request_log if p == CHAT)
    assert state.is_completed()
    assert result["inputs"]["replays_cached"] >= stored
    con = open_warehouse(tmp_path / "planner.duckdb", read_only=True)
    total, distinct = con.execute(
        "SELECT count(*), count(DISTINCT request_id) FROM replays WHERE candidate = 'relay'"
    ).fetchall()[0]
    con.close()
    assert total == distinct  # nothing replayed twice into the warehouse
    assert sent_after - sent_before == total - stored  # stored replies were not asked again
    assert [r.status for r in history_runs(config)] == ["completed", "interrupted"]
    assert Path(result["plan_html"]).is_file()
