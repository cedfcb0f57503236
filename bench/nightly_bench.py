"""The whole nightly run on 100,000 logged requests, then again with 1% new requests.

The candidates are the committed demo models (edge-small-int4, edge-base-int4) and a relay played
by the project's model server (edge-base fp32) in a process of its own on 127.0.0.1. Each run is a
fresh process against a Prefect server that is already up, as under `serve` (which starts one),
so its time includes the process's imports but not a server's start; its peak memory is the
process's peak RSS over its life (neither the relay nor the Prefect server is counted).

Prints each stage's time and peak memory for both runs, the share of the second run's replays
served from cache, and the goal: the second run takes at most 20% of the first.

Run: ``make bench BENCH_ARGS=nightly`` (``NIGHTLY_BENCH_REQUESTS`` changes the size,
``NIGHTLY_BENCH_DIR`` keeps the work folder).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from demo.logs import write_chat_log
from flows.serve import local_prefect_server

ROOT = Path(__file__).resolve().parent.parent
KEY_ENV = "NIGHTLY_BENCH_RELAY_KEY"

# One run in a child process: the flow's own result, plus the process's peak RSS at the end.
_CHILD = """
import json, sys, time
from flows.nightly import nightly_flow
started = time.perf_counter()
state = nightly_flow(config_path=sys.argv[1], return_state=True)
flow_s = round(time.perf_counter() - started, 2)
result = state.result()
from planner.models.runtime import process_peak_bytes  # VmHWM is reset per local request
peak = process_peak_bytes() // 2**20
print("RESULT " + json.dumps({"state": state.name, "peak_rss_mb": peak, "flow_s": flow_s, **result},
                             default=str))
"""


def _config(work: Path, relay_url: str, logs_glob: str) -> Path:
    models = ROOT / "models"
    text = f"""
[warehouse]
path = {json.dumps(str(work / "planner.duckdb"))}

[objectives]
quality_floor = 0.9
p95_latency_ms = 4000

[replay]
per_type = 50
uncertain = 10
max_new_tokens = 32

[output]
dir = {json.dumps(str(work / "out"))}

[run]
logs = [{json.dumps(logs_glob)}]

[[candidates]]
name = "edge-small-int4"
kind = "local"
path = {json.dumps(str(models / "edge-small" / "int4"))}

[[candidates]]
name = "edge-base-int4"
kind = "local"
path = {json.dumps(str(models / "edge-base" / "int4"))}

[[candidates]]
name = "relay-demo"
kind = "relay"
base_url = {json.dumps(relay_url)}
model = "relay-demo"
api_key_env = "{KEY_ENV}"
price_in = 0.28
price_out = 0.42
max_concurrency = 4
"""
    path = work / "planner.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_relay(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "serve-model",
            str(ROOT / "models" / "edge-base" / "fp32"),
            "--port",
            str(port),
            "--model-name",
            "relay-demo",
            "--api-key-env",
            KEY_ENV,
            "--threads",
            "1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and server.poll() is None:
        try:
            httpx.get(url + "/models", headers={"Authorization": "Bearer bench-key"}, timeout=1)
            return server, url
        except httpx.HTTPError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("the relay model server did not start")


def _run(config: Path, env: dict[str, str]) -> dict[str, Any]:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(config)],
        env=env,
        cwd=config.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"nightly run failed:\n{proc.stderr[-3000:]}")
    return {"seconds": round(seconds, 1), **json.loads(lines[-1].removeprefix("RESULT "))}


def _show(label: str, run: dict[str, Any]) -> None:
    stages = "  ".join(f"{k} {v:.1f}s" for k, v in run["stage_seconds"].items())
    inputs = run["inputs"]
    print(
        f"{label}: {run['seconds']:.1f} s end to end, {run['flow_s']:.1f} s in the flow "
        f"({stages}); peak RSS "
        f"{run['peak_rss_mb']} MB; requests {inputs.get('requests')} "
        f"({inputs.get('new_requests')} new); replays {inputs.get('replayed')} sent, "
        f"{inputs.get('replays_cached')} from cache",
        flush=True,
    )


def run() -> dict[str, Any]:
    n = int(os.environ.get("NIGHTLY_BENCH_REQUESTS", "100000"))
    new = max(n // 100, 1)
    keep = os.environ.get("NIGHTLY_BENCH_DIR")  # keep the work folder there (for profiling)
    with tempfile.TemporaryDirectory(prefix="nightly-bench-") as tmp:
        work = Path(keep) if keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        logs = work / "logs"
        logs.mkdir()
        write_chat_log(logs / "day-1.jsonl", n, seed=0)
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "PREFECT_HOME": str(work / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "WARNING",
            KEY_ENV: "bench-key",
        }
        env.pop("PREFECT_API_URL", None)
        relay, url = _start_relay(env)
        try:
            with local_prefect_server(home=work / "prefect") as api:
                env["PREFECT_API_URL"] = api
                config = _config(work, url, str(logs / "*.jsonl"))
                print(f"{n:,} requests; candidates edge-small-int4, edge-base-int4, relay")
                first = _run(config, env)
                _show("first run ", first)
                # 1% new requests: a new day's file (another seed, ids of its own)
                write_chat_log(logs / "day-2.jsonl", new, seed=1)
                _fix_ids(logs / "day-2.jsonl", "new-")
                second = _run(config, env)
                _show("second run", second)
        finally:
            relay.terminate()
            relay.wait(timeout=10)
    replays = second["inputs"].get("replayed", 0) + second["inputs"].get("replays_cached", 0)
    cached_share = second["inputs"].get("replays_cached", 0) / replays if replays else 0.0
    ratio = second["seconds"] / first["seconds"]
    flow_ratio = second["flow_s"] / first["flow_s"]
    verdict = "met" if ratio <= 0.20 else "NOT met"
    print(
        f"second run / first run: {ratio:.2f} end to end (goal <= 0.20: {verdict}), "
        f"{flow_ratio:.2f} in the flow (without the process's imports and exit: "
        f"{second['seconds'] - second['flow_s']:.1f} s); "
        f"replays from cache in the second run: {cached_share:.1%}",
        flush=True,
    )
    return {
        "requests": n,
        "first": first,
        "second": second,
        "second_over_first": round(ratio, 3),
        "second_over_first_in_flow": round(flow_ratio, 3),
        "cached_share": round(cached_share, 4),
    }


def _fix_ids(path: Path, prefix: str) -> None:
    """Give a generated file's records ids of their own (the generator numbers from 0)."""
    lines = []
    for line in path.read_text("utf-8").splitlines():
        record = json.loads(line)
        record["id"] = prefix + str(record["id"])
        lines.append(json.dumps(record, ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    run()
