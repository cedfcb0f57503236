"""Ingest of 1,000,000 chat-log lines against a bare DuckDB ``read_json`` of the same file.

Both run in their own child process (so each one's peak RSS is its own), one after the other, in
the same benchmark run. Goal: the project's ingest — validation, quarantine, normalization,
dedupe — takes at most 2x the bare read, with peak RSS under 2 GB.

A third child measures the floor under any version of this ingest: its own per-row SQL written
straight into ``requests`` in one pass, then the rows' line numbers; the ingest's scan time is
added to it in the summary.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from demo.logs import generate_records

_CHILD = r"""
import json, resource, sys, time
mode, path, db = sys.argv[1:4]
started = time.perf_counter()
steps = {}  # ours: step -> [wall, cpu], where the ingest's time goes
if mode == "bare":
    import duckdb
    con = duckdb.connect(db)
    con.execute("CREATE TABLE t AS SELECT * FROM read_json(?)", [path])
    rows = con.execute("SELECT count(*) FROM t").fetchall()[0][0]
elif mode == "floor":
    # What no version of this ingest can cut: its own per-row SQL (parse, checks, normalized
    # columns) in ONE pass straight into requests, then the line numbers. No scan (content hash,
    # line count), no staging table, no dedupe, no reject bookkeeping.
    from warehouse import open_warehouse
    from warehouse.chatlog import stage_chat_log_json_sql
    from warehouse.normalize import requests_row_sql
    from warehouse.pricing import load_price_table, price_table
    con = open_warehouse(db)
    con.execute("SET preserve_insertion_order = true")
    prices = price_table()
    load_price_table(con, sorted(prices), prices)
    row = requests_row_sql("n", "p", source_line="0", source_file="$path", batch_id="'floor'")
    con.execute("BEGIN")
    t, c = time.perf_counter(), time.process_time()
    con.execute(
        f"INSERT INTO requests SELECT {row} FROM ({stage_chat_log_json_sql()}) n "
        "LEFT JOIN _prices p ON p.model = n.priced_model WHERE NOT n.pending", {"path": path})
    steps["one pass"] = [time.perf_counter() - t, time.process_time() - c]
    t, c = time.perf_counter(), time.process_time()
    # rows are in file order: a line number is a row's place (DuckDB gives none while reading)
    low = con.execute("SELECT min(rowid) FROM requests").fetchall()[0][0]
    con.execute("UPDATE requests SET source_line = rowid - ? + 1", [low])
    con.execute("COMMIT")
    steps["line numbers"] = [time.perf_counter() - t, time.process_time() - c]
    rows = con.execute("SELECT count(*) FROM requests").fetchall()[0][0]
else:
    from warehouse import ingest_paths, open_warehouse
    import warehouse.ingest
    def timed(step, call, *args, **kwargs):
        t, c = time.perf_counter(), time.process_time()
        try:
            return call(*args, **kwargs)
        finally:
            spent = steps.setdefault(step, [0.0, 0.0])
            spent[0] += time.perf_counter() - t
            spent[1] += time.process_time() - c
    class Timed:
        # the connection, its statements timed by step (a thin wrapper: no work of its own)
        def __init__(self, con):
            self._con = con
        def execute(self, sql, *params):
            step = ("stage" if "TEMP TABLE _fast AS" in sql else
                    "insert" if "INSERT INTO requests" in sql else "other SQL")
            return timed(step, self._con.execute, sql, *params)
        def __getattr__(self, name):
            return getattr(self._con, name)
    scan = warehouse.ingest.scan_file
    warehouse.ingest.scan_file = lambda *a, **k: timed("scan", scan, *a, **k)
    con = open_warehouse(db)
    fmt = "parquet" if mode == "parquet" else "auto"
    rows = ingest_paths(Timed(con), [path], fmt=fmt).totals.loaded
con.close()
def peak_rss_mb():
    # VmHWM starts fresh at exec; ru_maxrss keeps the parent's peak across fork+exec on Linux.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"seconds": time.perf_counter() - started, "rows": rows,
                  "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_rss_mb": peak_rss_mb(),
                  "steps": steps}))
