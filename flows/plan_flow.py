"""The plan flow: score -> evidence -> decide -> project -> artifacts -> render.

Each task opens what it needs (the warehouse, a relay client for the judge), calls the stage
functions of ``planner`` and ``warehouse``, and hands small plain objects to the next. Flow
parameters are paths, names and plain numbers only: settings and keys are read inside tasks.
The run folder gets plan.html, routing.yaml, litellm.yaml, rollback.yaml and metrics.json (and
classifier.onnx when one is given).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from planner.artifacts import Gateway, Triggers, write_artifacts
from planner.backends import ReplayRequest, ReplayResult
from planner.decision import (
    Conversations,
    Decision,
    Objectives,
    Stickiness,
    View,
)
from planner.errors import ConfigError, PlanError, PlannerError
from planner.evidence import PRODUCTION, Candidate, Evidence, Observation, build_evidence
from planner.projection import (
    Device,
    FrontierPoint,
    Projection,
    Risk,
    Traffic,
    TypeTraffic,
)
from planner.relay import RelayBackend
from planner.render import PlanReport, SampleOutput, project_plan, route_plan, write_plan
from planner.scoring import JUDGED_TYPES, JudgeCache, JudgeSetup, ScoreItem, score_items
from planner.settings import PlannerSettings, load_settings
from warehouse.connection import open_warehouse
from warehouse.pricing import match_price, price_table
from warehouse.scores import (
    conversation_shape,
    evidence_rows,
    judge_cache_get,
    judge_cache_put,
    measured_decode_speed,
    messages_from_json,
    sample_outputs,
    scoring_inputs,
    store_scores,
    traffic_by_type,
    workload_tokens,
)

PRODUCTION_BASE_URL = "https://api.openai.com/v1"
PRODUCTION_KEY_ENV = "OPENAI_API_KEY"
STAND_IN_PREFIXES = ("similarity (no judge)", "similarity (judge")


# ---------------------------------------------------------------- plain helpers (tested directly)


def relay_judge(
    backend: RelayBackend, max_tokens: int = 8
) -> Callable[[list[dict[str, Any]]], str]:
    """A judge completion function over a relay candidate (its limits, retries and auth rules).

    An auth failure raises (the judge cannot go on); any other failed call raises RuntimeError,
    which the scorer treats as one lost comparison.
    """

    def complete(messages: list[dict[str, Any]]) -> str:
        results: list[ReplayResult] = []
        backend.replay(
            [ReplayRequest("judge", messages, max_tokens=max_tokens, temperature=0.0)],
            results.append,
        )
        if not results:
            raise RuntimeError(f"judge {backend.name!r}: request not sent")
        result = results[0]
        if result.error_kind is not None:
            raise RuntimeError(
                f"judge {backend.name!r}: {result.error_kind}: {result.error_message}"
            )
        return result.output_text or ""

    return complete


def plan_candidates(settings: PlannerSettings) -> dict[str, Candidate]:
    """Every configured candidate plus production (priced from the baseline or the price table)."""
    out: dict[str, Candidate] = {}
    for c in settings.candidates:
        if c.name == PRODUCTION:
            raise ConfigError(
                settings.source, f"candidate name {PRODUCTION!r} is reserved for the baseline"
            )
        out[c.name] = Candidate(
            name=c.name,
            kind=c.kind,
            price_in=c.price_in,
            price_out=c.price_out,
            rpm=c.rpm,
            tpm=c.tpm,
            base_url=c.base_url,
            model=c.model,
            api_key_env=c.api_key_env,
            timeout_s=c.timeout_s,
            max_retries=c.max_retries,
        )
    base = settings.baseline
    hit = match_price(base.model, price_table(settings.price_overrides()))
    price_in = base.price_in if base.price_in is not None else (hit[1] if hit else 0.0)
    price_out = base.price_out if base.price_out is not None else (hit[2] if hit else 0.0)
    out[PRODUCTION] = Candidate(
        name=PRODUCTION,
        kind="production",
        price_in=price_in,
        price_out=price_out,
        base_url=PRODUCTION_BASE_URL,
        model=base.model,
        api_key_env=PRODUCTION_KEY_ENV,
    )
    return out


def fit_row(fit: Any) -> dict[str, Any]:
    """The plain fit figures the planner takes, from a planner.devices fit."""
    return {
        "fits": fit.fits,
        "needed_mb": fit.required_mb,
        "headroom_mb": fit.headroom_mb,
        "est_tokens_per_s": fit.decode_tokens_per_s,
    }


def classifier_figures(classifier_path: Path | None) -> dict[str, Any] | None:
    """The classifier's evaluation figures from a JSON card beside its .onnx file, if any."""
    if classifier_path is None:
        return None
    for name in (classifier_path.with_suffix(".json"), classifier_path.parent / "model_card.json"):
        if name.is_file():
            try:
                data = json.loads(name.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise PlanError(f"{name}: classifier card is not valid JSON: {exc}") from exc
            return data if isinstance(data, dict) else None
    return None


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


def observations_from(
    rows: list[dict[str, Any]], candidates: Mapping[str, Candidate]
) -> tuple[list[Observation], set[str]]:
    """Warehouse rows as observations; replays of candidates no longer configured are left out."""
    out: list[Observation] = []
    dropped: set[str] = set()
    for row in rows:
        if row["candidate"] not in candidates:
            dropped.add(str(row["candidate"]))
            continue
        out.append(
            Observation(
                request_id=str(row["request_id"]),
                task_type=str(row["task_type"]),
                candidate=str(row["candidate"]),
                quality=None if row["quality"] is None else float(row["quality"]),
                scorer=row["scorer"],
                error_kind=row["error_kind"],
                ttft_ms=row["ttft_ms"],
                latency_ms=row["latency_ms"],
                prompt_tokens=row["prompt_tokens"],
                completion_tokens=row["completion_tokens"],
                tokens_per_s=row["tokens_per_s"],
                cost_usd=None if row["cost_usd"] is None else float(row["cost_usd"]),
                peak_rss_mb=row["peak_rss_mb"],
                reference_tokens=row["reference_tokens"],
                conversation_id=row["conversation_id"],
                turn_index=row["turn_index"],
            )
        )
    return out, dropped


# ---------------------------------------------------------------- tasks

_T = TypeVar("_T")


def _plain(value: _T) -> _T:
    """A task argument Prefect must not walk: the traffic holds a row per request, and Prefect
    visits every element of a collection looking for futures before each task (seconds on 100k
    requests). These are plain values, never futures."""
    return cast(_T, quote(value))


@task(name="score", cache_policy=NO_CACHE)
def score_task(
    config_path: str | None, warehouse_path: str, judge: str | None, rescore: bool
) -> dict[str, Any]:
    """Score every replay not scored yet (or scored by a stand-in, when a judge is now set)."""
    settings = load_settings(config_path)
    setup: JudgeSetup | None = None
    con = open_warehouse(warehouse_path, create=False)
    try:
        if judge is not None:
            from flows.replay_flow import relay_backend

            cand = settings.candidate(judge)
            if cand.kind != "relay":
                raise ConfigError(settings.source, f"judge {judge!r} must be a relay candidate")
            backend = relay_backend(cand)
            setup = JudgeSetup(
                relay_judge(backend),
                name=judge,
                cache=JudgeCache(
                    lambda key: judge_cache_get(con, key),
                    lambda key, reply: judge_cache_put(con, key, judge, reply),
                ),
                task_types=JUDGED_TYPES,
            )
        rows = scoring_inputs(con)
        todo = [
            r
            for r in rows
            if rescore
            or r["quality_scorer"] is None
            or (
                setup is not None
                and r["task_type"] in setup.task_types
                and str(r["quality_scorer"]).startswith(STAND_IN_PREFIXES)
            )
        ]
        items = [
            ScoreItem(
                r["replay_id"],
                r["task_type"],
                r["reference"],
                r["output_text"],
                tuple(messages_from_json(r["messages_json"])),
            )
            for r in todo
        ]
        scores = score_items(items, setup)
        store_scores(con, [(s.replay_id, s.metric, s.value, s.scorer) for s in scores])
    finally:
        con.close()
    return {"replays": len(rows), "scored": len(items), "rows": len(scores), "judge": judge}


@task(name="device-fit", cache_policy=NO_CACHE)
def device_task(
    config_path: str | None, warehouse_path: str
) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None, list[str]]:
    """Each local candidate's fit on the configured device tier (planner.devices estimates).

    Returns (fits by candidate, the device's name/power/battery, notes). A local candidate whose
    folder cannot be inspected has no fit (the plan then keeps it out, and says why).
    """
    from planner.devices import device_by_id, estimate_fit, load_devices, measure_host
    from planner.model_folder import inspect_model

    settings = load_settings(config_path)
    local = [c for c in settings.candidates if c.kind == "local"]
    if not local:
        return {}, None, []
    con = open_warehouse(warehouse_path, read_only=True, create=False)
    try:
        tokens = workload_tokens(con)
        speeds = measured_decode_speed(con)
    finally:
        con.close()
    # the bandwidth measurement (0.2 s) is kept beside the warehouse for a week
    host = measure_host(
        cache_file=Path(warehouse_path).with_name(Path(warehouse_path).name + ".host.json")
    )
    device = device_by_id(load_devices(host), settings.objectives.device)
    fits: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    for cand in local:
        try:
            info = inspect_model(Path(str(cand.path)))
        except PlannerError as exc:
            notes.append(f"No device fit for {cand.name}: {exc}.")
            continue
        fit = estimate_fit(
            info,
            device,
            host,
            context_tokens=max(1, round(tokens["context_p95"])),
            prompt_tokens=max(1, round(tokens["prompt_mean"])),
            output_tokens=max(1, round(tokens["completion_mean"])),
            host_decode_tokens_per_s=speeds.get(cand.name),
        )
        fits[cand.name] = fit_row(fit)
    power = {
        "name": device.name,
        "power_w": device.sustained_power_w,
        "battery_wh": device.battery_wh,
    }
    return fits, power, notes


