"""Relay client figures against the project's model server (EchoEngine) on 127.0.0.1.

1. Throughput: 1,000 streamed requests at concurrency 32 against a server that adds 200 ms to
   every answer. The ideal is concurrency / latency = 160 req/s; the goal is >= 0.8 of it.
2. Rate limit: rpm=120 over the real 60-second window, 180 requests (plus retries of injected
   429s, which spend the same budget), concurrency 32. Prints the most requests the *server* saw
   in any 60-s window, which must not exceed 120. Takes a little over a minute by design.
3. The same 1,000 requests as (1) through the replay engine, stored in a DuckDB file as they
   arrive: storage must not eat into the throughput of (1).

The model server runs in a process of its own (the client is measured without sharing a GIL
with it); its CPU time per request is printed beside the client's.

Run: ``.venv/bin/python -m bench.relay_bench``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from planner.models.server import EchoEngine, FaultConfig, ServerThread, create_app
from planner.replay.engine import RETRY_NEXT_RUN_KINDS, KeyedResult, replay_candidate
from planner.replay.protocol import ReplayRequest, ReplayResult
from planner.replay.relay import RelayBackend
from warehouse.connection import open_warehouse
from warehouse.replays import final_replay_ids, store_replays

CHAT = "/v1/chat/completions"


def _requests(n: int) -> list[ReplayRequest]:
    return [
        ReplayRequest(
            f"b{i:05d}",
            [
                {"role": "system", "content": "You are a support assistant."},
                {"role": "user", "content": f"Ticket {i}: where is my parcel? It was due Monday."},
            ],
            max_tokens=32,
        )
        for i in range(n)
    ]


_SERVER = """
import json, sys, time
from planner.models.server import EchoEngine, FaultConfig, ServerThread, create_app
faults = FaultConfig(**json.loads(sys.argv[1]))
with ServerThread(create_app(EchoEngine("echo"), faults)) as server:
    print(server.base_url, flush=True)
    start = time.process_time()
    sys.stdin.readline()
    cpu = time.process_time() - start
print(json.dumps({"log": server.request_log, "cpu_s": cpu}), flush=True)
"""


@dataclass
class Served:
    """The bench's model server: its URL, and once the block ends, its request log and CPU."""

    base_url: str
    log: list[tuple[float, str, int]] = field(default_factory=list)
    cpu_s: float | None = None


@contextmanager
def served(faults: FaultConfig, in_process: bool = False) -> Iterator[Served]:
    """The model server, by default in its own process so that the client is measured without
    sharing a GIL with it (and the server's CPU time can be told apart)."""
    if in_process:
        with ServerThread(create_app(EchoEngine("echo"), faults)) as server:
            info = Served(server.base_url, server.request_log)
            yield info
        return
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER, json.dumps(asdict(faults))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        base_url = proc.stdout.readline().strip()
        if not base_url.startswith("http"):
            raise RuntimeError("the bench model server did not start")
        info = Served(base_url)
        yield info
    finally:
        proc.stdin.write("\n")
        proc.stdin.close()
        tail = proc.stdout.read()
        proc.wait(timeout=30)
    report = json.loads(tail)
    info.log.extend((float(t), str(p), int(s)) for t, p, s in report["log"])
    info.cpu_s = float(report["cpu_s"])


def _peak_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def throughput(
    n: int = 1000, concurrency: int = 32, latency_ms: float = 200.0, in_process: bool = False
) -> dict[str, Any]:
    faults = FaultConfig(extra_latency_ms=latency_ms)
    with served(faults, in_process) as server:
        backend = RelayBackend("bench", server.base_url, "echo", max_concurrency=concurrency)
        out: list[ReplayResult] = []
        started, cpu = time.perf_counter(), time.process_time()
        backend.replay(_requests(n), out.append)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    ok = sum(r.ok for r in out)
    rate = n / seconds
    ideal = concurrency / (latency_ms / 1000)
    return {
        "requests": n,
        "ok": ok,
        "concurrency": concurrency,
        "added_latency_ms": latency_ms,
        "seconds": round(seconds, 2),
        "req_per_s": round(rate, 1),
        "ideal_req_per_s": round(ideal, 1),
        "ratio_of_ideal": round(rate / ideal, 3),
        "goal_ratio": 0.8,
        "server": "same process" if in_process else "own process",
        "client_cpu_ms_per_request": None if in_process else round(1000 * cpu / n, 2),
        "server_cpu_ms_per_request": (
            None if server.cpu_s is None else round(1000 * server.cpu_s / n, 2)
        ),
    }


