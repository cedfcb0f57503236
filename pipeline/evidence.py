"""What the warehouse holds, as the planner's evidence: scores of the replays (with the judge
where configured), production's ceiling, each local candidate's fit and latency factor on the
device tier, and the observations, traffic, conversation shape and sample answers the plan is
assembled from (:mod:`pipeline.plan`).

The judge is ``[judge]`` of the settings: an OpenAI-compatible endpoint that is not a judged
candidate, asked through the same relay client as the replays (rate limits, retries, breaker,
its own cost cap, the warehouse's judge cache), concurrently.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from pipeline.current import CurrentEvidence, current_evidence
from pipeline.judge import judge_enabled, judge_setup
from planner.errors import BudgetExceeded, CircuitOpenError, PlanError, PlannerError
from planner.evaluate.conversations import Conversations
from planner.evaluate.evidence import Candidate, Method, Observation
from planner.evaluate.projection import Traffic, TypeTraffic
from planner.evaluate.scoring import ScoreItem, score_items, score_without_judge
from planner.evaluate.verdict import Ceiling, PassRules, is_judge, judge_ceiling, measure_ceiling
from planner.replay.protocol import ReplayRequest, ReplayResult
from planner.replay.ratelimit import CostBudget
from planner.replay.relay import RelayBackend
from planner.report.render import SampleOutput
from planner.settings import PlannerSettings
from warehouse.connection import open_warehouse
from warehouse.pricing import match_price, price_table
from warehouse.replays import stale_replays
from warehouse.sampling import latest_sample_id, sample_layout, sampled_requests
from warehouse.scores import (
    conversation_shape,
    evidence_rows,
    measured_decode_speed,
    messages_from_json,
    sample_outputs,
    scoring_inputs,
    store_scores,
    traffic_by_type,
    workload_tokens,
)
from warehouse.verdicts import reasked_ids, repeat_pairs, store_reasks

STAND_IN_PREFIXES = ("similarity (no judge)", "similarity (judge")
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0"})


def method_from(settings: PlannerSettings) -> Method:
    v = settings.verdict
    return Method(
        confidence=v.confidence,
        first_look=v.first_round,
        rules=PassRules(similarity_pass=v.similarity_pass, tie_credit=v.tie_credit),
        resamples=v.bootstrap_resamples,
        ceiling_min_pairs=v.ceiling_min_pairs,
        seed=settings.replay.seed,
    )


def baseline_prices(settings: PlannerSettings) -> tuple[float, float]:
    """Production's USD per 1M input and output tokens: the baseline's, else the price table."""
    base = settings.baseline
    hit = match_price(base.model, price_table(settings.price_overrides()))
    price_in = base.price_in if base.price_in is not None else (hit[1] if hit else 0.0)
    price_out = base.price_out if base.price_out is not None else (hit[2] if hit else 0.0)
    return price_in, price_out


def is_loopback(url: str | None) -> bool:
    """A URL on this machine (127.0.0.1, localhost): figures from it are labeled as such."""
    return bool(url) and (urlsplit(str(url)).hostname or "") in LOOPBACK


def fit_row(fit: Any) -> dict[str, Any]:
    """The plain fit figures the planner takes, from a planner.models.devices fit."""
    return {
        "fits": fit.fits,
        "needed_mb": fit.required_mb,
        "headroom_mb": fit.headroom_mb,
        "est_tokens_per_s": fit.decode_tokens_per_s,
        "latency_factor": fit.latency_factor,
        "latency_basis": fit.latency_basis,
    }


def observations_from(
    rows: list[dict[str, Any]],
    candidates: Mapping[str, Candidate],
    layout: Mapping[str, tuple[str, str, int]] | None = None,
) -> tuple[list[Observation], set[str]]:
    """Warehouse rows as observations, placed by the sample's layout (stratum, position);
    replays of candidates no longer configured are left out."""
    out: list[Observation] = []
    dropped: set[str] = set()
    for row in rows:
        if row["candidate"] not in candidates:
            dropped.add(str(row["candidate"]))
            continue
        stratum, _, position = (layout or {}).get(str(row["request_id"]), ("type", "", None))
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
                position=position,
                stratum=stratum,
            )
        )
    return out, dropped


def score_replays(
    settings: PlannerSettings,
    warehouse: str,
    judge: str | None = None,
    rescore: bool = False,
    judge_budget: CostBudget | None = None,
) -> dict[str, Any]:
    """Score every current replay not scored yet (or scored by a stand-in, when the judge is now
    set); replays of older fingerprints are not evidence, so they are not scored.

    Items the judge could not reach (its budget or circuit) stay unscored for a later run."""
    use_judge = judge_enabled(settings, judge)
    if use_judge and judge_budget is None:
        judge_budget = CostBudget(settings.judge.max_cost_usd)
    current = current_evidence(settings)
    con = open_warehouse(warehouse, create=False)
    try:
        setup = judge_setup(settings, con, judge_budget) if use_judge else None
        rows = scoring_inputs(con, None, current.fingerprints, current.fresh_after)
        judge_scorers = {setup.scorer(1), setup.scorer(2)} if setup is not None else set()
        todo = [
            r
            for r in rows
            if rescore
            or r["quality_scorer"] is None
            or (
                setup is not None
                and r["task_type"] in setup.task_types
                and r["quality_scorer"] not in judge_scorers
                and (
                    str(r["quality_scorer"]).startswith(STAND_IN_PREFIXES)
                    or is_judge(r["quality_scorer"])
                )
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
        scoring = score_items(items, setup)
        store_scores(con, [(s.replay_id, s.metric, s.value, s.scorer) for s in scoring.scores])
    finally:
        con.close()
    return {
        "replays": len(rows),
        "scored": len(items) - scoring.awaiting_judge,
        "rows": len(scoring.scores),
        "judge": settings.judge.name if use_judge else None,
        # what the judge's budget has spent so far (a budget shared by the rounds: all of them)
        "judge_spent_usd": judge_budget.spent_usd if judge_budget is not None else 0.0,
        **{k: v for k, v in scoring.summary().items() if k != "rows"},
    }


# ---------------------------------------------------------------- production's ceiling

# A production pair's score by its type's rule (it depends only on these four texts), kept for
# the process: a run's rounds and its plan measure the same pairs (10,000 take half a second).
_PAIR_SCORES: dict[tuple[str, ...], tuple[str | None, float]] = {}


def measure_ceilings(
    settings: PlannerSettings, warehouse: str, judged: bool, task_types: Sequence[str] = ()
) -> dict[str, Ceiling]:
    """Production's ceiling per task type: exact-repeat (and re-asked) pairs scored by the
    type's own rule; judged types (when the judge scores) by the symmetry of the comparison."""
    method = method_from(settings)
    judged_types = set(settings.judge.task_types) if judged else set()
    con = open_warehouse(warehouse, read_only=True, create=False)
    try:
        pairs = repeat_pairs(con)
    finally:
        con.close()
    by_type: dict[str, list[tuple[str | None, float, str]]] = defaultdict(list)
    if len(_PAIR_SCORES) > 200_000:  # a long-lived `serve` process: keep it bounded
        _PAIR_SCORES.clear()
    for pair in pairs:
        if pair["task_type"] in judged_types:
            continue
        key = tuple(
            str(pair[k] or "") for k in ("task_type", "reference", "answer", "messages_json")
        )
        if key not in _PAIR_SCORES:
            messages = tuple(messages_from_json(key[3] or None))
            item = ScoreItem("pair", key[0], key[1], key[2], messages)
            quality = score_without_judge(item)[0]
            _PAIR_SCORES[key] = (quality[2], float(quality[1]))
        scorer, value = _PAIR_SCORES[key]
        by_type[pair["task_type"]].append((scorer, value, pair["source"]))
    out: dict[str, Ceiling] = {}
    for task_type in sorted(set(by_type) | set(task_types) | judged_types):
        if task_type in judged_types:
            out[task_type] = judge_ceiling(task_type, method.rules)
            continue
        out[task_type] = measure_ceiling(
            task_type,
            by_type.get(task_type, []),
            method.rules,
            alpha=method.alpha / 2,
            min_pairs=method.ceiling_min_pairs,
        )
    return out


