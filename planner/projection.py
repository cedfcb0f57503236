"""What the plan does to a month of traffic: cost, quality, latency, energy, payback, risks.

The logged period's traffic per task type is scaled to 30 days. A request costs what production
logged for it today; after the move it costs its route's price on the same token counts (local:
no API cost), plus the share that fails over to the next hop at that hop's price. Quality and
latency come from the evidence of each type's route. Energy is the device's power draw times the
generation time at the model's tokens/s (prompt processing not counted).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from planner.decision import Decision, Route, Stickiness
from planner.errors import PlanError
from planner.evidence import PRODUCTION, Candidate, Evidence

DAYS_PER_MONTH = 30.0


@dataclass(frozen=True)
class TypeTraffic:
    """Logged traffic of one task type over the logged period."""

    task_type: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    uncertain: int = 0  # requests the classifier was unsure of
    first_half: int = 0  # requests in the first half of the period (drift check)
    second_half: int = 0


@dataclass(frozen=True)
class Traffic:
    period_days: float
    types: tuple[TypeTraffic, ...]

    def __post_init__(self) -> None:
        if self.period_days <= 0:
            raise PlanError(f"logged period must be positive, got {self.period_days} days")

    @property
    def requests(self) -> int:
        return sum(t.requests for t in self.types)

    def shares(self) -> dict[str, float]:
        total = self.requests
        return {t.task_type: (t.requests / total if total else 0.0) for t in self.types}


@dataclass(frozen=True)
class Device:
    """The device tier's power draw under load and battery capacity (plain numbers)."""

    name: str = "device"
    power_w: float = 5.0
    battery_wh: float | None = None


@dataclass(frozen=True)
class TypeProjection:
    task_type: str
    route: str
    kind: str
    monthly_requests: float
    cost_before_usd: float
    cost_after_usd: float
    savings_usd: float
    quality: float | None
    latency_p95_ms: float | None
    latency_p95_before_ms: float | None
    uncertain_share: float
    energy_wh_per_request: float | None
    battery_pct_per_100_requests: float | None
    suitable: bool
    verdict: str


@dataclass(frozen=True)
class Projection:
    period_days: float
    monthly_factor: float
    monthly_requests: float
    cost_before_usd: float
    cost_after_usd: float
    savings_usd: float
    savings_share: float
    quality: float | None
    latency_p95_before_ms: float | None
    latency_p95_after_ms: float | None
    tier_share: dict[str, float]
    route_share: dict[str, float]
    migrated_share: float  # traffic that leaves production
    cloud_calls_removed: float  # traffic that no longer calls any cloud API (runs locally)
    migration_cost_usd: float
    payback_months: float | None
    stickiness_cost_usd: float  # monthly cost (+) or saving (-) of keeping conversations sticky
    types: tuple[TypeProjection, ...]
    verdict: str
    suitability: str  # "suitable" | "partly suitable" | "not suitable"

    def summary(self) -> dict[str, Any]:
        data = {k: v for k, v in vars(self).items() if k != "types"}
        data["types"] = [vars(t).copy() for t in self.types]
        return data


def _evidence_map(evidence: Iterable[Evidence]) -> dict[tuple[str, str], Evidence]:
    return {(e.task_type, e.candidate): e for e in evidence}


def request_cost(route: str, traffic: TypeTraffic, candidates: Mapping[str, Candidate]) -> float:
    """USD per request of ``traffic``'s type on ``route`` (production: what the log says)."""
    if traffic.requests == 0:
        return 0.0
    if route == PRODUCTION:
        return traffic.cost_usd / traffic.requests
    cand = candidates.get(route)
    if cand is None:
        raise PlanError(f"route {route!r} is not a configured candidate")
    if cand.kind == "local":
        return 0.0
    if cand.kind == "production":
        return traffic.cost_usd / traffic.requests
    return cand.cost_usd(
        traffic.prompt_tokens / traffic.requests, traffic.completion_tokens / traffic.requests
    )


def _expected_cost(
    route_name: str,
    fallbacks: Sequence[str],
    t: TypeTraffic,
    candidates: Mapping[str, Candidate],
    ev: dict[tuple[str, str], Evidence],
) -> float:
    """Per-request cost including the failed share that goes on to the next hop."""
    cost = request_cost(route_name, t, candidates)
    evid = ev.get((t.task_type, route_name))
    if route_name != PRODUCTION and evid is not None and evid.error_rate > 0:
        next_hop = fallbacks[0] if fallbacks else PRODUCTION
        cost += evid.error_rate * request_cost(next_hop, t, candidates)
    return cost


