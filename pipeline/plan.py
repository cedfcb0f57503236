"""The plan stage: score -> device fit -> evidence -> decision -> projection -> artifacts -> HTML.

:func:`make_plan` is the one composition: the CLI's ``plan``, the plan flow (each step a Prefect
task), the nightly run and the demo all run it, and the tests exercise it. Each step opens what
it needs (the warehouse, a relay client for the judge) and hands small plain objects to the next.
The run folder gets plan.html, routing.yaml, litellm.yaml, rollback.yaml and metrics.json (and
classifier.onnx when one is given).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from classifiers.encoder import TOKENIZER_FILE
from pipeline.candidates import objectives_from, plan_candidates
from pipeline.current import current_evidence, stale_notes
from pipeline.endpoints import check_endpoints
from pipeline.evidence import (
    classifier_figures,
    data_labels,
    device_fits,
    measure_ceilings,
    method_from,
    read_plan_inputs,
    reask_production,
    score_replays,
)
from pipeline.judge import JudgeStats, judge_enabled, judge_stats
from pipeline.stage import Stage, direct
from planner.errors import PlanError
from planner.evaluate.conversations import Conversations, Stickiness, stickiness_impact
from planner.evaluate.decision import Decision, Objectives, decide, sweep_floors
from planner.evaluate.evidence import (
    PRODUCTION,
    Candidate,
    DeviceFit,
    Evidence,
    Method,
    Observation,
    build_evidence,
)
from planner.evaluate.projection import (
    Device,
    FrontierPoint,
    Projection,
    Traffic,
    frontier,
    project,
)
from planner.evaluate.risks import Risk, assess_risks
from planner.evaluate.verdict import Ceiling
from planner.evaluate.views import Fitted, View, compare_views, pick_tiers
from planner.replay.ratelimit import CostBudget
from planner.report.artifacts import Gateway, Triggers, write_artifacts
from planner.report.render import PlanReport, SampleOutput, write_plan
from planner.runs.folder import new_run_id
from planner.settings import PlannerSettings

DEFAULT_FLOORS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 1.0)


def previous_quality(out_root: Path, exclude: Path) -> dict[str, float]:
    """Quality per task type of the newest earlier run's migrated routes (for the drift check)."""
    runs = sorted(
        (p for p in out_root.glob("*/metrics.json") if p.parent.resolve() != exclude.resolve()),
        key=lambda p: p.stat().st_mtime,
    )
    if not runs:
        return {}
    try:
        data = json.loads(runs[-1].read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return {
        r["task_type"]: float(r["quality_mean"])
        for r in data.get("routes", [])
        if r.get("route") != PRODUCTION and r.get("quality_mean") is not None
    }


def route_plan(
    evidence: Sequence[Evidence],
    observations: Sequence[Observation],
    objectives: Objectives,
    candidates: Mapping[str, Candidate],
    traffic: Traffic,
    conversations: Conversations | None,
    floors: Sequence[float] = DEFAULT_FLOORS,
    evidence_of: Callable[[Sequence[Observation]], list[Evidence]] | None = None,
    method: Method | None = None,
) -> tuple[Decision, Stickiness | None, list[tuple[float, Decision]], list[View]]:
    """The routes, what stickiness moves, the floor sweep, and the other routing rules (these
    cross-fitted: ``evidence_of`` builds evidence from half the observations)."""
    types = [t.task_type for t in traffic.types]
    decision = decide(evidence, objectives, types)
    sticky = (
        stickiness_impact(conversations, decision)
        if conversations is not None and conversations.requests
        else None
    )
    sweep = sweep_floors(evidence, objectives, floors, types)
    build = evidence_of or (lambda obs: list(evidence))

    def fit_half(half: Sequence[Observation]) -> Fitted:
        ev = build(half)
        fit_map = {e.candidate: e.fit for e in ev if e.fit is not None}
        return Fitted(
            decide(ev, objectives, types).route_map(), pick_tiers(candidates, ev, fit_map)
        )

    ceilings = {e.task_type: e.ceiling.value for e in evidence if e.ceiling is not None}
    views = compare_views(
        list(observations),
        candidates,
        fit_half,
        rules=(method or Method()).rules,
        ceilings=ceilings,
    )
    return decision, sticky, sweep, views


def project_plan(
    decision: Decision,
    sticky: Stickiness | None,
    sweep: Sequence[tuple[float, Decision]],
    traffic: Traffic,
    evidence: Sequence[Evidence],
    candidates: Mapping[str, Candidate],
    *,
    device: Device | None,
    migration_cost_usd: float,
    previous_quality: Mapping[str, float] | None,
    judge_used: bool,
    conversations: Conversations | None = None,
) -> tuple[Projection, list[FrontierPoint], list[Risk]]:
    """Monthly cost, quality and latency of the routes; the frontier; the risks."""
    projection = project(
        decision,
        traffic,
        evidence,
        candidates,
        device=device,
        migration_cost_usd=migration_cost_usd,
        stickiness=sticky,
    )
    points = frontier(
        sweep,
        traffic,
        evidence,
        candidates,
        decision.objectives.quality_floor,
        conversations=conversations,
    )
    risks = assess_risks(
        decision,
        evidence,
        traffic,
        candidates,
        projection,
        previous_quality=previous_quality,
        judge_used=judge_used,
    )
    return projection, points, risks


def assemble_report(
    *,
    observations: Sequence[Observation],
    candidates: Mapping[str, Candidate],
    traffic: Traffic,
    objectives: Objectives,
    fits: Mapping[str, DeviceFit | Mapping[str, Any]] | None = None,
    conversations: Conversations | None = None,
    device: Device | None = None,
    migration_cost_usd: float = 0.0,
    classifier: Mapping[str, Any] | None = None,
    samples: Sequence[SampleOutput] = (),
    judge: str | None = None,
    judge_stats: Sequence[JudgeStats] = (),
    previous_quality: Mapping[str, float] | None = None,
    floors: Sequence[float] = DEFAULT_FLOORS,
    title: str = "LLM migration plan",
    generated_at: str = "",
    run_id: str | None = None,
    method: Method | None = None,
    ceilings: Mapping[str, Ceiling] | None = None,
    adaptive: bool = True,
    labels: Sequence[str] = (),
    notes: Sequence[str] = (),
) -> PlanReport:
    """Evidence -> decision -> stickiness -> projection -> frontier -> views -> risks, at once.

    The one path from the warehouse's evidence to the report: every plan is assembled here."""
    method = method or Method()

    def evidence_of(obs: Sequence[Observation]) -> list[Evidence]:
        return build_evidence(
            obs,
            candidates,
            floor=objectives.quality_floor,
            fits=fits,
            method=method,
            ceilings=ceilings,
            min_samples=objectives.min_samples,
            adaptive=adaptive,
        )

    evidence = evidence_of(observations)
    if not any(e.kind != "production" for e in evidence):
        raise PlanError("no replays to plan from: run `migration-planner replay` first")
    decision, sticky, sweep, views = route_plan(
        evidence,
        observations,
        objectives,
        candidates,
        traffic,
        conversations,
        floors,
        evidence_of=lambda half: build_evidence(
            half,
            candidates,
            floor=objectives.quality_floor,
            fits=fits,
            method=replace(method, resamples=0),
            ceilings=ceilings,
            min_samples=objectives.min_samples,
            adaptive=adaptive,
        ),
        method=method,
    )
    projection, points, risks = project_plan(
        decision,
        sticky,
        sweep,
        traffic,
        evidence,
        candidates,
        device=device,
        migration_cost_usd=migration_cost_usd,
        previous_quality=previous_quality,
        judge_used=judge is not None,
        conversations=conversations,
    )
    depth = dict(conversations.depth) if conversations else {}
    all_notes = []
    if judge is None and any(
        s.startswith("similarity (no judge)") for e in evidence for s in e.scorers
    ):
        all_notes.append(
            "No LLM judge was configured: open-ended task types were scored by text similarity."
        )
    unscored = sum(e.n_unscored for e in evidence)
    if unscored:
        all_notes.append(
            f"{unscored} successful replays have no usable score yet (awaiting the judge, or "
            "its reply was unusable) and are left out of the quality figures."
        )
    all_notes.extend(notes)
    return PlanReport(
        title=title,
        generated_at=generated_at,
        objectives=objectives,
        traffic=traffic,
        evidence=tuple(evidence),
        decision=decision,
        projection=projection,
        candidates=dict(candidates),
        frontier=tuple(points),
        views=tuple(views),
        risks=tuple(risks),
        samples=tuple(samples),
        stickiness=sticky,
        conversation_depth=depth,
        classifier=classifier,
        device=device,
        judge=judge,
        run_id=run_id,
        notes=tuple(all_notes),
        method=method,
        ceilings=dict(ceilings or {}),
        judge_stats=tuple(judge_stats),
        labels=tuple(labels),
        adaptive=adaptive,
    )


def write_plan_files(
    run_dir: Path,
    report: PlanReport,
    confidence_threshold: float,
    classifier_path: str | None,
) -> dict[str, str]:
    """routing.yaml, litellm.yaml, rollback.yaml, metrics.json, plan.html (+ classifier.onnx)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = None
    if classifier_path is not None:
        shutil.copyfile(classifier_path, run_dir / "classifier.onnx")
        beside = Path(classifier_path).with_name(TOKENIZER_FILE)
        if (report.classifier or {}).get("encoder") and beside.is_file():
            tokenizer = TOKENIZER_FILE  # a classifier with a sentence encoder: the pair ships
            shutil.copyfile(beside, run_dir / tokenizer)
    paths = write_artifacts(
        run_dir,
        report.decision,
        report.candidates,
        report.metrics(),
        classifier_file="classifier.onnx",
        confidence_threshold=confidence_threshold,
        stickiness=report.stickiness,
        triggers=Triggers(p95_latency_ms=report.objectives.p95_latency_ms),
        gateway=Gateway(),
        run_id=report.run_id,
        tokenizer_file=tokenizer,
    )
    out = {name: str(path) for name, path in paths.items()}
    out["plan"] = str(write_plan(report, run_dir / "plan.html"))
    return out


# ---------------------------------------------------------------- the composition


def _device(
    power: Mapping[str, Any] | None,
    settings: PlannerSettings,
    device_power_w: float | None,
    battery_wh: float | None,
) -> Device | None:
    tier = power or {}
    power_w = device_power_w if device_power_w is not None else tier.get("power_w")
    if not power_w:
        return None
    return Device(
        name=str(tier.get("name", settings.objectives.device)),
        power_w=float(power_w),
        battery_wh=battery_wh if battery_wh is not None else tier.get("battery_wh"),
    )


def make_plan(
    settings: PlannerSettings,
    *,
    warehouse: str | None = None,
    run_dir: Path | None = None,
    run_id: str | None = None,
    judge: str | None = None,
    rescore: bool = False,
    classifier_path: str | None = None,
    device_power_w: float | None = None,
    battery_wh: float | None = None,
    judge_spent_usd: float = 0.0,
    stage: Stage = direct,
) -> dict[str, Any]:
    """Score the replays (the configured judge on its types), measure production's ceiling,
    decide the routes, project the month, write the artifacts and the HTML.

    The judge's ``[judge] max_cost_usd`` caps a whole run: ``judge_spent_usd`` is what the run's
    replay rounds already spent of it, and this scoring pass gets only the rest.

    ``judge`` names the judge to use (the configured ``[judge]``; a judged candidate is refused);
    by default the configured judge, if any. ``run_id`` names the run in metrics.json and the
    configs (a parent run passes its own); ``run_dir`` defaults to ``[output] dir / run_id``.
    Returns the paths and headline figures.
    """
    warehouse = warehouse or str(settings.warehouse.path)
    run_id = run_id or new_run_id()
    run_dir = run_dir or settings.output.dir / run_id
    objectives = objectives_from(settings)
    candidates = plan_candidates(settings)
    method = method_from(settings)
    use_judge = judge_enabled(settings, judge)
    if classifier_path is not None and not Path(classifier_path).is_file():
        raise PlanError(f"{classifier_path}: classifier file not found")

    reasked = stage("reask-production", reask_production, settings, warehouse)
    judge_budget = (
        CostBudget(max(0.0, settings.judge.max_cost_usd - judge_spent_usd)) if use_judge else None
    )
    scored = stage("score", score_replays, settings, warehouse, judge, rescore, judge_budget)
    fits, power, device_notes = stage("device-fit", device_fits, settings, warehouse)
    current = current_evidence(settings)
    inputs = stage(
        "read-evidence", read_plan_inputs, warehouse, candidates, settings.replay.seed, current
    )
    ceilings = stage(
        "ceilings",
        measure_ceilings,
        settings,
        warehouse,
        use_judge,
        [t.task_type for t in inputs.traffic.types],
    )
    described: dict[str, list[str]] = {}  # what the candidates are, as their config says
    for candidate in settings.candidates:
        if candidate.description:
            described.setdefault(candidate.description, []).append(candidate.name)
    notes = [f"{', '.join(names)}: {text}" for text, names in described.items()]
    notes += list(device_notes) + stale_notes(inputs.stale, current.unreadable)
    endpoints = check_endpoints(settings, strict=False)  # planning sends nothing to them
    if endpoints:
        notes.append("Production prompts went to: " + "; ".join(e.line() for e in endpoints) + ".")
    if inputs.dropped_candidates:
        notes.append(
            "Replays of candidates no longer configured were left out: "
            + ", ".join(inputs.dropped_candidates)
            + "."
        )
    if use_judge:
        spent = judge_spent_usd + float(scored.get("judge_spent_usd", 0.0))
        notes.append(
            f"The judge's calls cost ${spent:.4f} this run (replay rounds ${judge_spent_usd:.4f}, "
            f"this plan's scoring ${spent - judge_spent_usd:.4f}), within its cap "
            f"${settings.judge.max_cost_usd:.2f} per run ([judge] max_cost_usd)."
        )
    if scored.get("awaiting_judge"):
        notes.append(
            f"The judge stopped ({scored.get('judge_stopped')}): {scored['awaiting_judge']} "
            "replays await its verdict and are left out until a later run judges them."
        )
    if reasked and reasked.get("stopped"):
        notes.append(f"Re-asking production stopped: {reasked['stopped']}.")
    classifier = classifier_figures(Path(classifier_path) if classifier_path else None)
    # the threshold the classifier predicts with (its card's: configured, or picked on held-out
    # rows) is the one the routing config must use
    threshold = (classifier or {}).get("confidence_threshold")
    if threshold is None:
        threshold = settings.classifier.confidence_threshold
    threshold = 0.5 if threshold is None else float(threshold)
    if classifier is not None:
        classifier = {**classifier, "confidence_threshold": threshold}
    previous = (
        previous_quality(settings.output.dir, run_dir) if settings.output.dir.is_dir() else {}
    )
    stats = judge_stats(inputs.observations, warehouse, method.rules) if use_judge else []
    report = stage(
        "assemble",
        assemble_report,
        observations=inputs.observations,
        candidates=candidates,
        traffic=inputs.traffic,
        objectives=objectives,
        fits=fits,
        conversations=inputs.conversations,
        device=_device(power, settings, device_power_w, battery_wh),
        migration_cost_usd=settings.objectives.migration_cost_usd,
        classifier=classifier,
        samples=inputs.samples,
        judge=settings.judge.name if use_judge else None,
        judge_stats=stats,
        previous_quality=previous,
        generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        run_id=run_id,
        method=method,
        ceilings=ceilings,
        adaptive=settings.verdict.adaptive,
        labels=data_labels(settings),
        notes=notes,
    )
    paths = stage(
        "write-plan",
        write_plan_files,
        run_dir,
        report,
        threshold,
        classifier_path,
    )
    projection = report.projection
    return {
        "run_id": run_id,
        "run_dir": str(run_dir),
        **paths,
        "scoring": scored,
        "verdict": projection.verdict,
        "savings_usd_per_month": round(projection.savings_usd, 2),
        "migrated_share": round(projection.migrated_share, 4),
        "routes": {r.task_type: r.route for r in report.decision.routes},
        "uncertain_route": report.decision.uncertain_route,
        "labels": list(report.labels),
    }
