"""The replay flow under Prefect, end to end: a warehouse filled by ingest, a relay played by the
project's model server with injected 429s and 503s and a key, a second relay with a wrong key, and
the `replay` command on top."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from demo.logs import write_chat_log
from flows.cli_common import new_app
from flows.cli_replay import replay
from flows.replay_flow import replay_flow
from planner.models.server import EchoEngine, FaultConfig, ServerThread, create_app
from planner.models.tiny import build_tiny_model
from warehouse.connection import open_warehouse
from warehouse.ingest import ingest_paths

GOOD_KEY = "sk-test-good-0123456789"
BAD_KEY = "sk-test-bad-9876543210"
CHAT = "/v1/chat/completions"


@pytest.fixture
def relay_server() -> Iterator[ServerThread]:
    faults = FaultConfig(rate_429=0.15, retry_after_s=0.2, rate_503=0.1, seed=5)
    with ServerThread(create_app(EchoEngine("echo"), faults, api_key=GOOD_KEY)) as server:
        yield server


def write_config(tmp_path: Path, base_url: str, warehouse: Path) -> Path:
    model = build_tiny_model(tmp_path / "tiny-model", context_length=512)
    config = tmp_path / "planner.toml"
    config.write_text(
        f"""
[warehouse]
path = "{warehouse}"

[[candidates]]
name = "relay-good"
kind = "relay"
base_url = "{base_url}"
model = "echo"
api_key_env = "TEST_RELAY_KEY"
price_in = 0.5
price_out = 1.5
rpm = 6000
max_concurrency = 4
timeout_s = 10
max_retries = 8

[[candidates]]
name = "relay-bad"
kind = "relay"
base_url = "{base_url}"
model = "echo-large"
api_key_env = "TEST_BAD_KEY"

[[candidates]]
name = "tiny-local"
kind = "local"
path = "{model}"
threads = 1

[replay]
per_type = 2
seed = 3
uncertain = 0
max_cost_usd = 1.0
max_new_tokens = 32
""",
        encoding="utf-8",
    )
    return config


def chat_requests(server: ServerThread) -> int:
    return sum(1 for _, path, _ in server.request_log if path == CHAT)


def test_replay_flow_and_command(
    prefect_harness: None,
    tmp_path: Path,
    relay_server: ServerThread,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_RELAY_KEY", GOOD_KEY)
    monkeypatch.setenv("TEST_BAD_KEY", BAD_KEY)
    warehouse = tmp_path / "planner.duckdb"
    log = tmp_path / "log.jsonl"
    write_chat_log(log, 300, seed=4)
    con = open_warehouse(warehouse)
    ingest_paths(con, [log])
    con.close()
    config = write_config(tmp_path, relay_server.base_url, warehouse)

    result = replay_flow(config_path=str(config))

    sample = result["sample"]
    runs = {r["candidate"]: r for r in result["candidates"]}
    good, bad, local = runs["relay-good"], runs["relay-bad"], runs["tiny-local"]
    assert sample["total"] == sum(sample["counts"].values()) > 10
    assert good["sent"] == good["ok"] == sample["total"] and good["stopped"] is None
    assert good["retries"] > 0  # the injected 429s/503s were ridden out
    assert good["stored"]["ok"] == sample["total"] and good["stored"]["errors"] == {}
    assert good["stored"]["cost_usd"] == pytest.approx(result["spent_usd"])
    assert 0 < result["spent_usd"] < 1.0
    assert bad["stopped"] == "auth" and "relay-bad" in bad["message"]
    assert "$TEST_BAD_KEY" in bad["message"]
    assert bad["stored"]["replays"] == 0
    assert local["sent"] == local["stored"]["replays"] == sample["total"]
    assert local["ok"] == local["stored"]["ok"] > 0 and local["cost_usd"] == 0
    assert local["stored"]["ttft_ms_p50"] > 0 and local["fingerprint"].startswith("local-")
    text = json.dumps(result)
    assert GOOD_KEY not in text and BAD_KEY not in text
    first_count = chat_requests(relay_server)
    assert first_count >= sample["total"] + good["retries"]

    con = open_warehouse(warehouse, read_only=True)
    (rows, distinct, leaked) = con.execute(  # type: ignore[misc]
        "SELECT count(*), count(DISTINCT request_id), "
        "count(*) FILTER (WHERE output_text LIKE ? OR error_message LIKE ?) FROM replays",
        [f"%{GOOD_KEY}%", f"%{BAD_KEY}%"],
    ).fetchone()
    con.close()
    assert rows == 2 * sample["total"] and distinct == sample["total"] and leaked == 0

    # the command: same sample, everything cached, nothing sent; the bad key is exit code 2
    app = new_app("test")
    app.command("replay")(replay)
    app.command("noop")(lambda: None)  # a group with two commands keeps "replay" a subcommand
    runner = CliRunner()
    cached = runner.invoke(
        app,
        ["replay", "--config", str(config), "--candidates", "relay-good,tiny-local", "--json"],
    )
    assert cached.exit_code == 0, cached.output
    payload = json.loads(cached.stdout)
    again, local_again = payload["candidates"]
    assert again["sent"] == 0 and again["cached"] == sample["total"]
    assert local_again["sent"] == 0 and local_again["cached"] == sample["total"]
    assert payload["sample"]["sample_id"] == sample["sample_id"]
    assert chat_requests(relay_server) == first_count

    table = runner.invoke(app, ["replay", "--config", str(config)])
    assert table.exit_code == 2, table.output
    assert "relay-good" in table.stdout and "latency p50/p95" in table.stdout
    assert "error: candidate 'relay-bad'" in table.stderr and "$TEST_BAD_KEY" in table.stderr
    assert BAD_KEY not in table.output

    unknown = runner.invoke(app, ["replay", "--config", str(config), "--candidates", "nope"])
    assert unknown.exit_code != 0
    assert "no candidate named 'nope'" in unknown.stderr + str(unknown.exception)
    assert isinstance(app, typer.Typer)


def test_config_errors_name_the_file_given(tmp_path: Path) -> None:
    from pipeline.replay import select_candidates
    from planner.errors import ConfigError
    from planner.settings import load_settings

    config = tmp_path / "team-a.toml"
    config.write_text('[warehouse]\npath = "w.duckdb"\n')
    settings = load_settings(config)
    with pytest.raises(ConfigError, match=r"team-a\.toml: no \[\[candidates\]\]"):
        select_candidates(settings, None)
    with pytest.raises(ConfigError, match=r"team-a\.toml: no candidate named 'x'"):
        settings.candidate("x")