def weighted_quantile(values: Sequence[float], weights: Sequence[float], q: float) -> float | None:
    """The q-quantile (0-1) of a weighted sample: the mixture's percentile across task types."""
    if not values:
        return None
    order = np.argsort(values)
    vals = np.asarray(values, dtype=float)[order]
    wts = np.asarray(weights, dtype=float)[order]
    if wts.sum() <= 0:
        return None
    cum = np.cumsum(wts) / wts.sum()
    return float(vals[min(int(np.searchsorted(cum, q)), len(vals) - 1)])


def _quality_of(
    route_name: str,
    task_type: str,
    ev: dict[tuple[str, str], Evidence],
    evidence: Sequence[Evidence],
) -> float | None:
    if route_name == PRODUCTION:
        return 1.0
    hit = ev.get((task_type, route_name))
    if hit is not None and hit.quality_mean is not None:
        return hit.quality_mean
    same = [
        e.quality_mean for e in evidence if e.candidate == route_name and e.quality_mean is not None
    ]
    return float(np.mean(same)) if same else None


def _samples(
    route_name: str, task_type: str, ev: dict[tuple[str, str], Evidence]
) -> tuple[float, ...]:
    hit = ev.get((task_type, route_name))
    return hit.latency_samples if hit is not None else ()


def _energy(
    route: Route, t: TypeTraffic, ev: dict[tuple[str, str], Evidence], device: Device | None
) -> tuple[float | None, float | None]:
    if device is None or route.kind != "local" or t.requests == 0:
        return None, None
    hit = ev.get((t.task_type, route.route))
    tps = None
    if hit is not None:
        tps = hit.fit.est_tokens_per_s if hit.fit and hit.fit.est_tokens_per_s else hit.tokens_per_s
    if not tps:
        return None, None
    seconds = (t.completion_tokens / t.requests) / tps
    wh = device.power_w * seconds / 3600.0
    battery = wh * 100 / device.battery_wh * 100 if device.battery_wh else None
    return wh, battery


def type_verdict(route: Route) -> str:
    if route.kind == "production":
        return f"Not suitable yet: stay on production ({route.reason})."
    where = "on the device" if route.kind == "local" else "through the relay"
    low = f"{route.quality_low:.0%}" if route.quality_low is not None else "?"
    return (
        f"Suitable: move to {route.route} {where}; "
        f"quality at least {low} of production (95% lower bound)."
    )


