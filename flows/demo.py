"""``migration-planner demo``: the whole job on built-in data, offline, through Prefect.

It writes a realistic synthetic log set (chat-log with multi-turn conversations, failed calls and a
few malformed lines, plus an OpenAI batch input/output pair), then runs the stages on it and
writes ``out/<run-id>/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task

from flows.runs import new_run_id, run_folder
from flows.warehouse_flow import ingest_task, profile_task, rejects_task
from planner.profile_page import write_profile
from warehouse.synthetic import write_chat_log, write_openai_batch


@task(name="write-demo-logs")
def write_demo_logs(workdir: str, n_requests: int, seed: int) -> dict[str, str]:
    logs = Path(workdir) / "logs"
    chat = logs / "production-2026-11.jsonl.gz"
    write_chat_log(chat, n_requests, seed, malformed=9, blank=3, duplicates=4)
    batch_in, batch_out = logs / "batch" / "batchinput.jsonl", logs / "batch" / "batch_output.jsonl"
    write_openai_batch(batch_in, batch_out, max(n_requests // 20, 10), seed)
    return {"chat_log": str(chat), "batch_input": str(batch_in), "batch_output": str(batch_out)}


@task(name="render-profile")
def render_profile_task(
    path: str,
    profile: dict[str, Any],
    ingest: dict[str, Any],
    classifier: dict[str, Any] | None = None,
) -> str:
    return str(
        write_profile(
            Path(path),
            profile,
            ingest=ingest,
            classifier=classifier,
            title="Workload profile (demo data)",
        )
    )


@flow(name="migration-planner-demo")
def demo_flow(
    workdir: str = ".demo", out_dir: str = "out", n_requests: int = 3000, seed: int = 0
) -> dict[str, Any]:
    """Generate → ingest → profile → render. Returns the run id and the paths written."""
    warehouse = str(Path(workdir) / "planner.duckdb")
    Path(workdir).mkdir(parents=True, exist_ok=True)
    logs = write_demo_logs(workdir, n_requests, seed)
    chat = ingest_task(warehouse, [logs["chat_log"]])
    batch = ingest_task(warehouse, [logs["batch_input"]], "openai-batch", logs["batch_output"])
    ingest = {
        k: chat[k] + batch[k]
        for k in ("lines_read", "loaded", "duplicates", "rejected", "blank", "joined")
    }
    ingest["files"] = chat["files"] + batch["files"]
    ingest["rejects"] = rejects_task(warehouse, limit=20)
    profile = profile_task(warehouse)
    run_id = new_run_id()
    with run_folder(Path(out_dir), run_id) as scratch:
        render_profile_task(str(scratch / "profile.html"), profile, ingest)
    run_dir = Path(out_dir) / run_id
    return {
        "run_id": run_id,
        "run_dir": str(run_dir),
        "warehouse": warehouse,
        "profile_html": str(run_dir / "profile.html"),
        "ingest": {k: v for k, v in ingest.items() if k not in ("files", "rejects")},
    }
