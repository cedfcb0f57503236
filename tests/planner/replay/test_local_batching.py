"""Batching that says what it did, on real folders: a folder that cannot batch is known up front
(Gemma 3's sliding window) and a batch that fails at run time sends its requests one at a time;
either way the shard's run, the candidate's replay summary, the `replay` command's report and
the plan's notes say "batch size N requested, 1 used: why" once."""

from __future__ import annotations

import json
from pathlib import Path

from demo.logs import write_chat_log
from flows.cli_replay import format_report
from pipeline.evidence import device_fits
from pipeline.replay import draw
from planner.models.devices import MB
from planner.replay.local import LocalBackend
from planner.replay.protocol import ReplayRequest, ReplayResult
from planner.replay.shards import merge_runs, release_models, replay_shard
from planner.settings import load_settings
from tests.conftest import real_model
from warehouse.connection import open_warehouse
from warehouse.ingest import ingest_paths


def ask(i: int, text: str, max_tokens: int = 8) -> ReplayRequest:
    return ReplayRequest(f"r{i}", [{"role": "user", "content": text}], max_tokens)


def test_a_folder_that_cannot_batch_is_reported_in_the_shard_summary_and_command() -> None:
    folder = real_model("gemma3-270m", "int4")
    spec = {
        "name": "gemma",
        "path": str(folder),
        "threads": None,
        "max_new_tokens": 8,
        "batch_size": 4,
    }
    requests = [ask(i, f"Number {i} is") for i in range(3)]
    fingerprint = LocalBackend("gemma", folder).fingerprint()
    try:
        out = replay_shard(spec, fingerprint, [r.__dict__ for r in requests], lambda _: None)
    finally:
        release_models()
    batching = out["run"]["batching"]
    assert batching["requested"] == 4 and batching["used"] == 1
    assert batching["why"].startswith("sliding-window attention (window 512")
    assert [r["error_kind"] for r in out["rows"]] == [None, None, None]
    merged = merge_runs("gemma", fingerprint, 3, 0, [out["run"], out["run"]], out["rows"])
    assert merged["batching"] == batching
    report = format_report(
        {
            "sample": {"sample_id": "s", "total": 3, "counts": {"x": 3}, "uncertain_extra": 0},
            "spent_usd": 0.0,
            "max_cost_usd": 1.0,
            "candidates": [{**merged, "kind": "local", "stored": None}],
        }
    )
    lines = [line for line in report.splitlines() if "requested" in line]
    assert lines == [f"gemma: batch size 4 requested, 1 used: {batching['why']}"]


def test_a_batch_that_fails_runs_one_at_a_time_from_then_on_and_says_why() -> None:
    """SmolLM2 batches, but four long prompts' prefill logits do not fit a tight memory limit
    that one prompt's do: the first batch fails, its requests and the rest run one at a time."""
    folder = real_model("smollm2-135m-instruct", "int4")
    backend = LocalBackend("smol", folder, max_new_tokens=8, batch_size=4)
    # The limit counts from this backend's own load. A probe loaded first measured the model's
    # resident growth, which depends on what earlier tests in the process freed (17 MB once,
    # 179 MB alone): a limit from it made the single long prompts fail too, now and then.
    runtime = backend.runtime
    runtime.memory_limit_bytes = runtime.own_bytes() + 150 * MB
    assert backend.batching == {"requested": 4, "used": 4, "why": None}
    long_text = "Please summarize the following note about the billing page. " * 25
    requests = [ask(i, f"{i}: {long_text}") for i in range(4)] + [ask(9, "Say hi.")]
    results: list[ReplayResult] = []
    backend.replay(requests, results.append)
    assert sorted(r.request_id for r in results) == ["r0", "r1", "r2", "r3", "r9"]
    assert all(r.ok for r in results), [r.error_message for r in results]
    batching = backend.batching
    assert batching is not None and batching["used"] == 1
    assert batching["why"].startswith("a batch of 4 failed (ModelMemoryError")
    assert "requests ran one at a time from then on" in batching["why"]
    backend.close()


def test_the_plan_notes_a_candidate_that_cannot_batch(tmp_path: Path) -> None:
    warehouse = tmp_path / "planner.duckdb"
    log = tmp_path / "log.jsonl"
    write_chat_log(log, 40, seed=1)
    con = open_warehouse(warehouse)
    ingest_paths(con, [log])
    con.close()
    draw(str(warehouse), 2, 0, 0)
    gemma, smol = real_model("gemma3-270m", "int4"), real_model("smollm2-135m-instruct", "int4")
    config = tmp_path / "planner.toml"
    config.write_text(
        f"[warehouse]\npath = {json.dumps(str(warehouse))}\n"
        f'[[candidates]]\nname = "gemma"\nkind = "local"\npath = {json.dumps(str(gemma))}\n'
        "batch_size = 8\n"
        f'[[candidates]]\nname = "smol"\nkind = "local"\npath = {json.dumps(str(smol))}\n'
        "batch_size = 8\n",
        encoding="utf-8",
    )
    fits, _, notes = device_fits(load_settings(config), str(warehouse))
    assert set(fits) == {"gemma", "smol"}
    batching = [n for n in notes if "requested" in n]
    assert len(batching) == 1
    assert batching[0].startswith("gemma: batch size 8 requested, 1 used: sliding-window")
