"""The nightly parent flow: ingest → predict (train when due) → sample → replay → score → plan →
render, recorded in the run history, compared with the previous run, and published.

Every stage is cheap when it has nothing new to do, because the work it would repeat is already
in the warehouse: a log file ingested before is skipped by its content hash; the classifier is
retrained only when it is older than ``[run] retrain_days`` and predictions are redone only when
the requests or the classifier changed; the sample is drawn by a stable hash, so yesterday's
sampled requests mostly stay and their replays are reused; scores are cached per replay.

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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, State

from flows.classify_flow import default_model_dir, predict_task, train_task
from flows.lock import run_lock
from flows.runs import new_run_id, run_folder
from flows.warehouse_flow import ingest_task
from planner.errors import ConfigError
from planner.settings import PlannerSettings, load_settings
from warehouse.connection import fetch_one, open_warehouse
from warehouse.predictions import count_requests

T = TypeVar("T")
ATTENTION_STATE = "Needs attention"


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
    card = model_dir / "model_card.json"
    if not (model_dir / "classifier.onnx").is_file() or not card.is_file():
        return True, "no classifier yet"
    try:
        created = datetime.fromisoformat(json.loads(card.read_text("utf-8"))["created_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return True, f"{card} is unreadable"
    age_days = (now - created).total_seconds() / 86400
    if age_days >= retrain_days:
        return True, f"classifier is {age_days:.1f} days old (retrain_days {retrain_days:g})"
    return False, f"classifier is {age_days:.1f} days old"


def _classifier_version(model_dir: Path) -> str | None:
    try:
        value = json.loads((model_dir / "model_card.json").read_text("utf-8")).get("version")
        return str(value) if value else None
    except (OSError, ValueError):
        return None


def predictions_current(warehouse: str, version: str | None) -> bool:
    """Every request has a prediction by this classifier version."""
    if version is None:
        return False
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

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - started, 3)

    def run(self, name: str, fn: Callable[[], T]) -> T:
        with self.stage(name):
            return fn()


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
    version = _classifier_version(model_dir)
    if predictions_current(warehouse, version):
        out["predicted"] = False
    else:
        # a new classifier predicts everything; the same one only what it has not seen
        out["predicted"] = True
        out["predict"] = predict_task.fn(warehouse, str(model_dir), None, only_missing=not due)
    return out


def _new_requests(ingested: dict[str, Any] | None) -> int:
    return int(ingested["loaded"]) if ingested else 0


def _attention_line(signals: list[Any]) -> str:
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
    where = str(config_path or "planner.toml")
    warehouse = str(settings.warehouse.path)
    paths = resolve_logs(list(logs) if logs else list(settings.run.logs), where)
    run_id = new_run_id()
    with run_lock(warehouse, wait_s=settings.run.lock_wait_s, run=run_id):
        return _run(settings, config_path, paths, run_id, trigger)


def _run(
    settings: PlannerSettings,
    config_path: str | None,
    paths: list[str],
    run_id: str,
    trigger: str,
) -> State[Any]:
    from flows.plan_flow import plan_flow
    from flows.replay_flow import replay_flow
    from flows.run_artifacts import publish_run_artifacts
    from planner.history import open_history
    from planner.run_diff import attention_signals, diff_runs, figures_from_metrics
    from planner.run_pages import summary_markdown, write_diff_page, write_index
    from planner.webhook import post_webhook, webhook_url_from_env

    logger = get_run_logger()
    warehouse = str(settings.warehouse.path)
    out_dir = Path(settings.output.dir)
    Path(warehouse).parent.mkdir(parents=True, exist_ok=True)
    history = open_history(settings.history_url())
    clock = StageClock()
    inputs: dict[str, int] = {}
    try:
        interrupted = history.mark_interrupted()
        if interrupted:
            logger.warning(f"earlier runs were interrupted: {', '.join(interrupted)}")
        history.start_run(
            run_id,
            started_at=datetime.now(UTC),
            config_hash=config_hash(settings),
            trigger=trigger,
        )
        try:
            ingested = None
            if paths:
                ingested = clock.run(
                    "ingest",
                    lambda: ingest_task(
                        warehouse, paths, prices=settings.price_overrides() or None
                    ),
                )
                inputs.update(
                    {
                        k: int(ingested[k])
                        for k in ("lines_read", "loaded", "duplicates", "rejected", "blank")
                    }
                )
            else:
                logger.info("no logs configured: planning on the warehouse as it is")
            classified = clock.run(
                "classify",
                lambda: classify_stage(
                    warehouse,
                    config_path,
                    settings.run.retrain_days,
                    settings.classifier.labels,
                ),
            )
            con = open_warehouse(warehouse, read_only=True)
            try:
                inputs["requests"] = count_requests(con)
            finally:
                con.close()
            inputs["new_requests"] = _new_requests(ingested)
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

            previous = history.previous_completed(run_id)
            previous_figures = history.figures(previous.run_id) if previous else None
            classifier_path = Path(classified["model_dir"]) / "classifier.onnx"
            with run_folder(out_dir, run_id) as scratch:
                planned = clock.run(
                    "plan",
                    lambda: plan_flow(
                        config_path=config_path,
                        out_dir=str(scratch),
                        warehouse_path=warehouse,
                        classifier_path=str(classifier_path),
                        run_id=run_id,
                    ),
                )
                metrics = json.loads((scratch / "metrics.json").read_text("utf-8"))
                figures = figures_from_metrics(metrics)
                diff = (
                    diff_runs(previous.run_id, previous_figures, run_id, figures)
                    if previous is not None and previous_figures is not None
                    else None
                )
                signals = attention_signals(figures, diff, settings.alerts.drift_threshold)
                if diff is not None:
                    write_diff_page(scratch / "diff.html", diff, signals)
            run_dir = out_dir / run_id
            artifacts = {
                "run_dir": str(run_dir),
                **{
                    name: str(run_dir / Path(path).name)
                    for name, path in planned.items()
                    if name in ("plan", "routing", "litellm", "rollback", "metrics")
                },
            }
            if diff is not None:
                artifacts["diff"] = str(run_dir / "diff.html")
        except BaseException as exc:
            history.finish_run(
                run_id,
                status="failed",
                finished_at=datetime.now(UTC),
                inputs=inputs,
                figures=None,
                artifacts={},
                stage_seconds=clock.seconds,
                signals=[],
                error=_error_line(exc),
            )
            write_index(out_dir, history.list_runs(limit=1000))
            raise
        history.finish_run(
            run_id,
            status="completed",
            finished_at=datetime.now(UTC),
            inputs=inputs,
            figures=figures,
            artifacts=artifacts,
            stage_seconds=clock.seconds,
            signals=signals,
            error=None,
        )
        index = write_index(out_dir, history.list_runs(limit=1000))
    finally:
        history.close()

    markdown = summary_markdown(run_id, figures, diff, signals)
    publish_run_artifacts(
        run_id=run_id,
        plan_html=run_dir / "plan.html",
        markdown=markdown,
        routes=[r.to_dict() for r in figures.routes],
        index_html=index,
    )
    webhook: dict[str, Any] | None = None
    url = webhook_url_from_env(settings.alerts.webhook_env)
    if signals and url:
        sent = post_webhook(
            url,
            {
                "text": markdown,
                "run_id": run_id,
                "plan": artifacts.get("plan"),
                "signals": [s.to_dict() for s in signals],
            },
            timeout_s=settings.alerts.timeout_s,
        )
        webhook = {"ok": sent.ok, "reason": sent.reason}
        if not sent.ok:
            logger.warning(f"webhook not delivered: {sent.reason}")
    result = {
        "run_id": run_id,
        "status": "completed",
        "run_dir": str(run_dir),
        "plan_html": artifacts.get("plan"),
        "index_html": str(index),
        "diff_html": artifacts.get("diff"),
        "previous_run": previous.run_id if previous else None,
        "attention": [s.message for s in signals],
        "webhook": webhook,
        "inputs": inputs,
        "stage_seconds": clock.seconds,
        "classifier": {k: classified[k] for k in ("trained", "why", "predicted")},
        "verdict": planned.get("verdict"),
        "savings_usd_per_month": planned.get("savings_usd_per_month"),
        "migrated_share": planned.get("migrated_share"),
        "routes": planned.get("routes"),
    }
    if signals:
        return Completed(name=ATTENTION_STATE, message=_attention_line(signals), data=result)
    return Completed(message=f"plan: {artifacts.get('plan')}", data=result)


def _error_line(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "stopped by the user"
    last = traceback.format_exception_only(type(exc), exc)[-1].strip()
    return last[:2000]
