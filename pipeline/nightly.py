"""The nightly run's composition and bookkeeping: ingest → predict (train when due) → sample →
replay → score → plan → render, recorded in the run history, compared with the previous run,
and announced when something needs attention.

Every stage is cheap when it has nothing new to do, because the work it would repeat is already
in the warehouse: a log file ingested before is skipped by its content hash; the classifier is
retrained only when it is older than ``[run] retrain_days`` and predictions are made only for
requests the current classifier has not seen; the sample is drawn by a stable hash, so
yesterday's sampled requests mostly stay and their replays are reused; scores are cached per
replay.

Attention (:mod:`planner.runs.alerts`): a decision that flipped; a route the previous run deployed
that tonight's evidence, judged by the plan's own rule (:func:`route_check`), no longer supports;
a relay now serving another model; task-mix drift between the last window of traffic (the run's
new requests, else the last ``[alerts] drift_window_days``) and the window before; a retrained
classifier that types the same requests differently. The history, "previous run" and the
interrupted-run marking stay within the run's scope (``[history] scope``, else the warehouse).

Faults: the run folder is written beside ``out/`` and renamed into place only when complete
(:func:`planner.runs.folder.run_folder`); a run killed anywhere leaves the warehouse as its last
committed stage left it, and its history record "running", which the next run marks
"interrupted" before picking up from what was stored. How each stage runs (as Prefect tasks and
subflows) is the caller's: it hands :func:`run_nightly` a :class:`NightlySteps`.
"""

from __future__ import annotations

import glob
import hashlib
import json
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pipeline.endpoints import check_endpoints
from planner.errors import ConfigError
from planner.evaluate.decision import Objectives, check
from planner.evaluate.evidence import DeviceFit, Evidence
from planner.report.pages import summary_markdown, write_diff_page, write_index
from planner.runs.alerts import (
    Relabel,
    RouteCheck,
    ServingChange,
    WindowDrift,
    attention_signals,
)
from planner.runs.diff import RunDiff, RunFigures, Signal, diff_runs, figures_from_metrics
from planner.runs.folder import run_folder
from planner.runs.history import HistoryStore, RunRecord, open_history
from planner.runs.webhook import post_webhook, webhook_url_from_env
from planner.settings import PlannerSettings
from warehouse.connection import open_warehouse
from warehouse.mix import mix_windows, relabel_counts
from warehouse.predictions import count_requests

T = TypeVar("T")
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


@dataclass
class NightlyRun:
    """What one run gathers as it goes: counts, stage times, then the plan and its comparison."""

    run_id: str
    out_dir: Path
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    clock: StageClock = field(default_factory=StageClock)
    inputs: dict[str, int] = field(default_factory=dict)
    classified: dict[str, Any] = field(default_factory=dict)
    planned: dict[str, Any] = field(default_factory=dict)
    figures: RunFigures | None = None
    diff: RunDiff | None = None
    signals: list[Signal] = field(default_factory=list)
    drift: WindowDrift | None = None
    relabel: Relabel | None = None
    checks: list[RouteCheck] = field(default_factory=list)
    serving: list[ServingChange] = field(default_factory=list)
    artifacts: dict[str, str] = field(default_factory=dict)
    index: Path | None = None
    webhook: dict[str, Any] | None = None

    @property
    def run_dir(self) -> Path:
        return self.out_dir / self.run_id

    def markdown(self) -> str:
        assert self.figures is not None  # set by the plan stage
        return summary_markdown(self.run_id, self.figures, self.diff, self.signals)

    def summary(self) -> dict[str, Any]:
        """The run's result as the CLI prints it and the flow returns it."""
        return {
            "run_id": self.run_id,
            "status": "completed",
            "run_dir": str(self.run_dir),
            "plan_html": self.artifacts["plan"],
            "index_html": str(self.index),
            "diff_html": self.artifacts.get("diff"),
            "previous_run": self.diff.a_run_id if self.diff else None,
            "attention": [s.message for s in self.signals],
            "drift": None
            if self.drift is None
            else {
                "distance": self.drift.distance,
                "p_value": self.drift.p_value,
                "last": self.drift.last_label,
                "before": self.drift.before_label,
            },
            "deployed_checks": [
                {"task_type": c.task_type, "route": c.route, "holds": c.holds} for c in self.checks
            ],
            "webhook": self.webhook,
            "inputs": self.inputs,
            "stage_seconds": self.clock.seconds,
            "classifier": {k: self.classified[k] for k in ("trained", "why", "predicted")},
            "verdict": self.planned.get("verdict"),
            "savings_usd_per_month": self.planned.get("savings_usd_per_month"),
            "migrated_share": self.planned.get("migrated_share"),
            "routes": self.planned.get("routes"),
        }


