"""The nightly parent flow: ingest → predict (train when due) → sample → replay → score → plan →
render, recorded in the run history, compared with the previous run, and published.

Every stage is cheap when it has nothing new to do, because the work it would repeat is already
in the warehouse: a log file ingested before is skipped by its content hash; the classifier is
retrained only when it is older than ``[run] retrain_days`` and predictions are made only for
requests the current classifier has not seen; the sample is drawn by a stable hash, so
yesterday's sampled requests mostly stay and their replays are reused; scores are cached per
replay.

Faults: one run at a time per warehouse (:mod:`flows.lock`); the run folder is written beside
``out/`` and renamed into place only when complete (:mod:`flows.runs`); a run killed anywhere
leaves the warehouse as its last committed stage left it, and its history record "running",
which the next run marks "interrupted" before picking up from what was stored.
"""

from __future__ import annotations

import glob
import hashlib
import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, State

from classifiers.errors import ModelLoadError
from classifiers.model_dir import read_card
from flows.classify_flow import default_model_dir, predict_task, train_task
from flows.lock import run_lock
from flows.plan_flow import plan_flow
from flows.replay_flow import replay_flow
from flows.run_artifacts import publish_run_artifacts
from flows.runs import new_run_id, run_folder
from flows.subflow import subflow_settings
from flows.warehouse_flow import ingest_task
from planner.errors import ConfigError
from planner.history import HistoryStore, open_history
from planner.run_diff import (
    RunDiff,
    RunFigures,
    Signal,
    attention_signals,
    diff_runs,
    figures_from_metrics,
)
from planner.run_pages import summary_markdown, write_diff_page, write_index
from planner.settings import PlannerSettings, load_settings
from planner.webhook import post_webhook, webhook_url_from_env
from warehouse.connection import fetch_one, open_warehouse
from warehouse.predictions import count_requests

T = TypeVar("T")
ATTENTION_STATE = "Needs attention"
INDEX_RUNS = 1000  # runs listed in out/index.html
PLAN_FILES = ("plan", "routing", "litellm", "rollback", "metrics")


def config_hash(settings: PlannerSettings) -> str:
    """What the run was configured with, as a short hash (settings hold no secrets, only the
    names of the variables that do)."""
    text = settings.model_dump_json()
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def resolve_logs(patterns: list[str], where: str) -> list[str]:
    """Files, globs and Parquet folders → existing paths; a pattern matching nothing is an error
    (a nightly run that silently ingests nothing would plan on stale data)."""
    out: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else []
        if not matches and Path(pattern).exists():
            matches = [pattern]
        if not matches:
            raise ConfigError(where, f"logs: {pattern!r} matches no file or folder")
        out.extend(m for m in matches if m not in out)
    return out


def classifier_due(model_dir: Path, retrain_days: float, now: datetime) -> tuple[bool, str]:
    """Train when there is no classifier yet, or it is older than ``retrain_days``."""
    if not (model_dir / "classifier.onnx").is_file():
        return True, "no classifier yet"
    try:
        created = datetime.fromisoformat(read_card(model_dir)["created_at"])
    except (ModelLoadError, KeyError, TypeError, ValueError) as exc:
        return True, f"its model card is unusable ({exc})"
    age_days = (now - created).total_seconds() / 86400
    if age_days >= retrain_days:
        return True, f"classifier is {age_days:.1f} days old (retrain_days {retrain_days:g})"
    return False, f"classifier is {age_days:.1f} days old"


def predictions_current(warehouse: str, version: str) -> bool:
    """Every request has a prediction by this classifier version."""
    con = open_warehouse(warehouse, read_only=True)
    try:
        row = fetch_one(
            con,
            "SELECT count(*) FROM requests AS r WHERE NOT EXISTS (SELECT 1 FROM predictions AS p "
            "WHERE p.request_id = r.request_id AND p.classifier_version = ?)",
            [version],
        )
        return row is not None and int(row[0]) == 0  # type: ignore[call-overload]
    finally:
        con.close()


@dataclass
class StageClock:
    """Seconds per stage, for the history and the bench."""

    seconds: dict[str, float] = field(default_factory=dict)

    def run(self, name: str, fn: Callable[[], T]) -> T:
        started = time.perf_counter()
        try:
            return fn()
        finally:
            self.seconds[name] = round(time.perf_counter() - started, 3)