def project(
    decision: Decision,
    traffic: Traffic,
    evidence: Sequence[Evidence],
    candidates: Mapping[str, Candidate],
    *,
    device: Device | None = None,
    migration_cost_usd: float = 0.0,
    stickiness: Stickiness | None = None,
) -> Projection:
    """Monthly cost before/after, quality, latency, tier shares, energy, payback and verdicts."""
    if traffic.requests == 0:
        raise PlanError("no logged traffic to project (the warehouse has no requests)")
    factor = DAYS_PER_MONTH / traffic.period_days
    ev = _evidence_map(evidence)
    uncertain_route = decision.uncertain_route
    uncertain_kind = (
        "production" if uncertain_route == PRODUCTION else candidates[uncertain_route].kind
    )
    per_type: list[TypeProjection] = []
    route_share: dict[str, float] = {}
    tier_share: dict[str, float] = {"local": 0.0, "relay": 0.0, "production": 0.0}
    q_num = q_den = 0.0
    lat_after: tuple[list[float], list[float]] = ([], [])
    lat_before: tuple[list[float], list[float]] = ([], [])
    total = traffic.requests
    for t in traffic.types:
        route = decision.route_for(t.task_type)
        if route is None:
            route = Route(
                t.task_type,
                PRODUCTION,
                "production",
                (),
                "no evidence for this type",
                1.0,
                1.0,
                None,
                None,
            )
        sure = t.requests - t.uncertain
        cost_sure = _expected_cost(route.route, route.fallbacks, t, candidates, ev)
        cost_unc = _expected_cost(uncertain_route, decision.uncertain_fallbacks, t, candidates, ev)
        before = t.cost_usd * factor
        after = (sure * cost_sure + t.uncertain * cost_unc) * factor
        q_sure = _quality_of(route.route, t.task_type, ev, evidence)
        q_unc = _quality_of(uncertain_route, t.task_type, ev, evidence)
        parts = [(sure, q_sure), (t.uncertain, q_unc)]
        known = [(n, q) for n, q in parts if n > 0 and q is not None]
        quality = sum(n * q for n, q in known) / sum(n for n, _ in known) if known else None
        if quality is not None:
            q_num += quality * t.requests
            q_den += t.requests
        for n, name in ((sure, route.route), (t.uncertain, uncertain_route)):
            samples = _samples(name, t.task_type, ev)
            if n > 0 and samples:
                lat_after[0].extend(samples)
                lat_after[1].extend([n / len(samples)] * len(samples))
        prod_samples = _samples(PRODUCTION, t.task_type, ev)
        if prod_samples:
            lat_before[0].extend(prod_samples)
            lat_before[1].extend([t.requests / len(prod_samples)] * len(prod_samples))
        route_share[route.route] = route_share.get(route.route, 0.0) + sure / total
        route_share[uncertain_route] = route_share.get(uncertain_route, 0.0) + t.uncertain / total
        tier_share[route.kind] += sure / total
        tier_share[uncertain_kind] += t.uncertain / total
        wh, battery = _energy(route, t, ev, device)
        hit = ev.get((t.task_type, route.route))
        prod = ev.get((t.task_type, PRODUCTION))
        per_type.append(
            TypeProjection(
                task_type=t.task_type,
                route=route.route,
                kind=route.kind,
                monthly_requests=t.requests * factor,
                cost_before_usd=before,
                cost_after_usd=after,
                savings_usd=before - after,
                quality=quality,
                latency_p95_ms=hit.latency_p95_ms if hit else route.latency_p95_ms,
                latency_p95_before_ms=prod.latency_p95_ms if prod else None,
                uncertain_share=t.uncertain / t.requests if t.requests else 0.0,
                energy_wh_per_request=wh,
                battery_pct_per_100_requests=battery,
                suitable=route.kind != "production",
                verdict=type_verdict(route),
            )
        )
    before_total = sum(p.cost_before_usd for p in per_type)
    after_total = sum(p.cost_after_usd for p in per_type)
    savings = before_total - after_total
    migrated = 1.0 - tier_share["production"]
    sticky_cost = _stickiness_cost(stickiness, traffic, candidates, factor)
    payback = (
        None if savings <= 0 else (migration_cost_usd / savings if migration_cost_usd > 0 else 0.0)
    )
    suitability, verdict = _overall_verdict(
        migrated, savings, before_total, payback, q_num / q_den if q_den else None
    )
    return Projection(
        period_days=traffic.period_days,
        monthly_factor=factor,
        monthly_requests=total * factor,
        cost_before_usd=before_total,
        cost_after_usd=after_total,
        savings_usd=savings,
        savings_share=savings / before_total if before_total > 0 else 0.0,
        quality=q_num / q_den if q_den else None,
        latency_p95_before_ms=weighted_quantile(lat_before[0], lat_before[1], 0.95),
        latency_p95_after_ms=weighted_quantile(lat_after[0], lat_after[1], 0.95),
        tier_share=tier_share,
        route_share=dict(sorted(route_share.items())),
        migrated_share=migrated,
        cloud_calls_removed=tier_share["local"],
        migration_cost_usd=migration_cost_usd,
        payback_months=payback,
        stickiness_cost_usd=sticky_cost,
        types=tuple(per_type),
        verdict=verdict,
        suitability=suitability,
    )


def _stickiness_cost(
    stickiness: Stickiness | None,
    traffic: Traffic,
    candidates: Mapping[str, Candidate],
    factor: float,
) -> float:
    """Monthly USD that sticky routing adds (negative: saves) over routing each turn by its type."""
    if stickiness is None:
        return 0.0
    by_type = {t.task_type: t for t in traffic.types}
    delta = 0.0
    for task_type, own, sticky, count in stickiness.moves:
        t = by_type.get(task_type)
        if t is None or t.requests == 0:
            continue
        delta += count * (request_cost(sticky, t, candidates) - request_cost(own, t, candidates))
    return delta * factor


def money(value: float) -> str:
    """USD with as many decimals as a small amount needs ($1,234 / $12.50 / $0.0042)."""
    sign, value = ("-" if value < 0 else ""), abs(value)
    if value >= 100:
        return f"{sign}${value:,.0f}"
    if value >= 1:
        return f"{sign}${value:,.2f}"
    return f"{sign}${value:.4f}" if value else "$0"