class NightlySteps(Protocol):
    """How the run's stages run (the Prefect flow records them as tasks and subflows)."""

    def ingest(self, paths: list[str]) -> dict[str, Any]: ...

    def classify(self) -> dict[str, Any]: ...

    def replay(self) -> dict[str, Any]: ...

    def plan(
        self, out_dir: Path, classifier_path: Path, run_id: str, judge_spent_usd: float = 0.0
    ) -> dict[str, Any]: ...

    def info(self, line: str) -> None: ...

    def warning(self, line: str) -> None: ...


def run_nightly(
    settings: PlannerSettings, paths: list[str], run_id: str, steps: NightlySteps, trigger: str
) -> NightlyRun:
    """One whole run, recorded in the history (failed runs too) and in ``out/index.html``."""
    check_endpoints(settings)  # refuse to start with an endpoint that may not see the prompts
    Path(settings.warehouse.path).parent.mkdir(parents=True, exist_ok=True)
    run = NightlyRun(run_id, Path(settings.output.dir))
    history = open_history(settings.history_url(), scope=settings.history_scope())
    try:
        interrupted = history.mark_interrupted()
        if interrupted:
            steps.warning(f"earlier runs were interrupted: {', '.join(interrupted)}")
        history.start_run(
            run_id,
            started_at=run.started,
            config_hash=config_hash(settings),
            trigger=trigger,
        )
        try:
            _stages(run, settings, paths, history, steps)
        except BaseException as exc:
            _record(history, run, "failed", _error_line(exc))
            raise
        run.index = _record(history, run, "completed", None)
    finally:
        history.close()
    run.webhook = _announce(run, settings, steps)
    return run


def _stages(
    run: NightlyRun,
    settings: PlannerSettings,
    paths: list[str],
    history: HistoryStore,
    steps: NightlySteps,
) -> None:
    """Ingest → classify → replay → plan into the run's folder, with the diff and the signals."""
    warehouse = str(settings.warehouse.path)
    clock, inputs = run.clock, run.inputs
    if paths:
        ingested = clock.run("ingest", lambda: steps.ingest(paths))
        for key in ("lines_read", "loaded", "duplicates", "rejected", "blank"):
            inputs[key] = int(ingested[key])
    else:
        steps.info("no logs configured: planning on the warehouse as it is")
    run.classified = clock.run("classify", steps.classify)
    con = open_warehouse(warehouse, read_only=True)
    try:
        inputs["requests"] = count_requests(con)
        run.drift, run.relabel = traffic_changes(
            con, run.started, settings.alerts.drift_window_days, run.classified
        )
    finally:
        con.close()
    inputs["new_requests"] = inputs.get("loaded", 0)
    replayed = clock.run("replay", steps.replay)
    shards = replayed.get("shards", {})
    inputs["replayed"] = int(shards.get("replayed_requests", 0))
    inputs["replays_cached"] = int(shards.get("cached_requests", 0))
    run.serving = serving_changes(replayed)

    previous = history.previous_completed(run.run_id)
    previous_figures = history.figures(previous.run_id) if previous else None
    classifier_path = Path(run.classified["model_dir"]) / "classifier.onnx"
    with run_folder(run.out_dir, run.run_id) as scratch:
        judge_spent = float(replayed.get("judge_spent_usd", 0.0) or 0.0)
        run.planned = clock.run(
            "plan", lambda: steps.plan(scratch, classifier_path, run.run_id, judge_spent)
        )
        metrics = json.loads((scratch / "metrics.json").read_text("utf-8"))
        run.figures = figures_from_metrics(metrics)
        if previous is not None and previous_figures is not None:
            run.diff = diff_runs(previous.run_id, previous_figures, run.run_id, run.figures)
        run.checks = deployed_checks(previous, metrics)
        run.signals = attention_signals(
            run.diff,
            deployed=run.checks,
            serving=run.serving,
            drift=run.drift,
            relabel=run.relabel,
            drift_threshold=settings.alerts.drift_threshold,
        )
        if run.diff is not None:
            write_diff_page(scratch / "diff.html", run.diff, run.signals)
    run.artifacts = {"run_dir": str(run.run_dir)}
    for name in PLAN_FILES:
        run.artifacts[name] = str(run.run_dir / Path(run.planned[name]).name)
    if run.diff is not None:
        run.artifacts["diff"] = str(run.run_dir / "diff.html")


# ---------------------------------------------------------------- what needs attention


