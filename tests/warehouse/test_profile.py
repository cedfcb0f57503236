"""Profile figures on a small hand-made log where every number can be worked out by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from warehouse import EmptyWarehouseError, ingest_paths, open_warehouse, profile_warehouse


def call(
    i: int,
    *,
    day: int,
    user: str,
    model: str = "gpt-4.1",
    conv: str | None = None,
    history: list[dict[str, Any]] | None = None,
    fail: bool = False,
    label: str | None = None,
) -> dict[str, Any]:
    msgs = [*(history or []), {"role": "user", "content": user}]
    out: dict[str, Any] = {
        "id": f"r{i}",
        "timestamp": f"2026-11-{day:02d}T10:00:00Z",
        "request": {"model": model, "messages": msgs},
        "latency_ms": 100.0 * i,
        "metadata": {"task_type": label} if label else {},
    }
    if conv:
        out["conversation_id"] = conv
    if fail:
        out |= {"status_code": 500, "error": {"message": "boom"}}
    else:
        out["response"] = {
            "choices": [{"message": {"role": "assistant", "content": "ok"}}],
            "usage": {"prompt_tokens": 1_000_000, "completion_tokens": 0},
        }
    return out


def test_profile_figures(tmp_path: Path) -> None:
    first = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    calls = [
        call(1, day=1, user="hi", conv="c1", label="chatbot"),
        call(2, day=1, user="more", conv="c1", history=first, label="chatbot"),
        call(3, day=2, user="same prompt"),
        call(4, day=2, user="same prompt"),
        call(5, day=3, user="x", model="gpt-4.1-mini"),
        call(6, day=3, user="y", fail=True),
    ]
    path = tmp_path / "l.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in calls))
    con = open_warehouse(tmp_path / "w.duckdb")
    ingest_paths(con, [path])
    p = profile_warehouse(con)
    o = p["overview"]
    assert (o["requests"], o["failed"], o["error_rate"], o["models"]) == (
        6,
        1,
        pytest.approx(1 / 6, abs=1e-4),
        2,
    )
    # 4 successful gpt-4.1 calls x 1M input tokens x $2 + 1 gpt-4.1-mini call x $0.40
    assert o["cost_usd"] == pytest.approx(8.4)
    assert [(d["requests"], d["failed"]) for d in p["by_day"]] == [(2, 0), (2, 0), (2, 1)]
    assert {m["model"]: m["requests"] for m in p["by_model"]} == {"gpt-4.1": 5, "gpt-4.1-mini": 1}
    c = p["conversations"]
    assert (
        c["multi_turn_conversations"],
        c["later_turn_requests"],
        c["requests_in_multi_turn"],
    ) == (1, 1, 2)
    r = p["exact_repeats"]
    assert (r["successful"], r["repeats"], r["repeat_cost_usd"]) == (5, 1, pytest.approx(2.0))
    assert p["latency_ms"]["max"] == 500.0  # the failed call is not in latency figures
    assert {lb["task_type"]: lb["requests"] for lb in p["by_label"]} == {
        "chatbot": 2,
        "(unlabeled)": 4,
    }


def test_empty_warehouse(tmp_path: Path) -> None:
    with pytest.raises(EmptyWarehouseError):
        profile_warehouse(open_warehouse(tmp_path / "w.duckdb"))
