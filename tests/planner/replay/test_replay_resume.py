"""A replay killed with SIGKILL midway resumes where it stopped: every reply stored before the kill
is not sent again (counted on the server), and the DuckDB file survives the kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from planner.models.server import EchoEngine, FaultConfig, ServerThread, create_app
from planner.replay.engine import RETRY_NEXT_RUN_KINDS, KeyedResult, replay_candidate
from planner.replay.protocol import ReplayRequest
from planner.replay.relay import RelayBackend
from warehouse.connection import open_warehouse
from warehouse.replays import final_replay_ids, store_replays

N = 40
CHAT = "/v1/chat/completions"

# The child: the same engine + storage the flow uses, on a warehouse file.
CHILD = """
import sys
from planner.replay.protocol import ReplayRequest
from planner.replay.relay import RelayBackend
from planner.replay.engine import RETRY_NEXT_RUN_KINDS, replay_candidate
from warehouse.connection import open_warehouse
from warehouse.replays import final_replay_ids, store_replays

base_url, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
con = open_warehouse(path)
requests = [ReplayRequest(f"k{i:03d}", [{"role": "user", "content": f"note {i}"}], 8)
            for i in range(n)]
writer = con.cursor()
def store(batch):
    store_replays(writer, [{"replay_id": k.key, "request_id": k.result.request_id,
                            "candidate": k.result.candidate, "candidate_fingerprint": k.fingerprint,
                            "output_text": k.result.output_text, "attempts": k.result.attempts}
                           for k in batch])
replay_candidate(RelayBackend("relay", base_url, "echo", max_concurrency=4), requests,
                 store=store, report=lambda line: None,
                 already_done=lambda keys: final_replay_ids(con, keys, RETRY_NEXT_RUN_KINDS))
"""


def requests_for(n: int) -> list[ReplayRequest]:
    return [
        ReplayRequest(f"k{i:03d}", [{"role": "user", "content": f"note {i}"}], 8) for i in range(n)
    ]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_killed_run_resumes_and_sends_nothing_stored_again(tmp_path: Path) -> None:
    path = tmp_path / "planner.duckdb"
    open_warehouse(path).close()
    faults = FaultConfig(extra_latency_ms=60)
    with ServerThread(create_app(EchoEngine("echo"), faults)) as server:
        root = Path(__file__).resolve().parents[3]
        env = {**os.environ, "PYTHONPATH": str(root)}
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, server.base_url, str(path), str(N)], env=env
        )
        deadline = time.monotonic() + 60
        while sum(1 for _, p, s in server.request_log if p == CHAT and s == 200) < 15:
            assert child.poll() is None, "the child ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        sent_before = sum(1 for _, p, _ in server.request_log if p == CHAT)
        assert sent_before < N

        con = open_warehouse(path)  # the file opens cleanly after the kill
        (stored,) = con.execute("SELECT count(*) FROM replays").fetchone()  # type: ignore[misc]
        assert 10 <= stored <= sent_before
        writer = con.cursor()

        def store(batch: Sequence[KeyedResult]) -> None:
            store_replays(
                writer,
                [
                    {
                        "replay_id": k.key,
                        "request_id": k.result.request_id,
                        "candidate": k.result.candidate,
                        "candidate_fingerprint": k.fingerprint,
                        "output_text": k.result.output_text,
                        "attempts": k.result.attempts,
                    }
                    for k in batch
                ],
            )

        run = replay_candidate(
            RelayBackend("relay", server.base_url, "echo", max_concurrency=4),
            requests_for(N),
            store=store,
            already_done=lambda keys: final_replay_ids(con, keys, RETRY_NEXT_RUN_KINDS),
            report=lambda line: None,
        )
        sent_after = sum(1 for _, p, _ in server.request_log if p == CHAT)
    assert run.cached == stored and run.sent == N - stored
    assert sent_after - sent_before == N - stored  # nothing stored was sent again
    # paid twice: only what was in flight at the kill (one per worker) and what had arrived
    # while the writer thread was committing the previous batch (milliseconds' worth)
    assert sent_after - N <= 4 + 4
    (total, distinct) = con.execute(  # type: ignore[misc]
        "SELECT count(*), count(DISTINCT request_id) FROM replays"
    ).fetchone()
    assert total == distinct == N
    con.close()