def reask_production(settings: PlannerSettings, warehouse: str) -> dict[str, Any] | None:
    """Ask production again a few sampled requests per type (``[baseline] reask_per_type``,
    off by default, within ``reask_max_cost_usd``): its second answers measure its ceiling."""
    base = settings.baseline
    if not base.base_url or base.reask_per_type <= 0:
        return None
    con = open_warehouse(warehouse, create=False)
    try:
        layout = sample_layout(con, settings.replay.seed)
        done = reasked_ids(con)
        picked = sorted(
            (t, pos, rid)
            for rid, (stratum, t, pos) in layout.items()
            if stratum == "type" and pos < base.reask_per_type and rid not in done
        )
        sid = latest_sample_id(con)
        sampled = {s.request_id: s for s in sampled_requests(con, sid)} if sid else {}
    finally:
        con.close()
    requests = [
        ReplayRequest(
            rid,
            sampled[rid].messages,
            max_tokens=min(
                sampled[rid].max_tokens or settings.replay.max_new_tokens,
                settings.replay.max_new_tokens,
            ),
            temperature=sampled[rid].temperature or 0.0,
            params=sampled[rid].params,
        )
        for _, _, rid in picked
        if rid in sampled
    ]
    if not requests:
        return {"asked": 0, "answered": 0, "stopped": None}
    price_in, price_out = baseline_prices(settings)
    backend = RelayBackend(
        "production",
        base.base_url,
        base.model,
        _secret(base.api_key_env),
        api_key_env=base.api_key_env,
        price_in=price_in,
        price_out=price_out,
        timeout_s=base.timeout_s,
        budget=CostBudget(base.reask_max_cost_usd),
    )
    answers: list[tuple[str, str, str | None, float]] = []

    def keep(result: ReplayResult) -> None:
        if result.error_kind is None:
            answers.append((result.request_id, base.model, result.output_text, result.cost_usd))

    stopped = None
    try:
        backend.replay(requests, keep)
    except (BudgetExceeded, CircuitOpenError) as exc:
        stopped = str(exc)
    con = open_warehouse(warehouse, create=False)
    try:
        store_reasks(con, answers)
    finally:
        con.close()
    return {"asked": len(requests), "answered": len(answers), "stopped": stopped}