def _overall_verdict(
    migrated: float, savings: float, before: float, payback: float | None, quality: float | None
) -> tuple[str, str]:
    quality_txt = f", keeping {quality:.0%} of production quality" if quality is not None else ""
    payback_txt = (
        ""
        if payback is None
        else (
            " with no migration cost" if payback == 0 else f", paying back in {payback:.1f} months"
        )
    )
    saving_txt = (
        f"saves {money(savings)}/month ({savings / before:.0%})"
        if before > 0 and savings > 0
        else "saves nothing"
    )
    if migrated <= 0:
        return (
            "not suitable",
            "Not suitable: no task type meets the quality floor, the SLO and the device; keep "
            "production.",
        )
    if savings <= 0:
        return (
            "not suitable",
            f"Not suitable on cost: {migrated:.0%} of traffic could move but it {saving_txt}.",
        )
    level = "suitable" if migrated >= 0.5 else "partly suitable"
    return (
        level,
        f"{level.capitalize()}: move {migrated:.0%} of traffic; it "
        f"{saving_txt}{quality_txt}{payback_txt}.",
    )


@dataclass(frozen=True)
class FrontierPoint:
    floor: float
    monthly_cost_usd: float
    quality: float | None
    migrated_share: float
    chosen: bool


def frontier(
    sweep: Sequence[tuple[float, Decision]],
    traffic: Traffic,
    evidence: Sequence[Evidence],
    candidates: Mapping[str, Candidate],
    chosen_floor: float,
) -> list[FrontierPoint]:
    """Cost and quality of the plan at each swept floor; the configured floor is marked chosen."""
    points = []
    for floor, decision in sweep:
        proj = project(decision, traffic, evidence, candidates)
        points.append(
            FrontierPoint(
                floor=floor,
                monthly_cost_usd=proj.cost_after_usd,
                quality=proj.quality,
                migrated_share=proj.migrated_share,
                chosen=abs(floor - chosen_floor) < 1e-9,
            )
        )
    return points


# ---------------------------------------------------------------- risks drawn from the data


@dataclass(frozen=True)
class Risk:
    level: str  # "high" | "medium" | "low"
    title: str
    detail: str
    task_type: str | None = None


_QUANT = re.compile(r"(?i)(int4|int8|q4|q8|fp16|fp32|4bit|8bit)")


def _quant_pairs(names: Iterable[str]) -> list[tuple[str, str]]:
    """(int4 name, int8 name) pairs of the same model that differ only in quantization."""
    stems: dict[str, dict[str, str]] = {}
    for name in names:
        match = _QUANT.search(name)
        if not match:
            continue
        bits = "4" if "4" in match.group(1) else ("8" if "8" in match.group(1) else "")
        if not bits:
            continue
        stem = _QUANT.sub("#", name, count=1).lower()
        stems.setdefault(stem, {})[bits] = name
    return [(v["4"], v["8"]) for v in stems.values() if "4" in v and "8" in v]


