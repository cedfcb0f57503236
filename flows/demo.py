"""``migration-planner demo``: the whole job on built-in data, offline, through Prefect.

It writes a realistic synthetic log set (chat-log with multi-turn conversations, failed calls and a
few malformed lines, plus an OpenAI batch input/output pair), ingests it, trains and runs the
task-type classifier, replays a sample through the committed demo edge models, SmolLM2-135M-Instruct
INT4/INT8 when `make real-models` has built them, and through a
"relay" played by the project's own OpenAI-compatible model server on 127.0.0.1 (with injected
429s and 503s, so retries show), then scores, decides and writes ``out/<run-id>/``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from prefect import flow, task

from demo.logs import write_chat_log, write_openai_batch
from flows.subflow import subflow_settings
from flows.warehouse_flow import ingest_task, profile_task, rejects_task
from pipeline.demo import (
    demo_judge,
    demo_models,
    demo_relay,
    real_demo_models,
    write_demo_config,
)
from planner.report.profile import write_profile
from planner.runs.folder import new_run_id, run_folder


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
    """Generate → ingest → classify → replay → plan. Returns the run id and the paths written."""
    from flows.classify_flow import classify_flow
    from flows.plan_flow import plan_flow
    from flows.replay_flow import replay_flow

    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    warehouse = str(work / "planner.duckdb")
    for stale in (work / "planner.duckdb", work / "planner.duckdb.wal"):
        stale.unlink(missing_ok=True)  # the demo starts from nothing, so every run shows the same
    logs = write_demo_logs(str(work), n_requests, seed)
    chat = ingest_task(warehouse, [logs["chat_log"]])
    batch = ingest_task(warehouse, [logs["batch_input"]], "openai-batch", logs["batch_output"])
    counts = ("lines_read", "loaded", "duplicates", "rejected", "blank", "joined")
    ingest: dict[str, Any] = {k: chat[k] + batch[k] for k in counts}
    ingest["rejects"] = rejects_task(warehouse, limit=20)

    classifier_dir = work / "classifier"
    shutil.rmtree(classifier_dir, ignore_errors=True)
    with subflow_settings():
        classified = classify_flow(warehouse, model_dir=str(classifier_dir))

    models = demo_models()
    relay_model = next(
        (m for m in models if m.parent.name == "edge-base" and m.name == "fp32"), None
    )
    real, missing = real_demo_models()  # SmolLM2 INT4/INT8, when `make real-models` built them
    local = [m for m in models if m != relay_model] + real
    profile = profile_task(warehouse)
    run_id = new_run_id()
    out = Path(out_dir)
    with demo_judge() as (judge_url, judge_name):  # the judge scores in the rounds and the plan
        with demo_relay(relay_model) as (relay_url, relay_name), subflow_settings():
            config = write_demo_config(work, local, relay_url, relay_name, judge_url, judge_name)
            replayed = replay_flow(config_path=str(config), warehouse_path=warehouse)
        with run_folder(out, run_id) as scratch, subflow_settings():
            planned = plan_flow(
                config_path=str(config),
                out_dir=str(scratch),
                warehouse_path=warehouse,
                classifier_path=str(classifier_dir / "classifier.onnx"),
                run_id=run_id,
                judge_spent_usd=float(replayed.get("judge_spent_usd", 0.0) or 0.0),
            )
            render_profile_task(
                str(scratch / "profile.html"), profile, ingest, classified.get("page")
            )
    run_dir = out / run_id
    return {
        "run_id": run_id,
        "run_dir": str(run_dir),
        "warehouse": warehouse,
        "config": str(config),
        "plan_html": str(run_dir / "plan.html"),
        "profile_html": str(run_dir / "profile.html"),
        "ingest": {k: ingest[k] for k in counts},
        "classifier": {k: v for k, v in classified.items() if k != "page"},
        "replay": replayed,
        "verdict": planned.get("verdict"),
        "real_models": [str(m) for m in real],
        "real_models_missing": [str(m) for m in missing],
    }