def _secret(env: str | None) -> SecretStr | None:
    value = os.environ.get(env) if env else None
    return SecretStr(value) if value else None


def data_labels(settings: PlannerSettings) -> list[str]:
    """What the figures come from, when it is not production's real traffic and real endpoints:
    generated logs, and relays or a judge on this machine (127.0.0.1)."""
    labels = []
    if settings.output.synthetic_data:
        labels.append("synthetic data: the logs were generated, not production's traffic")
    local = [c.name for c in settings.candidates if c.kind == "relay" and is_loopback(c.base_url)]
    if local:
        labels.append("relay figures from 127.0.0.1 (this machine): " + ", ".join(sorted(local)))
    if settings.judge.enabled and is_loopback(settings.judge.base_url):
        labels.append(f"judge {settings.judge.name} on 127.0.0.1 (this machine)")
    return labels


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


# ---------------------------------------------------------------- devices


def device_fits(
    settings: PlannerSettings, warehouse: str
) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None, list[str]]:
    """Each local candidate's fit and latency factor on the configured device tier.

    Returns (fits by candidate, the device's name/power/battery, notes). A local candidate whose
    folder cannot be inspected has no fit (the plan then keeps it out, and says why); one whose
    folder cannot batch as configured gets a note saying what runs instead.
    """
    from planner.models.devices import device_by_id, estimate_fit, load_devices, measure_host
    from planner.models.folder import inspect_model, open_model_folder
    from planner.models.runtime import batching_for

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
            device_decode_tokens_per_s=cand.device_tokens_per_s,
        )
        fits[cand.name] = fit_row(fit)
        used, why = batching_for(open_model_folder(info.path), cand.batch_size)
        if used < cand.batch_size:
            notes.append(
                f"{cand.name}: batch size {cand.batch_size} requested, {used} used: {why}."
            )
    power = {
        "name": device.name,
        "power_w": device.sustained_power_w,
        "battery_wh": device.battery_wh,
    }
    return fits, power, notes


# ---------------------------------------------------------------- the plan's inputs


@dataclass(frozen=True)
class PlanInputs:
    """What the warehouse says, as plain planner data."""

    observations: tuple[Observation, ...]
    traffic: Traffic
    conversations: Conversations
    samples: tuple[SampleOutput, ...]
    dropped_candidates: tuple[str, ...]
    strata: dict[str, int] = field(default_factory=dict)  # sampled requests per stratum
    stale: dict[str, dict[str, int]] = field(default_factory=dict)  # candidate -> why -> requests


def read_observations(
    warehouse: str,
    candidates: Mapping[str, Candidate],
    seed: int,
    current: CurrentEvidence | None = None,
) -> tuple[list[Observation], set[str]]:
    """The sample's current replays (and production's rows) with their scores, placed in sample
    order (``current``: the candidates' fingerprints and freshness; None reads every replay)."""
    fps = current.fingerprints if current is not None else None
    fresh = current.fresh_after if current is not None else None
    con = open_warehouse(warehouse, read_only=True, create=False)
    try:
        layout = sample_layout(con, seed)
        return observations_from(evidence_rows(con, None, fps, fresh), candidates, layout)
    finally:
        con.close()


def read_plan_inputs(
    warehouse: str,
    candidates: Mapping[str, Candidate],
    seed: int = 0,
    current: CurrentEvidence | None = None,
) -> PlanInputs:
    """Current replays with their scores, traffic per task type, conversation shape, sample
    answers; and, per candidate, the sampled requests whose replays are stale (``current``: the
    candidates' fingerprints; None reads every replay)."""
    observations, dropped = read_observations(warehouse, candidates, seed, current)
    fps = current.fingerprints if current is not None else None
    fresh = current.fresh_after if current is not None else None
    con = open_warehouse(warehouse, read_only=True, create=False)
    try:
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
    strata: dict[str, int] = defaultdict(int)
    for o in observations:
        if o.candidate == "production":
            strata[o.stratum] += 1
    return PlanInputs(
        tuple(observations),
        traffic,
        conversations,
        samples,
        tuple(sorted(dropped)),
        dict(strata),
        {k: v for k, v in stale.items() if k in candidates},
    )