def assess_risks(
    decision: Decision,
    evidence: Sequence[Evidence],
    traffic: Traffic,
    candidates: Mapping[str, Candidate],
    projection: Projection,
    *,
    previous_quality: Mapping[str, float] | None = None,
    judge_used: bool = False,
    few_samples: int = 30,
    wide_interval: float = 0.04,
) -> list[Risk]:
    """What could make this plan wrong, each tied to a figure: few samples, wide intervals, little
    memory headroom, INT4 vs INT8 loss, drift of the task mix or of quality, rate limits."""
    risks: list[Risk] = []
    ev = _evidence_map(evidence)
    for route in decision.routes:
        if route.kind == "production":
            continue
        hit = ev.get((route.task_type, route.route))
        if hit is None:
            continue
        if hit.n < few_samples:
            risks.append(
                Risk(
                    "medium",
                    "Few samples",
                    f"{route.route} on {route.task_type} rests on {hit.n} replays (< "
                    f"{few_samples}).",
                    route.task_type,
                )
            )
        width = hit.interval_width
        if width is not None and width > wide_interval:
            risks.append(
                Risk(
                    "medium",
                    "Wide interval",
                    f"{route.route} on {route.task_type}: quality 95% interval "
                    f"{hit.quality_low:.2f}-{hit.quality_high:.2f} (width {width:.2f}).",
                    route.task_type,
                )
            )
        if hit.fit is not None:
            tight = max(512.0, 0.25 * hit.fit.needed_mb)
            if hit.fit.headroom_mb < tight:
                level = "high" if hit.fit.headroom_mb < 256 else "medium"
                risks.append(
                    Risk(
                        level,
                        "Little memory headroom",
                        f"{route.route} needs {hit.fit.needed_mb:.0f} MB and leaves "
                        f"{hit.fit.headroom_mb:.0f} MB free on the device; the memory guard will "
                        "send traffic to the next hop when memory is short.",
                        route.task_type,
                    )
                )
        if hit.errors:
            worst = max(hit.errors.items(), key=lambda kv: kv[1])
            if hit.error_rate >= 0.02:
                risks.append(
                    Risk(
                        "medium",
                        "Failures",
                        f"{route.route} on {route.task_type} failed {hit.error_rate:.0%} of "
                        f"replays (mostly {worst[0]}); failures fall back to "
                        f"{route.fallbacks[0] if route.fallbacks else PRODUCTION}.",
                        route.task_type,
                    )
                )
    chosen = {(r.task_type, r.route) for r in decision.routes}
    for low_bits, high_bits in _quant_pairs(candidates):
        losses = []
        for t in sorted({e.task_type for e in evidence}):
            a, b = ev.get((t, low_bits)), ev.get((t, high_bits))
            if a is None or b is None or a.quality_mean is None or b.quality_mean is None:
                continue
            loss = b.quality_mean - a.quality_mean
            losses.append(loss)
            if loss > 0.02 and (t, low_bits) in chosen:
                risks.append(
                    Risk(
                        "medium",
                        "Quantization loss",
                        f"On {t}, the chosen {low_bits} scores {a.quality_mean:.2f} against "
                        f"{b.quality_mean:.2f} for {high_bits} (INT4 loses {loss:.2f}).",
                        t,
                    )
                )
        if losses and sum(losses) / len(losses) > 0.02:
            mean_loss = sum(losses) / len(losses)
            risks.append(
                Risk(
                    "low",
                    "Quantization loss",
                    f"Across {len(losses)} task types, {low_bits} scores {mean_loss:.2f} below "
                    f"{high_bits} on average.",
                )
            )
    first = sum(tt.first_half for tt in traffic.types)
    second = sum(tt.second_half for tt in traffic.types)
    if first and second:
        for tt in traffic.types:
            shift = tt.second_half / second - tt.first_half / first
            if abs(shift) > 0.05:
                risks.append(
                    Risk(
                        "medium",
                        "Task mix drift",
                        f"{tt.task_type} went from {tt.first_half / first:.0%} to "
                        f"{tt.second_half / second:.0%} of traffic between the halves of the "
                        "logged period.",
                        tt.task_type,
                    )
                )
    for route in decision.routes:
        before = (previous_quality or {}).get(route.task_type)
        if (
            before is not None
            and route.quality_mean is not None
            and before - route.quality_mean > 0.03
        ):
            risks.append(
                Risk(
                    "high",
                    "Quality drift",
                    f"{route.task_type} on {route.route}: quality {route.quality_mean:.2f}, down "
                    f"from {before:.2f} in the previous run.",
                    route.task_type,
                )
            )
    if traffic.period_days < 7:
        risks.append(
            Risk(
                "low",
                "Short logged period",
                f"The month is extrapolated from {traffic.period_days:.1f} days of logs "
                f"(x{projection.monthly_factor:.0f}).",
            )
        )
    uncertain = (
        sum(t.uncertain for t in traffic.types) / traffic.requests if traffic.requests else 0.0
    )
    if uncertain > 0.2:
        risks.append(
            Risk(
                "medium",
                "Uncertain classifier",
                f"{uncertain:.0%} of requests are below the classifier's confidence threshold and "
                f"go to {decision.uncertain_route}.",
            )
        )
    if not judge_used and any(
        e.scorers and any("no judge" in s for s in e.scorers) for e in evidence
    ):
        risks.append(
            Risk(
                "low",
                "No LLM judge",
                "Open-ended types (text generation, brainstorming, chat) were scored by text "
                "similarity, which under-rates good answers worded differently.",
            )
        )
    for name, share in projection.route_share.items():
        cand = candidates.get(name)
        if cand is None or cand.kind != "relay" or cand.rpm is None:
            continue
        per_minute = projection.monthly_requests * share / (DAYS_PER_MONTH * 24 * 60)
        if per_minute * 3 > cand.rpm:  # peaks ~3x the mean
            risks.append(
                Risk(
                    "high",
                    "Relay rate limit",
                    f"{name} would get ~{per_minute:.0f} requests/min on average (peaks "
                    f"~{per_minute * 3:.0f}) against rpm {cand.rpm}.",
                )
            )
    order = {"high": 0, "medium": 1, "low": 2}
    return sorted(risks, key=lambda r: (order[r.level], r.title, r.task_type or ""))