@dataclass(frozen=True)
class PlanInputs:
    """What the warehouse says, as plain planner data."""

    observations: tuple[Observation, ...]
    traffic: Traffic
    conversations: Conversations
    samples: tuple[SampleOutput, ...]
    dropped_candidates: tuple[str, ...]


@task(name="evidence", cache_policy=NO_CACHE)
def evidence_task(
    warehouse_path: str,
    candidates: dict[str, Candidate],
    fits: dict[str, dict[str, Any]],
    floor: float,
    seed: int,
) -> tuple[PlanInputs, list[Evidence]]:
    """Read replays, scores and traffic; summarize the evidence per (task type, candidate)."""
    con = open_warehouse(warehouse_path, read_only=True, create=False)
    try:
        observations, dropped = observations_from(evidence_rows(con), candidates)
        traffic_rows = traffic_by_type(con)
        shape = conversation_shape(con)
        conversations = Conversations(
            shape["requests"], tuple(shape["depth"]), tuple(shape["later"])
        )
        samples = tuple(
            SampleOutput(
                task_type=s["task_type"],
                request_id=s["request_id"],
                prompt=s["prompt"],
                production=s["production"],
                answers=tuple(
                    (a["candidate"], a["text"], a["quality"], a["error_kind"])
                    for a in s["answers"]
                    if a["candidate"] in candidates
                ),
            )
            for s in sample_outputs(con, per_type=3)
        )
    finally:
        con.close()
    traffic = Traffic(
        period_days=traffic_rows["period_days"],
        types=tuple(
            TypeTraffic(**{k: t[k] for k in TypeTraffic.__dataclass_fields__})
            for t in traffic_rows["types"]
        ),
    )
    evidence = build_evidence(observations, candidates, floor=floor, fits=fits, seed=seed)
    inputs = PlanInputs(
        tuple(observations), traffic, conversations, samples, tuple(sorted(dropped))
    )
    return inputs, evidence


