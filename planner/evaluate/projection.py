"""What the plan does to a month of traffic: cost, quality, latency, energy, payback, risks.

The logged period's traffic per task type is scaled to 30 days. A request costs what production
logged for it today; after the move it costs what the route's replays of that type cost at the
route's current prices (:meth:`Candidate.cost_usd`, the function the ranking uses too; local: no
API cost), plus the share that fails over to the next hop at that hop's price. The projection is
of the configuration that is written: requests the classifier is unsure of go to the uncertain
route (measured on the sample's uncertain stratum), and later turns of a conversation stay on
its first turn's route (their cost and their quality are those of that route on their own type).
Quality is the relative pass rate of the evidence of each (type, route) actually taken; a pair
that was never measured is reported as unmeasured traffic, never given another pair's figure.
Energy is the device's power draw times the generation time at the model's tokens/s (prompt
processing not counted).

This module is long because the month is one arithmetic over the parts of each type's traffic
(own route, uncertain, sticky, failover) and the verdicts and frontier drawn from it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from planner.errors import PlanError
from planner.evaluate.conversations import Conversations, Stickiness, stickiness_impact
from planner.evaluate.decision import Decision, Route
from planner.evaluate.evidence import PRODUCTION, UNCERTAIN, Candidate, Evidence

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
    sticky_share: float = 0.0  # of this type's requests, routed by their conversation's first turn
    unmeasured_share: float = 0.0  # of this type's requests, on a (type, route) never measured


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
    unmeasured_share: float = 0.0  # traffic whose (type, route) quality was never measured
    sticky: bool = False  # the figures include conversation stickiness

    def summary(self) -> dict[str, Any]:
        data = {k: v for k, v in vars(self).items() if k != "types"}
        data["types"] = [vars(t).copy() for t in self.types]
        return data


def evidence_map(evidence: Iterable[Evidence]) -> dict[tuple[str, str], Evidence]:
    return {(e.task_type, e.candidate): e for e in evidence}


def request_cost(route: str, traffic: TypeTraffic, candidates: Mapping[str, Candidate]) -> float:
    """USD per request of ``traffic``'s type on ``route`` from the logged token counts
    (production: what the log says). Used where the (type, route) has no replays."""
    if traffic.requests == 0:
        return 0.0
    if route == PRODUCTION:
        return traffic.cost_usd / traffic.requests
    cand = candidates.get(route)
    if cand is None:
        raise PlanError(f"route {route!r} is not a configured candidate")
    if cand.kind == "production":
        return traffic.cost_usd / traffic.requests
    return cand.cost_usd(
        traffic.prompt_tokens / traffic.requests, traffic.completion_tokens / traffic.requests
    )


def route_cost(
    route: str,
    traffic: TypeTraffic,
    candidates: Mapping[str, Candidate],
    ev: Mapping[tuple[str, str], Evidence],
    evidence_type: str | None = None,
) -> float:
    """USD per request on ``route``: its replays' price (the ranking's figure) where measured."""
    if route == PRODUCTION:
        return request_cost(route, traffic, candidates)
    hit = ev.get((evidence_type or traffic.task_type, route))
    if hit is not None and hit.cost_per_1k_usd is not None:
        return hit.cost_per_1k_usd / 1000.0
    return request_cost(route, traffic, candidates)


def _expected_cost(
    route_name: str,
    fallbacks: Sequence[str],
    t: TypeTraffic,
    candidates: Mapping[str, Candidate],
    ev: dict[tuple[str, str], Evidence],
    evidence_type: str | None = None,
) -> float:
    """Per-request cost including the failed share that goes on to the next hop."""
    cost = route_cost(route_name, t, candidates, ev, evidence_type)
    evid = ev.get((evidence_type or t.task_type, route_name))
    if route_name != PRODUCTION and evid is not None and evid.error_rate > 0:
        next_hop = fallbacks[0] if fallbacks else PRODUCTION
        cost += evid.error_rate * route_cost(next_hop, t, candidates, ev, evidence_type)
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
    route_name: str, task_type: str, ev: Mapping[tuple[str, str], Evidence]
) -> float | None:
    """The relative pass rate of (type, route); None when that pair was never measured."""
    if route_name == PRODUCTION:
        return 1.0
    hit = ev.get((task_type, route_name))
    return hit.quality_mean if hit is not None else None


def _samples(
    route_name: str, task_type: str, ev: Mapping[tuple[str, str], Evidence]
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
    needed = f" on {route.samples_needed} samples" if route.samples_needed else ""
    return (
        f"Suitable: move to {route.route} {where}; as good as production at least {low} as "
        f"often as production is as good as itself (exact lower bound{needed})."
    )


@dataclass
class _Part:
    """Requests of one type that take one route (with the evidence type that measures it)."""

    requests: float
    route: str
    fallbacks: tuple[str, ...]
    evidence_type: str
    sticky: bool = False


def _parts(
    t: TypeTraffic, route: Route, decision: Decision, moved: Mapping[str, float]
) -> list[_Part]:
    """The type's traffic as the written config routes it: uncertain requests to the uncertain
    route, later turns moved by stickiness to their conversation's route, the rest to its own."""
    sure = float(t.requests - t.uncertain)
    moved_total = min(sure, sum(moved.values()))
    scale = moved_total / sum(moved.values()) if moved else 0.0
    parts = [_Part(sure - moved_total, route.route, route.fallbacks, t.task_type)]
    for sticky_route, count in sorted(moved.items()):
        fallbacks = next((r.fallbacks for r in decision.routes if r.route == sticky_route), ())
        parts.append(_Part(count * scale, sticky_route, fallbacks, t.task_type, sticky=True))
    unsure = UNCERTAIN if decision.uncertain_route != PRODUCTION else t.task_type
    parts.append(
        _Part(float(t.uncertain), decision.uncertain_route, decision.uncertain_fallbacks, unsure)
    )
    return [p for p in parts if p.requests > 0]


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
    """Monthly cost before/after, quality, latency, tier shares, energy, payback and verdicts of
    the configuration as written (uncertain route and, when given, conversation stickiness)."""
    if traffic.requests == 0:
        raise PlanError("no logged traffic to project (the warehouse has no requests)")
    factor = DAYS_PER_MONTH / traffic.period_days
    ev = evidence_map(evidence)
    kinds = {name: c.kind for name, c in candidates.items()}
    kinds[PRODUCTION] = "production"
    moves: dict[str, dict[str, float]] = {}
    for task_type, _own, sticky, count in stickiness.moves if stickiness else ():
        moves.setdefault(task_type, {})
        moves[task_type][sticky] = moves[task_type].get(sticky, 0.0) + count
    per_type: list[TypeProjection] = []
    route_share: dict[str, float] = {}
    tier_share: dict[str, float] = {"local": 0.0, "relay": 0.0, "production": 0.0}
    q_num = q_den = unmeasured = 0.0
    lat_after: tuple[list[float], list[float]] = ([], [])
    lat_before: tuple[list[float], list[float]] = ([], [])
    total = traffic.requests
    for t in traffic.types:
        route = decision.route_for(t.task_type) or Route(
            t.task_type,
            PRODUCTION,
            "production",
            (),
            "no evidence for this type",
            1.0,
            None,
            None,
            None,
        )
        parts = _parts(t, route, decision, moves.get(t.task_type, {}))
        before = t.cost_usd * factor
        after = factor * sum(
            p.requests * _expected_cost(p.route, p.fallbacks, t, candidates, ev, p.evidence_type)
            for p in parts
        )
        known: list[tuple[float, float]] = []
        type_unmeasured = 0.0
        for p in parts:
            q = _quality_of(p.route, p.evidence_type, ev)
            if q is None:
                type_unmeasured += p.requests
            else:
                known.append((p.requests, q))
            samples = _samples(p.route, p.evidence_type, ev)
            if samples:
                lat_after[0].extend(samples)
                lat_after[1].extend([p.requests / len(samples)] * len(samples))
            route_share[p.route] = route_share.get(p.route, 0.0) + p.requests / total
            tier_share[kinds.get(p.route, "production")] += p.requests / total
        quality = (
            sum(n * q for n, q in known) / sum(n for n, _ in known)
            if known and sum(n for n, _ in known) > 0
            else None
        )
        if quality is not None:
            q_num += sum(n * q for n, q in known)
            q_den += sum(n for n, _ in known)
        unmeasured += type_unmeasured
        prod_samples = _samples(PRODUCTION, t.task_type, ev)
        if prod_samples:
            lat_before[0].extend(prod_samples)
            lat_before[1].extend([t.requests / len(prod_samples)] * len(prod_samples))
        wh, battery = _energy(route, t, ev, device)
        hit = ev.get((t.task_type, route.route))
        prod = ev.get((t.task_type, PRODUCTION))
        sticky_n = sum(p.requests for p in parts if p.sticky)
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
                sticky_share=sticky_n / t.requests if t.requests else 0.0,
                unmeasured_share=type_unmeasured / t.requests if t.requests else 0.0,
            )
        )
    before_total = sum(p.cost_before_usd for p in per_type)
    after_total = sum(p.cost_after_usd for p in per_type)
    savings = before_total - after_total
    migrated = 1.0 - tier_share["production"]
    sticky_cost = _stickiness_cost(stickiness, traffic, candidates, factor, ev)
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
        unmeasured_share=unmeasured / total,
        sticky=stickiness is not None,
    )


def _stickiness_cost(
    stickiness: Stickiness | None,
    traffic: Traffic,
    candidates: Mapping[str, Candidate],
    factor: float,
    ev: Mapping[tuple[str, str], Evidence],
) -> float:
    """Monthly USD that sticky routing adds (negative: saves) over routing each turn by its type
    (already inside the projection's cost; shown on its own for the reader)."""
    if stickiness is None:
        return 0.0
    by_type = {t.task_type: t for t in traffic.types}
    delta = 0.0
    for task_type, own, sticky, count in stickiness.moves:
        t = by_type.get(task_type)
        if t is None or t.requests == 0:
            continue
        delta += count * (
            route_cost(sticky, t, candidates, ev) - route_cost(own, t, candidates, ev)
        )
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
    conversations: Conversations | None = None,
) -> list[FrontierPoint]:
    """Cost and quality of the plan at each swept floor (as written: with stickiness when the
    conversations are given); the configured floor is marked chosen."""
    points = []
    for floor, decision in sweep:
        sticky = (
            stickiness_impact(conversations, decision)
            if conversations is not None and conversations.requests
            else None
        )
        proj = project(decision, traffic, evidence, candidates, stickiness=sticky)
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
