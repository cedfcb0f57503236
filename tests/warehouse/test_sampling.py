"""Sampling on a real DuckDB warehouse filled by ingesting generated chat logs."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import duckdb
import pytest

from demo.logs import write_chat_log
from warehouse.connection import open_warehouse
from warehouse.errors import EmptyWarehouseError
from warehouse.ingest import ingest_paths
from warehouse.sampling import draw_sample, latest_sample_id, sampled_requests


def warehouse_with(tmp_path: Path, n: int = 600, seed: int = 1) -> duckdb.DuckDBPyConnection:
    log = tmp_path / f"log-{seed}-{n}.jsonl"
    write_chat_log(log, n, seed)
    con = open_warehouse(":memory:")
    ingest_paths(con, [log])
    return con


def members(con: duckdb.DuckDBPyConnection, sample_id: str) -> set[str]:
    rows = con.execute("SELECT request_id FROM samples WHERE sample_id = ?", [sample_id])
    return {r[0] for r in rows.fetchall()}


def eligible_ids(con: duckdb.DuckDBPyConnection) -> set[str]:
    rows = con.execute(
        "SELECT request_id FROM requests WHERE coalesce(status_code, 200) < 400 "
        "AND response_text IS NOT NULL AND response_text <> ''"
    ).fetchall()
    return {r[0] for r in rows}


def test_same_seed_same_sample_other_seed_other_sample(tmp_path: Path) -> None:
    a, b = warehouse_with(tmp_path), warehouse_with(tmp_path)
    first = draw_sample(a, per_type=5, seed=7)
    second = draw_sample(b, per_type=5, seed=7)
    assert first.sample_id == second.sample_id and first.created and second.created
    assert members(a, first.sample_id) == members(b, second.sample_id)
    assert first.counts == second.counts
    again = draw_sample(a, per_type=5, seed=7)
    assert again.sample_id == first.sample_id and not again.created
    (rows,) = a.execute(  # type: ignore[misc]
        "SELECT count(*) FROM samples WHERE sample_id = ?", [first.sample_id]
    ).fetchone()
    assert rows == first.total  # drawing again wrote nothing
    other = draw_sample(a, per_type=5, seed=8)
    assert other.sample_id != first.sample_id
    assert members(a, other.sample_id) != members(a, first.sample_id)
    assert latest_sample_id(a) in {other.sample_id, first.sample_id}


def test_sizes_per_type_and_only_successful_calls(tmp_path: Path) -> None:
    con = warehouse_with(tmp_path)
    draw = draw_sample(con, per_type={"*": 2, "chatbot": 6, "code": 0}, seed=0)
    assert draw.counts["chatbot"] == 6
    assert "code" not in draw.counts
    assert all(n == 2 for t, n in draw.counts.items() if t != "chatbot")
    assert "unknown" in draw.counts  # unlabeled requests without predictions
    everything = draw_sample(con, per_type=10_000, seed=0)
    sampled = members(con, everything.sample_id)
    failed = {
        r[0]
        for r in con.execute(
            "SELECT request_id FROM requests WHERE status_code >= 400 OR response_text IS NULL"
        ).fetchall()
    }
    assert failed and not (sampled & failed)
    # exact repeats are sampled once, whichever production model they were logged under: one
    # per distinct list of messages among successful calls
    (distinct, per_model) = con.execute(  # type: ignore[misc]
        "SELECT count(DISTINCT md5(messages::VARCHAR)), count(DISTINCT prompt_hash) "
        "FROM requests WHERE status_code < 400 AND response_text IS NOT NULL"
    ).fetchone()
    assert len(sampled) == distinct < per_model < len(eligible_ids(con))
    (multi,) = con.execute(  # type: ignore[misc]
        "SELECT count(*) FROM (SELECT md5(messages::VARCHAR) FROM requests "
        "WHERE status_code < 400 AND response_text IS NOT NULL GROUP BY 1 "
        "HAVING count(DISTINCT model) > 1)"
    ).fetchone()
    assert everything.multi_model_prompts == multi > 0  # and the draw says so


def test_multi_turn_requests_keep_their_full_history(tmp_path: Path) -> None:
    con = warehouse_with(tmp_path)
    draw = draw_sample(con, per_type=10_000, seed=0)
    rows = sampled_requests(con, draw.sample_id)
    later_turns = [r for r in rows if (r.turn_index or 0) > 0]
    assert later_turns
    row = later_turns[0]
    (logged,) = con.execute(  # type: ignore[misc]
        "SELECT messages FROM requests WHERE request_id = ?", [row.request_id]
    ).fetchone()
    assert row.messages == json.loads(logged)
    assert sum(m["role"] == "assistant" for m in row.messages) >= 1
    assert row.response_text and row.max_tokens and row.temperature is not None


def test_predictions_win_labels_fall_back_and_uncertain_extras(tmp_path: Path) -> None:
    con = warehouse_with(tmp_path)
    ids = sorted(eligible_ids(con))
    # two prediction runs: the latest says 'extraction' for the first 40, uncertain for 20-39
    for run, task, at in (("old", "code", "2026-01-01"), ("new", "extraction", "2026-02-01")):
        con.executemany(
            "INSERT INTO predictions VALUES (?, ?, 0.5, ?, 'v1', ?, ?::TIMESTAMP)",
            [[rid, task, 20 <= i < 40, run, at] for i, rid in enumerate(ids[:40])],
        )
    draw = draw_sample(con, per_type=3, seed=0, uncertain=4)
    rows = sampled_requests(con, draw.sample_id)
    strata = dict(
        con.execute(
            "SELECT request_id, stratum FROM samples WHERE sample_id = ?", [draw.sample_id]
        ).fetchall()
    )
    quota = [r for r in rows if strata[r.request_id] == "type"]
    extra = [r for r in rows if strata[r.request_id] == "uncertain"]
    assert len(extra) == draw.uncertain_extra == 4
    assert all(r.uncertain and r.request_id in ids[20:40] for r in extra)
    assert all(r.task_type == "extraction" for r in extra)  # the latest prediction's type
    predicted = set(ids[:40])
    for r in quota:
        if r.request_id in predicted:
            assert r.task_type == "extraction"
        (label,) = con.execute(  # type: ignore[misc]
            "SELECT label_task_type FROM requests WHERE request_id = ?", [r.request_id]
        ).fetchone()
        if r.request_id not in predicted:
            assert r.task_type == (label or "unknown")
    assert Counter(r.task_type for r in quota) == Counter(draw.counts)
    assert not any(r.task_type == "code" and r.request_id in predicted for r in rows)


def test_a_grown_warehouse_keeps_yesterdays_sample(tmp_path: Path) -> None:
    con = warehouse_with(tmp_path, n=400, seed=1)
    old_ids = {r[0] for r in con.execute("SELECT request_id FROM requests").fetchall()}
    before = draw_sample(con, per_type=4, seed=0)
    old_members = members(con, before.sample_id)
    more = tmp_path / "more.jsonl"
    write_chat_log(more, 300, seed=2)
    # the second log reuses ids req-0000000..; rename them so they are new requests
    text = more.read_text(encoding="utf-8").replace('"id": "req-', '"id": "new-')
    more.write_text(text, encoding="utf-8")
    ingest_paths(con, [more])
    after = draw_sample(con, per_type=4, seed=0)
    assert after.sample_id != before.sample_id
    new_members = members(con, after.sample_id)
    # an old request enters only if it was sampled before: only new requests displace old ones
    assert new_members - (old_ids - old_members) == new_members
    assert len(new_members & old_members) >= len(old_members) // 3


def test_an_empty_warehouse_is_one_clear_error() -> None:
    con = open_warehouse(":memory:")
    with pytest.raises(EmptyWarehouseError, match="successful requests"):
        draw_sample(con, per_type=5)