@task(name="decide", cache_policy=NO_CACHE)
def decide_task(
    inputs: PlanInputs,
    evidence: list[Evidence],
    objectives: Objectives,
    candidates: dict[str, Candidate],
) -> tuple[Decision, Stickiness | None, list[tuple[float, Decision]], list[View]]:
    """The routes, what stickiness moves, the floor sweep, and the other routing rules."""
    return route_plan(
        evidence,
        inputs.observations,
        objectives,
        candidates,
        inputs.traffic,
        inputs.conversations,
    )


@task(name="project", cache_policy=NO_CACHE)
def project_task(
    inputs: PlanInputs,
    evidence: list[Evidence],
    decision: Decision,
    sticky: Stickiness | None,
    sweep: list[tuple[float, Decision]],
    candidates: dict[str, Candidate],
    device: Device | None,
    migration_cost_usd: float,
    previous: dict[str, float],
    judge_used: bool,
) -> tuple[Projection, list[FrontierPoint], list[Risk]]:
    """Monthly cost, quality and latency; the frontier; the risks."""
    return project_plan(
        decision,
        sticky,
        sweep,
        inputs.traffic,
        evidence,
        candidates,
        device=device,
        migration_cost_usd=migration_cost_usd,
        previous_quality=previous,
        judge_used=judge_used,
    )


@task(name="artifacts", cache_policy=NO_CACHE)
def artifacts_task(
    run_dir: str,
    report: PlanReport,
    confidence_threshold: float,
    classifier_path: str | None,
) -> dict[str, str]:
    """routing.yaml, litellm.yaml, rollback.yaml, metrics.json (+ classifier.onnx when given)."""
    folder = Path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    if classifier_path is not None:
        shutil.copyfile(classifier_path, folder / "classifier.onnx")
    paths = write_artifacts(
        folder,
        report.decision,
        report.candidates,
        report.metrics(),
        classifier_file="classifier.onnx",
        confidence_threshold=confidence_threshold,
        stickiness=report.stickiness,
        triggers=Triggers(p95_latency_ms=report.objectives.p95_latency_ms),
        gateway=Gateway(),
        run_id=report.run_id,
    )
    return {name: str(path) for name, path in paths.items()}