@task(name="classify-when-due", cache_policy=NO_CACHE)
def classify_stage(
    warehouse: str, config_path: str | None, retrain_days: float, labels: str
) -> dict[str, Any]:
    """Train when due, predict when the requests or the classifier changed."""
    logger = get_run_logger()
    model_dir = default_model_dir(warehouse)
    due, why = classifier_due(model_dir, retrain_days, datetime.now(UTC))
    out: dict[str, Any] = {"model_dir": str(model_dir), "trained": due, "why": why}
    if due:
        logger.info(f"training the classifier: {why}")
        out["train"] = train_task.fn(warehouse, str(model_dir), labels, config_path, None)
    version = str(read_card(model_dir)["version"])
    if predictions_current(warehouse, version):
        out["predicted"] = False
    else:
        # a new classifier predicts everything; the same one only what it has not seen
        out["predicted"] = True
        out["predict"] = predict_task.fn(warehouse, str(model_dir), None, only_missing=not due)
    return out


def _attention_line(signals: list[Signal]) -> str:
    return "Needs attention: " + " ".join(s.message for s in signals)


@flow(name="migration-planner-nightly")
def nightly_flow(
    config_path: str | None = None, logs: list[str] | None = None, trigger: str = "manual"
) -> State[Any]:
    """One nightly run; its result holds the run id, its folder, status and headline figures.

    The flow's final state is Completed, named "Needs attention" (with the reasons as its
    message) when a decision flipped, a migrated route fell below its floor, or the task mix
    drifted past ``[alerts] drift_threshold``."""
    settings = load_settings(config_path)
    where = settings.source
    warehouse = str(settings.warehouse.path)
    paths = resolve_logs(list(logs) if logs else list(settings.run.logs), where)
    run_id = new_run_id()
    with run_lock(warehouse, wait_s=settings.run.lock_wait_s, run=run_id):
        return _run(settings, config_path, paths, run_id, trigger)


@dataclass
class _Run:
    """What one run gathers as it goes: counts, stage times, then the plan and its comparison."""

    run_id: str
    out_dir: Path
    clock: StageClock = field(default_factory=StageClock)
    inputs: dict[str, int] = field(default_factory=dict)
    classified: dict[str, Any] = field(default_factory=dict)
    planned: dict[str, Any] = field(default_factory=dict)
    figures: RunFigures | None = None
    diff: RunDiff | None = None
    signals: list[Signal] = field(default_factory=list)
    artifacts: dict[str, str] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return self.out_dir / self.run_id


def _run(
    settings: PlannerSettings,
    config_path: str | None,
    paths: list[str],
    run_id: str,
    trigger: str,
) -> State[Any]:
    Path(settings.warehouse.path).parent.mkdir(parents=True, exist_ok=True)
    run = _Run(run_id, Path(settings.output.dir))
    history = open_history(settings.history_url())
    try:
        interrupted = history.mark_interrupted()
        if interrupted:
            get_run_logger().warning(f"earlier runs were interrupted: {', '.join(interrupted)}")
        history.start_run(
            run_id,
            started_at=datetime.now(UTC),
            config_hash=config_hash(settings),
            trigger=trigger,
        )
        try:
            _stages(run, settings, config_path, paths, history)
        except BaseException as exc:
            _record(history, run, "failed", _error_line(exc))
            raise
        index = _record(history, run, "completed", None)
    finally:
        history.close()
    return _publish(run, settings, index)


