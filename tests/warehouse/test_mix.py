"""The task mix over windows of traffic on a real warehouse: a small last window that shifts
completely is seen on a large warehouse (whose overall mix barely moves), and a retrained
classifier is measured on the same requests."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

from planner.runs.alerts import WindowDrift, drift_signals
from planner.runs.diff import mix_drift
from warehouse.connection import open_warehouse
from warehouse.ingest import ingest_paths
from warehouse.mix import mix_windows, relabel_counts

MIX = ("classification", "extraction", "summarization", "chatbot")
START = datetime(2026, 10, 1, tzinfo=UTC)


def write_log(
    path: Path, prefix: str, n: int, start: datetime, days: float, types: tuple[str, ...]
) -> None:
    step = timedelta(days=days) / n
    lines = []
    for i in range(n):
        task = types[i % len(types)]
        lines.append(
            json.dumps(
                {
                    "id": f"{prefix}-{i}",
                    "timestamp": (start + i * step).isoformat(),
                    "request": {
                        "model": "gpt-4.1",
                        "messages": [{"role": "user", "content": f"{task} {prefix} {i}"}],
                    },
                    "response": {"choices": [{"message": {"role": "assistant", "content": "ok"}}]},
                    "metadata": {"task_type": task},
                }
            )
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def overall(con: duckdb.DuckDBPyConnection) -> dict[str, float]:
    rows = con.execute("SELECT label_task_type, count(*) FROM requests GROUP BY 1").fetchall()
    return {str(t): float(n) for t, n in rows}


def test_a_small_window_that_shifts_completely_drifts_on_a_large_warehouse(tmp_path: Path) -> None:
    con = open_warehouse(tmp_path / "planner.duckdb")
    try:
        write_log(tmp_path / "month.jsonl", "old", 20_000, START, 20, MIX)
        ingest_paths(con, [tmp_path / "month.jsonl"])
        before_all = overall(con)

        run_started = datetime.now(UTC).replace(tzinfo=None)
        write_log(tmp_path / "night.jsonl", "new", 200, START + timedelta(days=20), 1, ("code",))
        ingest_paths(con, [tmp_path / "night.jsonl"])
        # the warehouse as a whole barely moved: comparing whole mixes run to run never alerts
        assert mix_drift(before_all, overall(con)) < 0.01

        windows = mix_windows(con, new_since=run_started, window_days=1)
        assert windows is not None
        assert windows.last.counts == {"code": 200}
        assert windows.last.label == "this run's 200 new requests"
        assert windows.before.requests == 1000  # the day before the new requests (20,000 / 20)
        assert set(windows.before.counts) == set(MIX)
        drift = WindowDrift(
            windows.last.label, windows.before.label, windows.last.counts, windows.before.counts
        )
        assert drift.distance == 1.0
        [signal] = drift_signals(drift, 0.15)
        assert signal.kind == "drift" and "code 0% → 100%" in signal.message

        # no new requests (a run without logs): the last day of logged time against the day before
        quiet = mix_windows(con, new_since=datetime.now(UTC).replace(tzinfo=None), window_days=1)
        assert quiet is not None and quiet.last.label == "the last 1 day"
        # (the last day of logged time reaches a few minutes back into the old traffic)
        assert quiet.last.counts["code"] == 200 and quiet.last.requests - 200 <= 4
        assert 995 <= quiet.before.requests <= 1000
        # a window with nothing before it cannot drift
        assert mix_windows(con, new_since=datetime(2000, 1, 1), window_days=1) is None
    finally:
        con.close()


def test_a_retrained_classifier_is_measured_on_the_same_requests(tmp_path: Path) -> None:
    con = open_warehouse(tmp_path / "planner.duckdb")
    try:
        write_log(tmp_path / "log.jsonl", "r", 100, START, 2, MIX)
        ingest_paths(con, [tmp_path / "log.jsonl"])
        ids = [r[0] for r in con.execute("SELECT request_id FROM requests ORDER BY 1").fetchall()]
        insert = (
            "INSERT INTO predictions SELECT unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), 0.9, "
            "false, ?, ?, ?::TIMESTAMP"
        )
        old_types = ["classification" if i % 2 else "extraction" for i in range(len(ids))]
        new_types = ["classification" if i % 4 else "extraction" for i in range(len(ids))]
        con.execute(insert, [ids, old_types, "v1", "pr-1", datetime(2026, 11, 1)])
        con.execute(insert, [ids[:80], new_types[:80], "v2", "pr-2", datetime(2026, 11, 8)])
        assert (
            relabel_counts(con, "v1") is None or relabel_counts(con, "v1").previous_version == "v2"
        )  # type: ignore[union-attr]
        counts = relabel_counts(con, "v2")
        assert counts is not None and counts.previous_version == "v1"
        assert counts.before == {"classification": 40, "extraction": 40}  # the same 80 requests
        assert counts.after == {"classification": 60, "extraction": 20}
        # the traffic windows read the latest predictions only: the relabel is not traffic drift
        windows = mix_windows(con, new_since=None, window_days=1)
        assert windows is not None
        assert sum(windows.last.counts.values()) + sum(windows.before.counts.values()) == 100
    finally:
        con.close()
