"""Shards in this process: cut by cache key, stored as each completes, a stop between shards
keeps what was stored and the next run replays only the rest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import pipeline.replay
from demo.logs import write_chat_log
from flows.replay_flow import replay_flow, request_stop
from planner.errors import ConfigError
from planner.models.tiny import build_tiny_model
from planner.replay.engine import cache_key
from planner.replay.protocol import ReplayRequest
from planner.replay.shards import merge_runs, pending_requests, split
from warehouse.connection import open_warehouse
from warehouse.ingest import ingest_paths
from warehouse.replays import store_replays


def request(rid: str, text: str) -> ReplayRequest:
    return ReplayRequest(rid, [{"role": "user", "content": text}], max_tokens=8)


def test_pending_requests_dedupes_and_skips_done() -> None:
    reqs = [request("a", "hi"), request("b", "hi"), request("c", "there"), request("d", "you")]
    done_key = cache_key("fp", reqs[2])
    asked: list[list[str]] = []

    def done(keys: Any) -> set[str]:
        asked.append(list(keys))
        return {done_key}

    todo, cached = pending_requests("fp", reqs, done, refresh=False)
    assert [r.request_id for r in todo] == ["a", "d"] and cached == 1  # "b" repeats "a"
    assert len(asked[0]) == 3
    todo, cached = pending_requests("fp", reqs, done, refresh=True)
    assert [r.request_id for r in todo] == ["a", "c", "d"] and cached == 0

    shards = split("m", todo, 2)
    assert [len(s.requests) for s in shards] == [2, 1]
    assert shards[1].requests[0]["request_id"] == "d" and shards[1].index == 1
    with pytest.raises(ConfigError, match="shard_size"):
        split("m", todo, 0)


def test_merge_runs_recomputes_percentiles_from_rows() -> None:
    run: dict[str, Any] = {
        "sent": 2,
        "ok": 1,
        "retries": 0,
        "cost_usd": 0.0,
        "skipped_budget": 0,
        "seconds": 1.5,
        "errors": {"runtime": 1},
        "stopped": None,
        "message": None,
    }
    rows: list[dict[str, Any]] = [
        {"error_kind": None, "ttft_ms": 10.0, "latency_ms": 100.0, "tokens_per_s": 5.0},
        {"error_kind": "runtime", "ttft_ms": None, "latency_ms": 900.0, "tokens_per_s": None},
        {"error_kind": None, "ttft_ms": 30.0, "latency_ms": 300.0, "tokens_per_s": 7.0},
    ]
    merged = merge_runs("m", "fp", 5, 1, [run, {**run, "stopped": "backend", "message": "x"}], rows)
    assert merged["sent"] == 4 and merged["ok"] == 2 and merged["seconds"] == 3.0
    assert merged["errors"] == {"runtime": 2}
    assert merged["stopped"] == "backend" and merged["message"] == "x"
    assert merged["ttft_ms_p50"] == 20.0 and merged["latency_ms_p50"] == 200.0
    assert merged["tokens_per_s"] == 6.0 and merged["planned"] == 5 and merged["cached"] == 1


def test_stop_between_shards_then_resume(
    prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    warehouse = tmp_path / "planner.duckdb"
    log = tmp_path / "log.jsonl"
    write_chat_log(log, 150, seed=2)
    con = open_warehouse(warehouse)
    ingest_paths(con, [log])
    con.close()
    model = build_tiny_model(tmp_path / "tiny", context_length=512)
    config = tmp_path / "planner.toml"
    config.write_text(
        f"""
[warehouse]
path = "{warehouse}"

[[candidates]]
name = "tiny-local"
kind = "local"
path = "{model}"
threads = 1

[[candidates]]
name = "missing-local"
kind = "local"
path = "{tmp_path / "no-such-model"}"

[replay]
per_type = 2
seed = 1
uncertain = 0
max_new_tokens = 8

[run]
shard_size = 4
""",
        encoding="utf-8",
    )
    stores: list[int] = []

    def store_then_stop(con: Any, rows: Any) -> None:  # Ctrl-C right after the first shard
        store_replays(con, rows)
        stores.append(len(rows))
        if len(stores) == 1:
            request_stop()

    monkeypatch.setattr(pipeline.replay, "store_replays", store_then_stop)
    first = replay_flow(config_path=str(config))
    runs = {r["candidate"]: r for r in first["candidates"]}
    total = first["sample"]["total"]
    assert total > 8 and stores == [4]
    assert runs["tiny-local"]["stopped"] == "interrupted"
    assert runs["tiny-local"]["sent"] == runs["tiny-local"]["stored"]["replays"] == 4
    assert runs["missing-local"]["stopped"] == "failed"
    assert "no-such-model" in runs["missing-local"]["message"]
    assert first["shards"] == {
        "total": -(-total // 4),
        "done": 1,
        "cached_requests": 0,
        "replayed_requests": 4,
    }

    second = replay_flow(config_path=str(config), candidates=["tiny-local"])
    (again,) = second["candidates"]
    assert again["stopped"] is None and again["cached"] == 4 and again["sent"] == total - 4
    assert again["stored"]["replays"] == total
    assert second["shards"]["total"] == second["shards"]["done"] == -(-(total - 4) // 4)
    assert sum(stores) == total
    con = open_warehouse(warehouse, read_only=True)
    (rows, keys) = con.execute(  # type: ignore[misc]
        "SELECT count(*), count(DISTINCT replay_id) FROM replays"
    ).fetchone()
    con.close()
    assert rows == keys == total