@task(name="render", cache_policy=NO_CACHE)
def render_task(run_dir: str, report: PlanReport) -> str:
    return str(write_plan(report, Path(run_dir) / "plan.html"))


# ---------------------------------------------------------------- the flow


def new_run_id(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).strftime("plan-%Y%m%d-%H%M%S")


@flow(name="plan")
def plan_flow(
    config_path: str | None = None,
    out_dir: str | None = None,
    warehouse_path: str | None = None,
    judge: str | None = None,
    rescore: bool = False,
    classifier_path: str | None = None,
    device_power_w: float | None = None,
    battery_wh: float | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Score the replays, decide the routes, project the month, write the artifacts and the HTML.
    ``run_id`` names the run in metrics.json and the configs (the parent flow passes its own)."""
    settings = load_settings(config_path)
    warehouse = warehouse_path or str(settings.warehouse.path)
    run_id = run_id or new_run_id()
    run_dir = Path(out_dir) if out_dir else settings.output.dir / run_id
    objectives = Objectives(
        quality_floor=settings.objectives.quality_floor,
        p95_latency_ms=settings.objectives.p95_latency_ms,
    )
    candidates = plan_candidates(settings)
    if classifier_path is not None and not Path(classifier_path).is_file():
        raise PlanError(f"{classifier_path}: classifier file not found")

    scored = score_task(config_path, warehouse, judge, rescore)
    fits, power, device_notes = device_task(config_path, warehouse)
    inputs, evidence = evidence_task(
        warehouse, candidates, fits, objectives.quality_floor, settings.replay.seed
    )
    if not any(e.kind != "production" for e in evidence):
        raise PlanError("no replays to plan from: run `migration-planner replay` first")
    decision, sticky, sweep, views = decide_task(
        _plain(inputs), _plain(evidence), objectives, candidates
    )
    tier = power or {}
    power_w = device_power_w if device_power_w is not None else tier.get("power_w")
    device = None
    if power_w:
        device = Device(
            name=str(tier.get("name", settings.objectives.device)),
            power_w=float(power_w),
            battery_wh=battery_wh if battery_wh is not None else tier.get("battery_wh"),
        )
    previous = (
        previous_quality(settings.output.dir, run_dir) if settings.output.dir.is_dir() else {}
    )
    projection, points, risks = project_task(
        _plain(inputs),
        _plain(evidence),
        decision,
        sticky,
        sweep,
        candidates,
        device,
        settings.objectives.migration_cost_usd,
        previous,
        judge is not None,
    )
    depth = dict(inputs.conversations.depth)
    notes: list[str] = []
    if judge is None and any(
        s.startswith("similarity (no judge)") for e in evidence for s in e.scorers
    ):
        notes.append(
            "No LLM judge was configured: open-ended task types were scored by text similarity."
        )
    if inputs.dropped_candidates:
        notes.append(
            "Replays of candidates no longer configured were left out: "
            + ", ".join(inputs.dropped_candidates)
            + "."
        )
    notes.extend(device_notes)
    classifier = classifier_figures(Path(classifier_path) if classifier_path else None)
    if classifier is not None:
        classifier = {
            **classifier,
            "confidence_threshold": settings.classifier.confidence_threshold,
        }
    report = PlanReport(
        title="LLM migration plan",
        generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        objectives=objectives,
        traffic=inputs.traffic,
        evidence=tuple(evidence),
        decision=decision,
        projection=projection,
        candidates=candidates,
        frontier=tuple(points),
        views=tuple(views),
        risks=tuple(risks),
        samples=inputs.samples,
        stickiness=sticky,
        conversation_depth=depth,
        classifier=classifier,
        device=device,
        judge=judge,
        run_id=run_id,
        notes=tuple(notes),
    )
    paths = artifacts_task(
        str(run_dir), _plain(report), settings.classifier.confidence_threshold, classifier_path
    )
    html = render_task(str(run_dir), _plain(report))
    return {
        "run_id": run_id,
        "run_dir": str(run_dir),
        "plan": html,
        **paths,
        "scoring": scored,
        "verdict": projection.verdict,
        "savings_usd_per_month": round(projection.savings_usd, 2),
        "migrated_share": round(projection.migrated_share, 4),
        "routes": {r.task_type: r.route for r in decision.routes},
    }