"""


def write_lines(path: Path, n: int, seed: int = 0) -> None:
    """``n`` distinct realistic lines: 20k generated records, repeated with fresh ids."""
    base = [json.dumps(r, ensure_ascii=False) for r in generate_records(20_000, seed)]
    with path.open("w", encoding="utf-8") as out:
        for i in range(n):
            line = base[i % len(base)]
            out.write(line.replace('"id": "req-', f'"id": "b{i // len(base)}-', 1) + "\n")


def _to_parquet(path: Path, target: Path) -> None:
    import duckdb

    con = duckdb.connect()
    con.execute(
        "COPY (SELECT * FROM read_json(?, format = 'newline_delimited')) TO ? (FORMAT parquet)",
        [str(path), str(target)],
    )
    con.close()


def _child(mode: str, path: Path, db: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, str(path), str(db)],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ.copy(),
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(n_lines: int | None = None) -> dict[str, object]:
    """``n_lines`` defaults to $INGEST_BENCH_LINES, else 1,000,000."""
    if n_lines is None:
        n_lines = int(os.environ.get("INGEST_BENCH_LINES", "1000000"))
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        path = Path(tmp) / "logs.jsonl"
        started = time.perf_counter()
        write_lines(path, n_lines)
        size_mb = path.stat().st_size / 1e6
        took = time.perf_counter() - started
        print(f"generated {n_lines:,} lines ({size_mb:,.0f} MB) in {took:.0f} s")
        bare = _child("bare", path, Path(tmp) / "bare.duckdb")
        ours = _child("ours", path, Path(tmp) / "planner.duckdb")
        floor = _child("floor", path, Path(tmp) / "floor.duckdb")
        parquet = Path(tmp) / "logs.parquet"
        _to_parquet(path, parquet)  # not timed: the same records, as Parquet
        from_parquet = _child("parquet", parquet, Path(tmp) / "parquet.duckdb")
    ratio = ours["seconds"] / bare["seconds"]
    print(f"{'':28} {'seconds':>9} {'CPU s':>7} {'rows/s':>11} {'peak RSS MB':>12}")
    for name, r in (
        ("bare duckdb read_json", bare),
        ("migration-planner ingest", ours),
        ("ingest of the same, Parquet", from_parquet),
        ("floor: its per-row SQL", floor),
    ):
        print(
            f"{name:28} {r['seconds']:9.2f} {r['cpu_seconds']:7.2f}"
            f" {r['rows'] / r['seconds']:11,.0f} {r['peak_rss_mb']:12,.0f}"
        )
    for name, r in (("JSONL ingest", ours), ("Parquet ingest", from_parquet), ("floor", floor)):
        steps = r.get("steps") or {}
        print(
            f"  {name} by step (wall s / CPU s): "
            + ", ".join(f"{k} {w:.2f}/{c:.2f}" for k, (w, c) in steps.items())
        )
    print(
        f"ingest / bare read: {ratio:.2f}x (goal <= 2.0x); peak RSS {ours['peak_rss_mb']:,.0f} MB "
        f"(goal < 2048 MB); Parquet ingest / JSONL ingest: "
        f"{from_parquet['seconds'] / ours['seconds']:.2f}x"
    )
    scan = (ours.get("steps") or {}).get("scan", [0.0])[0]
    numbering = (floor.get("steps") or {}).get("line numbers", [0.0])[0]
    print(
        "floor / bare read: its per-row SQL in one pass "
        f"{(floor['seconds'] - numbering) / bare['seconds']:.2f}x; with line numbers "
        f"{floor['seconds'] / bare['seconds']:.2f}x; with the scan too (content hash for "
        f"re-ingest, line count) {(floor['seconds'] + scan) / bare['seconds']:.2f}x"
    )
    return {
        "lines": n_lines,
        "file_mb": round(size_mb),
        "bare": bare,
        "ingest": ours,
        "ingest_parquet": from_parquet,
        "floor": floor,
        "ratio": round(ratio, 2),
    }


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.ingest_bench", description=__doc__)
    parser.add_argument("--lines", type=int, default=None, help="lines to generate (1,000,000)")
    run(parser.parse_args().lines)
