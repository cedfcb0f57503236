"""Replay shards on a real Dask cluster (a LocalCluster of two worker processes): the warehouse
ends up exactly as the in-process path leaves it, the local model ran on the workers, and a second
run replays nothing."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from demo.logs import write_chat_log
from flows.cli_common import new_app
from flows.cli_replay import replay
from flows.replay_flow import replay_flow
from flows.shards import dask_task_runner
from planner.errors import ConfigError
from planner.models.server import EchoEngine, ServerThread, create_app
from planner.models.tiny import build_tiny_model
from warehouse.connection import open_warehouse
from warehouse.ingest import ingest_paths

KEY = "sk-test-dask-0123456789"
CHAT = "/v1/chat/completions"
SHARD = 3


@pytest.fixture
def relay() -> Iterator[ServerThread]:
    with ServerThread(create_app(EchoEngine("echo"), api_key=KEY)) as server:
        yield server


@pytest.fixture
def cluster(prefect_harness: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Two single-threaded worker processes; they inherit this environment (Prefect home, the
    relay key) the way real workers must be given it."""
    distributed = pytest.importorskip("distributed")
    monkeypatch.setenv("TEST_DASK_KEY", KEY)
    with distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0"
    ) as local:
        yield local


def write_config(tmp_path: Path, base_url: str) -> Path:
    model = build_tiny_model(tmp_path / "tiny-model", context_length=512)
    config = tmp_path / "planner.toml"
    config.write_text(
        f"""
[[candidates]]
name = "relay-echo"
kind = "relay"
base_url = "{base_url}"
model = "echo"
api_key_env = "TEST_DASK_KEY"
price_in = 0.5
price_out = 1.5
max_concurrency = 4
timeout_s = 10

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
max_new_tokens = 16
""",
        encoding="utf-8",
    )
    return config


def stored(warehouse: Path) -> list[tuple[Any, ...]]:
    con = open_warehouse(warehouse, read_only=True)
    try:
        return sorted(
            con.execute(
                "SELECT candidate, replay_id, request_id, candidate_fingerprint, output_text, "
                "completion_tokens, error_kind, cost_usd FROM replays"
            ).fetchall()
        )
    finally:
        con.close()


def chat_requests(server: ServerThread) -> int:
    return sum(1 for _, path, _ in server.request_log if path == CHAT)


def test_dask_shards_store_what_the_thread_runner_stores(
    cluster: Any, relay: ServerThread, tmp_path: Path
) -> None:
    log = tmp_path / "log.jsonl"
    write_chat_log(log, 200, seed=4)
    inline_wh, dask_wh = tmp_path / "inline.duckdb", tmp_path / "dask.duckdb"
    con = open_warehouse(inline_wh)
    ingest_paths(con, [log])
    con.close()
    shutil.copy(inline_wh, dask_wh)
    config = write_config(tmp_path, relay.base_url)

    inline = replay_flow(config_path=str(config), warehouse_path=str(inline_wh), shard_size=SHARD)
    sent_inline = chat_requests(relay)
    on_dask = replay_flow(
        config_path=str(config),
        warehouse_path=str(dask_wh),
        shard_size=SHARD,
        dask_address=cluster.scheduler_address,
    )

    total = on_dask["sample"]["total"]
    assert total == inline["sample"]["total"] > SHARD * 2  # several local shards
    local_shards = -(-total // SHARD)
    for result in (inline, on_dask):
        runs = {r["candidate"]: r for r in result["candidates"]}
        assert runs["tiny-local"]["stored"]["replays"] == runs["tiny-local"]["sent"] == total
        assert runs["relay-echo"]["stored"]["ok"] == runs["relay-echo"]["sent"] == total
        assert runs["tiny-local"]["stopped"] is None and runs["relay-echo"]["stopped"] is None
        assert result["shards"] == {
            "total": local_shards + 1,  # the local shards and the relay's lane
            "done": local_shards + 1,
            "cached_requests": 0,
            "replayed_requests": 2 * total,
        }
        assert 0 < result["spent_usd"] < 1.0
    assert on_dask["spent_usd"] == pytest.approx(inline["spent_usd"])
    assert chat_requests(relay) == 2 * sent_inline == 2 * total

    rows = stored(dask_wh)
    assert rows == stored(inline_wh)  # same keys, same answers, same errors, same costs
    assert len(rows) == 2 * total == len({r[1] for r in rows})  # one row per replay_id
    for name in ("relay-echo", "tiny-local"):
        mine = [r for r in rows if r[0] == name]
        assert len(mine) == len({r[2] for r in mine}) == total
    assert any(r[0] == "tiny-local" and r[4] for r in rows)  # the model wrote text

    # the model was loaded on the workers, not here (and this process let go of its copy)
    import planner.replay.shards

    held = cluster_models(cluster)
    assert any(models == ["tiny-local"] for models in held.values()), held
    assert planner.replay.shards._loaded == {}
    # ... and the workers reported their task runs to this Prefect server (settings travel along)
    assert completed_shard_runs() >= 2 * local_shards

    # "local": a LocalCluster of this run's own (the fingerprint task runs there)
    again = replay_flow(
        config_path=str(config), warehouse_path=str(dask_wh), shard_size=SHARD, dask_address="local"
    )
    assert again["shards"] == {
        "total": 0,
        "done": 0,
        "cached_requests": 2 * total,
        "replayed_requests": 0,
    }
    assert all(r["sent"] == 0 and r["cached"] == total for r in again["candidates"])
    assert stored(dask_wh) == rows and chat_requests(relay) == 2 * total


def completed_shard_runs() -> int:
    """Completed local-shard task runs the Prefect server knows of."""
    from prefect import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import TaskRunSort

    shards = TaskRunFilter(name=TaskRunFilterName(like_="replay-local-shard"))
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=shards, sort=TaskRunSort.ID_DESC, limit=200)
    return sum(1 for run in runs if run.state_type == StateType.COMPLETED)


def cluster_models(cluster: Any) -> dict[str, list[str]]:
    """Per worker, the local candidates its process holds loaded."""
    from distributed import Client

    def held() -> list[str]:
        import planner.replay.shards

        return sorted(spec.name for spec in planner.replay.shards._loaded)

    with Client(cluster) as client:
        return dict(client.run(held))


def test_missing_prefect_dask_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "prefect_dask", None)  # import prefect_dask now fails
    with pytest.raises(ConfigError, match="pip install prefect-dask"):
        dask_task_runner("tcp://127.0.0.1:8786")

    warehouse = tmp_path / "planner.duckdb"
    open_warehouse(warehouse).close()
    config = tmp_path / "planner.toml"
    config.write_text(f'[warehouse]\npath = "{warehouse}"\n', encoding="utf-8")
    app = new_app("test")
    app.command("replay")(replay)
    app.command("noop")(lambda: None)
    out = CliRunner().invoke(
        app, ["replay", "--config", str(config), "--dask-address", "tcp://127.0.0.1:8786"]
    )
    assert out.exit_code == 2, out.output
    assert out.stderr.strip().splitlines() == [
        "error: [run] dask_address: running replay shards on Dask (tcp://127.0.0.1:8786) "
        "needs prefect-dask: pip install prefect-dask"
    ]