def rate_limit(
    n: int = 180, rpm: int = 120, concurrency: int = 32, in_process: bool = False
) -> dict[str, Any]:
    faults = FaultConfig(rate_429=0.1, retry_after_s=None, extra_latency_ms=50, seed=11)
    with served(faults, in_process) as server:
        backend = RelayBackend(
            "bench",
            server.base_url,
            "echo",
            rpm=rpm,
            max_concurrency=concurrency,
            max_retries=8,
            backoff_base_s=0.2,
        )
        out: list[ReplayResult] = []
        started = time.perf_counter()
        backend.replay(_requests(n), out.append)
        seconds = time.perf_counter() - started
    arrivals = [t for t, path, _ in server.log if path == CHAT]
    peak = _peak_in_window(arrivals, 60.0)
    return {
        "requests": n,
        "ok": sum(r.ok for r in out),
        "sent_incl_retries": len(arrivals),
        "retries": sum(r.attempts - 1 for r in out),
        "rpm_limit": rpm,
        "server_peak_in_any_60s": peak,
        "within_limit": peak <= rpm,
        "seconds": round(seconds, 1),
    }


def engine_throughput(
    n: int = 1000, concurrency: int = 32, latency_ms: float = 200.0
) -> dict[str, Any]:
    faults = FaultConfig(extra_latency_ms=latency_ms)
    with tempfile.TemporaryDirectory() as tmp, served(faults) as server:
        con = open_warehouse(Path(tmp) / "bench.duckdb")
        writer = con.cursor()
        batches: list[int] = []

        def store(batch: Sequence[KeyedResult]) -> None:
            batches.append(len(batch))
            rows = [
                {
                    "replay_id": k.key,
                    "request_id": k.result.request_id,
                    "candidate": k.result.candidate,
                    "candidate_fingerprint": k.fingerprint,
                    "output_text": k.result.output_text,
                    "latency_ms": k.result.latency_ms,
                    "ttft_ms": k.result.ttft_ms,
                    "attempts": k.result.attempts,
                }
                for k in batch
            ]
            store_replays(writer, rows)

        backend = RelayBackend("bench", server.base_url, "echo", max_concurrency=concurrency)
        started = time.perf_counter()
        run = replay_candidate(
            backend,
            _requests(n),
            store=store,
            already_done=lambda keys: final_replay_ids(con, keys, RETRY_NEXT_RUN_KINDS),
            report=lambda line: None,
        )
        seconds = time.perf_counter() - started
        (stored,) = con.execute("SELECT count(*) FROM replays").fetchone()  # type: ignore[misc]
        writer.close()
        con.close()
    ideal = concurrency / (latency_ms / 1000)
    return {
        "requests": n,
        "ok": run.ok,
        "stored": int(stored),
        "transactions": len(batches),
        "seconds": round(seconds, 2),
        "req_per_s": round(n / seconds, 1),
        "ratio_of_ideal": round(n / seconds / ideal, 3),
    }


def run() -> dict[str, Any]:
    """The three figures, printed and returned."""
    tp = throughput()
    print(
        f"relay throughput: {tp['req_per_s']} req/s over {tp['requests']} requests at "
        f"concurrency {tp['concurrency']} (+{tp['added_latency_ms']:.0f} ms each); ideal "
        f"{tp['ideal_req_per_s']} req/s; ratio {tp['ratio_of_ideal']} "
        f"(goal >= {tp['goal_ratio']}); "
        f"CPU per request: client {tp['client_cpu_ms_per_request']} ms, "
        f"server {tp['server_cpu_ms_per_request']} ms"
    )
    rl = rate_limit()
    print(
        f"relay rate limit: rpm={rl['rpm_limit']}, {rl['sent_incl_retries']} sends incl. "
        f"{rl['retries']} retries of injected 429s in {rl['seconds']} s; the server saw at most "
        f"{rl['server_peak_in_any_60s']} in any 60-s window "
        f"({'within' if rl['within_limit'] else 'OVER'} the limit)"
    )
    en = engine_throughput()
    print(
        f"replay engine + DuckDB: {en['req_per_s']} req/s (ratio {en['ratio_of_ideal']} of "
        f"ideal), {en['stored']} rows stored in {en['transactions']} transactions"
    )
    return {"throughput": tp, "rate_limit": rl, "engine": en}


if __name__ == "__main__":
    run()
