"""What the warehouse holds, as the planner's evidence: scores of the replays (with the judge
where configured), each local candidate's fit on the device tier, and the observations, traffic,
conversation shape and sample answers the plan is assembled from (:mod:`pipeline.plan`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.current import CurrentEvidence
from planner.errors import ConfigError, PlannerError
from planner.evaluate.conversations import Conversations
from planner.evaluate.evidence import (
    Candidate,
    Observation,
)
from planner.evaluate.projection import (
    Traffic,
    TypeTraffic,
)
from planner.evaluate.scoring import JUDGED_TYPES, JudgeCache, JudgeSetup, ScoreItem, score_items
from planner.replay.completion import completion_function
from planner.report.render import SampleOutput
from planner.settings import PlannerSettings
from warehouse.connection import open_warehouse
from warehouse.replays import stale_replays
from warehouse.sampling import latest_sample_id
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

STAND_IN_PREFIXES = ("similarity (no judge)", "similarity (judge")
JUDGE_MAX_TOKENS = 8


def fit_row(fit: Any) -> dict[str, Any]:
    """The plain fit figures the planner takes, from a planner.models.devices fit."""
    return {
        "fits": fit.fits,
        "needed_mb": fit.required_mb,
        "headroom_mb": fit.headroom_mb,
        "est_tokens_per_s": fit.decode_tokens_per_s,
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


def score_replays(
    settings: PlannerSettings, warehouse: str, judge: str | None, rescore: bool
) -> dict[str, Any]:
    """Score every current replay not scored yet (or scored by a stand-in, when a judge is now
    set); replays of older fingerprints are not evidence, so they are not scored."""
    from pipeline.current import current_evidence
    from pipeline.replay import relay_backend

    current = current_evidence(settings)

    setup: JudgeSetup | None = None
    con = open_warehouse(warehouse, create=False)
    try:
        if judge is not None:
            cand = settings.candidate(judge)
            if cand.kind != "relay":
                raise ConfigError(settings.source, f"judge {judge!r} must be a relay candidate")
            backend = relay_backend(cand, names=settings.privacy.names)
            setup = JudgeSetup(
                completion_function(backend, max_tokens=JUDGE_MAX_TOKENS, purpose="judge"),
                name=judge,
                cache=JudgeCache(
                    lambda key: judge_cache_get(con, key),
                    lambda key, reply: judge_cache_put(con, key, judge, reply),
                ),
                task_types=JUDGED_TYPES,
            )
        rows = scoring_inputs(con, None, current.fingerprints, current.fresh_after)
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


def device_fits(
    settings: PlannerSettings, warehouse: str
) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None, list[str]]:
    """Each local candidate's fit on the configured device tier (planner.models.devices).

    Returns (fits by candidate, the device's name/power/battery, notes). A local candidate whose
    folder cannot be inspected has no fit (the plan then keeps it out, and says why).
    """
    from planner.models.devices import device_by_id, estimate_fit, load_devices, measure_host
    from planner.models.folder import inspect_model

    local = [c for c in settings.candidates if c.kind == "local"]
    if not local:
        return {}, None, []
    con = open_warehouse(warehouse, read_only=True, create=False)
    try:
        tokens = workload_tokens(con)
        speeds = measured_decode_speed(con)
    finally:
        con.close()
    # the bandwidth measurement (0.2 s) is kept beside the warehouse for a week
    host = measure_host(cache_file=Path(warehouse).with_name(Path(warehouse).name + ".host.json"))
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
    stale: dict[str, dict[str, int]] = field(default_factory=dict)  # candidate -> why -> requests


def read_plan_inputs(
    warehouse: str,
    candidates: Mapping[str, Candidate],
    current: CurrentEvidence | None = None,
) -> PlanInputs:
    """Current replays with their scores, traffic per task type, conversation shape, sample
    answers; and, per candidate, the sampled requests whose replays are stale (``current``: the
    candidates' fingerprints; None reads every replay)."""
    fps = current.fingerprints if current is not None else None
    fresh = current.fresh_after if current is not None else None
    con = open_warehouse(warehouse, read_only=True, create=False)
    try:
        observations, dropped = observations_from(evidence_rows(con, None, fps, fresh), candidates)
        stale = stale_replays(con, latest_sample_id(con) or "", fps, fresh) if fps else {}
        dropped |= {name for name in stale if name not in candidates}
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
            for s in sample_outputs(con, 3, None, fps, fresh)
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
    return PlanInputs(
        tuple(observations),
        traffic,
        conversations,
        samples,
        tuple(sorted(dropped)),
        {k: v for k, v in stale.items() if k in candidates},
    )