def _stages(
    run: _Run,
    settings: PlannerSettings,
    config_path: str | None,
    paths: list[str],
    history: HistoryStore,
) -> None:
    """Ingest → classify → replay → plan into the run's folder, with the diff and the signals."""
    warehouse = str(settings.warehouse.path)
    clock, inputs = run.clock, run.inputs
    if paths:
        ingested = clock.run(
            "ingest",
            lambda: ingest_task(warehouse, paths, prices=settings.price_overrides() or None),
        )
        for key in ("lines_read", "loaded", "duplicates", "rejected", "blank"):
            inputs[key] = int(ingested[key])
    else:
        get_run_logger().info("no logs configured: planning on the warehouse as it is")
    run.classified = clock.run(
        "classify",
        lambda: classify_stage(
            warehouse, config_path, settings.run.retrain_days, settings.classifier.labels
        ),
    )
    con = open_warehouse(warehouse, read_only=True)
    try:
        inputs["requests"] = count_requests(con)
    finally:
        con.close()
    inputs["new_requests"] = inputs.get("loaded", 0)
    with subflow_settings():
        replayed = clock.run(
            "replay",
            lambda: replay_flow(
                config_path=config_path,
                warehouse_path=warehouse,
                shard_size=settings.run.shard_size,
                dask_address=settings.run.dask_address,
            ),
        )
    shards = replayed.get("shards", {})
    inputs["replayed"] = int(shards.get("replayed_requests", 0))
    inputs["replays_cached"] = int(shards.get("cached_requests", 0))

    previous = history.previous_completed(run.run_id)
    previous_figures = history.figures(previous.run_id) if previous else None
    classifier_path = Path(run.classified["model_dir"]) / "classifier.onnx"
    with run_folder(run.out_dir, run.run_id) as scratch, subflow_settings():
        run.planned = clock.run(
            "plan",
            lambda: plan_flow(
                config_path=config_path,
                out_dir=str(scratch),
                warehouse_path=warehouse,
                classifier_path=str(classifier_path),
                run_id=run.run_id,
            ),
        )
        metrics = json.loads((scratch / "metrics.json").read_text("utf-8"))
        run.figures = figures_from_metrics(metrics)
        if previous is not None and previous_figures is not None:
            run.diff = diff_runs(previous.run_id, previous_figures, run.run_id, run.figures)
        run.signals = attention_signals(run.figures, run.diff, settings.alerts.drift_threshold)
        if run.diff is not None:
            write_diff_page(scratch / "diff.html", run.diff, run.signals)
    run.artifacts = {"run_dir": str(run.run_dir)}
    for name in PLAN_FILES:
        run.artifacts[name] = str(run.run_dir / Path(run.planned[name]).name)
    if run.diff is not None:
        run.artifacts["diff"] = str(run.run_dir / "diff.html")


def _record(history: HistoryStore, run: _Run, status: str, error: str | None) -> Path:
    """The run's history record, then out/index.html from the whole history."""
    history.finish_run(
        run.run_id,
        status=status,
        finished_at=datetime.now(UTC),
        inputs=run.inputs,
        figures=run.figures if error is None else None,
        artifacts=run.artifacts if error is None else {},
        stage_seconds=run.clock.seconds,
        signals=run.signals if error is None else [],
        error=error,
    )
    return write_index(run.out_dir, history.list_runs(limit=INDEX_RUNS))


def _publish(run: _Run, settings: PlannerSettings, index: Path) -> State[Any]:
    """Prefect artifacts, the webhook when something needs attention, and the final state."""
    assert run.figures is not None  # set by the plan stage
    markdown = summary_markdown(run.run_id, run.figures, run.diff, run.signals)
    publish_run_artifacts(
        run_id=run.run_id,
        plan_html=run.run_dir / "plan.html",
        markdown=markdown,
        routes=[r.to_dict() for r in run.figures.routes],
        index_html=index,
    )
    webhook: dict[str, Any] | None = None
    url = webhook_url_from_env(settings.alerts.webhook_env)
    if run.signals and url:
        sent = post_webhook(
            url,
            {
                "text": markdown,
                "run_id": run.run_id,
                "plan": run.artifacts["plan"],
                "signals": [s.to_dict() for s in run.signals],
            },
            timeout_s=settings.alerts.timeout_s,
        )
        webhook = {"ok": sent.ok, "reason": sent.reason}
        if not sent.ok:
            get_run_logger().warning(f"webhook not delivered: {sent.reason}")
    result = {
        "run_id": run.run_id,
        "status": "completed",
        "run_dir": str(run.run_dir),
        "plan_html": run.artifacts["plan"],
        "index_html": str(index),
        "diff_html": run.artifacts.get("diff"),
        "previous_run": run.diff.a_run_id if run.diff else None,
        "attention": [s.message for s in run.signals],
        "webhook": webhook,
        "inputs": run.inputs,
        "stage_seconds": run.clock.seconds,
        "classifier": {k: run.classified[k] for k in ("trained", "why", "predicted")},
        "verdict": run.planned.get("verdict"),
        "savings_usd_per_month": run.planned.get("savings_usd_per_month"),
        "migrated_share": run.planned.get("migrated_share"),
        "routes": run.planned.get("routes"),
    }
    if run.signals:
        return Completed(name=ATTENTION_STATE, message=_attention_line(run.signals), data=result)
    return Completed(message=f"plan: {run.artifacts['plan']}", data=result)


def _error_line(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "stopped by the user"
    last = traceback.format_exception_only(type(exc), exc)[-1].strip()
    return last[:2000]