def route_check(
    task_type: str,
    route: str,
    deployed_by: str,
    evidence: Mapping[str, Any] | None,
    objectives: Mapping[str, Any],
) -> RouteCheck:
    """A deployed route judged on tonight's evidence (one row of metrics.json's ``evidence``) by
    the plan's own rule, :func:`planner.evaluate.decision.check` with the run's objectives.

    The one place the nightly run applies the decision rule: when the rule changes, this is
    what follows it."""
    if evidence is None:
        return RouteCheck(
            task_type,
            route,
            deployed_by,
            ("no current evidence tonight (not replayed, or stale: see the plan's notes)",),
            below_floor=False,
        )
    names = {f.name for f in fields(Evidence)} - {"latency_samples", "fit", "verdict", "ceiling"}
    fit = evidence.get("fit")
    ev = Evidence(
        **{k: v for k, v in evidence.items() if k in names},
        fit=DeviceFit(**fit) if isinstance(fit, Mapping) else None,
    )
    wanted = {f.name for f in fields(Objectives)}
    rule = Objectives(**{k: v for k, v in objectives.items() if k in wanted})
    verdict = evidence.get("verdict")
    if isinstance(verdict, Mapping):
        # tonight's verdict on the pair, as the plan reached it (the exact pass-rate bounds at
        # the floor x production's ceiling): "below" means confidently below, not merely
        # undecided; the latency, fit and cost checks follow from the figures
        ev = replace(ev, quality_low=None)
        state = verdict.get("state")
        failing = [f"{state}: {verdict.get('reason')}"] if state != "qualifies" else []
        failing += [r for r in check(ev, rule) if r != "no quality scores"]
        below = state == "below"
        figures = None
        if verdict.get("n"):
            low = verdict.get("lower")
            figures = (
                f"pass rate {verdict.get('pass_rate', 0):.2f} over {verdict['n']} replays, lower "
                f"bound {low if low is None else round(low, 3)} against the required "
                f"{verdict.get('required', 0):.3f}"
            )
        return RouteCheck(task_type, route, deployed_by, tuple(failing), below, figures)
    reasons = check(ev, rule)
    below = ev.quality_low is not None and ev.quality_low < rule.quality_floor
    figures = None
    if ev.quality_low is not None and ev.quality_mean is not None:
        figures = (
            f"quality {ev.quality_mean:.2f}, lower bound {ev.quality_low:.2f} against the floor "
            f"{rule.quality_floor:.2f}, over {ev.n} replays"
        )
    return RouteCheck(task_type, route, deployed_by, reasons, below, figures)


def deployed_checks(previous: RunRecord | None, metrics: Mapping[str, Any]) -> list[RouteCheck]:
    """Each route the previous run deployed (off production), judged on tonight's evidence."""
    if previous is None:
        return []
    tonight = {(e["task_type"], e["candidate"]): e for e in metrics.get("evidence", [])}
    objectives = metrics.get("objectives", {})
    return [
        route_check(
            r.task_type,
            r.route,
            previous.run_id,
            tonight.get((r.task_type, r.route)),
            objectives,
        )
        for r in previous.routes
        if r.migrated
    ]


def serving_changes(replayed: Mapping[str, Any]) -> list[ServingChange]:
    """The relays whose answers tonight named another model than before."""
    out = []
    for c in replayed.get("candidates", []):
        serving = c.get("serving") or {}
        if serving.get("changed_from"):
            after = serving.get("served_model") or "(model not named)"
            if serving.get("system_fingerprint"):
                after += f" ({serving['system_fingerprint']})"
            out.append(ServingChange(c["candidate"], serving["changed_from"], after))
    return out


def traffic_changes(
    con: Any, started: datetime, window_days: float, classified: Mapping[str, Any]
) -> tuple[WindowDrift | None, Relabel | None]:
    """The task mix of the last window against the window before (read with the current
    classifier), and, when the classifier was retrained, how it types the same requests."""
    windows = mix_windows(
        con, new_since=started.astimezone(UTC).replace(tzinfo=None), window_days=window_days
    )
    drift = None
    if windows is not None:
        drift = WindowDrift(
            windows.last.label, windows.before.label, windows.last.counts, windows.before.counts
        )
    relabel = None
    version = (classified.get("train") or {}).get("classifier_version")
    if classified.get("trained") and version:
        counts = relabel_counts(con, str(version))
        if counts is not None:
            relabel = Relabel(
                counts.previous_version,
                counts.version,
                counts.before,
                counts.after,
                str(classified.get("why", "")),
            )
    return drift, relabel


def _record(history: HistoryStore, run: NightlyRun, status: str, error: str | None) -> Path:
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


def _announce(
    run: NightlyRun, settings: PlannerSettings, steps: NightlySteps
) -> dict[str, Any] | None:
    """Post the summary to the webhook when something needs attention (and one is set)."""
    url = webhook_url_from_env(settings.alerts.webhook_env)
    if not run.signals or not url:
        return None
    sent = post_webhook(
        url,
        {
            "text": run.markdown(),
            "run_id": run.run_id,
            "plan": run.artifacts["plan"],
            "signals": [s.to_dict() for s in run.signals],
        },
        timeout_s=settings.alerts.timeout_s,
    )
    if not sent.ok:
        steps.warning(f"webhook not delivered: {sent.reason}")
    return {"ok": sent.ok, "reason": sent.reason}


def _error_line(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "stopped by the user"
    last = traceback.format_exception_only(type(exc), exc)[-1].strip()
    return last[:2000]
