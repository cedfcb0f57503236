"""Where each task type's traffic should go: the decision rule and the floor sweep.

The rule, per task type: the cheapest route whose quality *lower bound* (95% bootstrap interval,
relative to production) meets the floor, whose p95 latency meets the SLO and which, if local,
fits the device tier; otherwise the next tier up, down to "stay on production". Ties go to the
cheaper route, then the smaller model. Requests the classifier is unsure of go to the safest
tier the plan uses. Conversations stay on their first turn's route
(:mod:`planner.evaluate.conversations` counts what that moves); other routing rules are compared
on the same evidence in :mod:`planner.evaluate.views`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from planner.errors import PlanError
from planner.evaluate.evidence import (
    PRODUCTION,
    TIER_RANK,
    Evidence,
)

# The static rule of thumb this plan is compared against.
SIMPLE_TYPES: frozenset[str] = frozenset({"classification", "extraction"})
MODERATE_TYPES: frozenset[str] = frozenset({"summarization", "rewrite", "closed_qa"})
SHORT_OUTPUT_TOKENS = 20
LONG_OUTPUT_TOKENS = 100


@dataclass(frozen=True)
class Objectives:
    """What a route must meet. ``quality_floor`` is relative to production (1.0 = as good)."""

    quality_floor: float = 0.95
    p95_latency_ms: float = 2000.0
    min_samples: int = 5

    def __post_init__(self) -> None:
        if not 0 < self.quality_floor <= 1.5:
            raise PlanError(f"quality floor must be within (0, 1.5], got {self.quality_floor}")
        if self.p95_latency_ms <= 0:
            raise PlanError(f"p95 latency SLO must be positive, got {self.p95_latency_ms}")


@dataclass(frozen=True)
class Rejection:
    candidate: str
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Route:
    """The decision for one task type."""

    task_type: str
    route: str
    kind: str
    fallbacks: tuple[str, ...]
    reason: str
    quality_mean: float | None
    quality_low: float | None
    latency_p95_ms: float | None
    cost_per_1k_usd: float | None
    memory_guard_mb: float | None = None  # local: free memory needed, else next hop
    rejected: tuple[Rejection, ...] = ()

    def summary(self) -> dict[str, Any]:
        return {
            "task_type": self.task_type,
            "route": self.route,
            "kind": self.kind,
            "fallbacks": list(self.fallbacks),
            "reason": self.reason,
            "quality_mean": self.quality_mean,
            "quality_low": self.quality_low,
            "latency_p95_ms": self.latency_p95_ms,
            "cost_per_1k_usd": self.cost_per_1k_usd,
            "memory_guard_mb": self.memory_guard_mb,
            "rejected": [
                {"candidate": r.candidate, "reasons": list(r.reasons)} for r in self.rejected
            ],
        }


@dataclass(frozen=True)
class Decision:
    """The routing decision for every task type, plus where uncertain requests go."""

    objectives: Objectives
    routes: tuple[Route, ...]
    uncertain_route: str
    uncertain_fallbacks: tuple[str, ...]

    def route_for(self, task_type: str) -> Route | None:
        return next((r for r in self.routes if r.task_type == task_type), None)

    def route_map(self) -> dict[str, str]:
        return {r.task_type: r.route for r in self.routes}


def memory_of(ev: Evidence) -> float:
    if ev.fit is not None:
        return ev.fit.needed_mb
    return ev.peak_memory_mb if ev.peak_memory_mb is not None else 0.0


def _cost_key(ev: Evidence) -> tuple[float, int, float, str]:
    """Cheapest first; then the lower tier; then the smaller model; then by name (stable)."""
    cost = ev.cost_per_1k_usd if ev.cost_per_1k_usd is not None else float("inf")
    return (cost, TIER_RANK.get(ev.kind, 9), memory_of(ev), ev.candidate)


def check(ev: Evidence, objectives: Objectives) -> tuple[str, ...]:
    """Why this candidate may not serve its task type (empty: it qualifies)."""
    reasons: list[str] = []
    measured = ev.n - ev.n_unscored  # scored answers + failed replays (which count as 0)
    if measured < objectives.min_samples:
        reasons.append(f"too few scored samples ({measured} < {objectives.min_samples})")
    if ev.quality_low is None:
        reasons.append("no quality scores")
    elif ev.quality_low < objectives.quality_floor:
        reasons.append(
            f"quality lower bound {ev.quality_low:.3f} below the floor "
            f"{objectives.quality_floor:.3f}"
        )
    if ev.latency_p95_ms is None:
        reasons.append("no latency measured")
    elif ev.latency_p95_ms > objectives.p95_latency_ms:
        reasons.append(
            f"p95 latency {ev.latency_p95_ms:.0f} ms over the SLO "
            f"{objectives.p95_latency_ms:.0f} ms"
        )
    if ev.kind == "local":
        if ev.fit is None:
            reasons.append("device fit unknown")
        elif not ev.fit.fits:
            reasons.append(
                f"does not fit the device (needs {ev.fit.needed_mb:.0f} MB, "
                f"headroom {ev.fit.headroom_mb:.0f} MB)"
            )
    if ev.cost_per_1k_usd is None:
        reasons.append("cost unknown")
    return tuple(reasons)


def _production_route(
    task_type: str, production: Evidence | None, reason: str, rejected: tuple[Rejection, ...]
) -> Route:
    return Route(
        task_type=task_type,
        route=PRODUCTION,
        kind="production",
        fallbacks=(),
        reason=reason,
        quality_mean=1.0,
        quality_low=1.0,
        latency_p95_ms=None if production is None else production.latency_p95_ms,
        cost_per_1k_usd=None if production is None else production.cost_per_1k_usd,
        rejected=rejected,
    )


def choose_route(task_type: str, evidence: Sequence[Evidence], objectives: Objectives) -> Route:
    """The cheapest qualifying route for one task type; the fallback chain climbs the tiers."""
    production = next((e for e in evidence if e.kind == "production"), None)
    others = sorted((e for e in evidence if e.kind != "production"), key=_cost_key)
    rejected: list[Rejection] = []
    qualifying: list[Evidence] = []
    for ev in others:
        reasons = check(ev, objectives)
        if reasons:
            rejected.append(Rejection(ev.candidate, reasons))
        else:
            qualifying.append(ev)
    if not qualifying:
        reason = "no candidate meets the floor, the SLO and the device" if others else "no replays"
        return _production_route(task_type, production, reason, tuple(rejected))
    best = qualifying[0]
    chain: list[str] = []
    seen_tiers = {TIER_RANK[best.kind]}
    for ev in qualifying[1:]:
        tier = TIER_RANK[ev.kind]
        if tier > TIER_RANK[best.kind] and tier not in seen_tiers:
            chain.append(ev.candidate)
            seen_tiers.add(tier)
    chain.append(PRODUCTION)
    assert best.quality_low is not None
    reason = (
        f"cheapest route with quality lower bound {best.quality_low:.3f} >= floor "
        f"{objectives.quality_floor:.3f} and p95 {best.latency_p95_ms:.0f} ms "
        f"<= {objectives.p95_latency_ms:.0f} ms"
    )
    return Route(
        task_type=task_type,
        route=best.candidate,
        kind=best.kind,
        fallbacks=tuple(chain),
        reason=reason,
        quality_mean=best.quality_mean,
        quality_low=best.quality_low,
        latency_p95_ms=best.latency_p95_ms,
        cost_per_1k_usd=best.cost_per_1k_usd,
        memory_guard_mb=best.fit.needed_mb if best.kind == "local" and best.fit else None,
        rejected=tuple(rejected),
    )


def decide(
    evidence: Iterable[Evidence], objectives: Objectives, task_types: Iterable[str] | None = None
) -> Decision:
    """A route for every task type seen in the evidence (and in ``task_types``, if given)."""
    by_type: dict[str, list[Evidence]] = defaultdict(list)
    for ev in evidence:
        by_type[ev.task_type].append(ev)
    types = sorted(set(by_type) | set(task_types or ()))
    if not types:
        raise PlanError(
            "no evidence and no task types: nothing to plan (run replay and scoring first)"
        )
    routes = tuple(choose_route(t, by_type.get(t, []), objectives) for t in types)
    safest = max(routes, key=lambda r: (TIER_RANK[r.kind], r.quality_low or 0.0))
    return Decision(
        objectives=objectives,
        routes=routes,
        uncertain_route=safest.route,
        uncertain_fallbacks=safest.fallbacks,
    )


def sweep_floors(
    evidence: Sequence[Evidence],
    objectives: Objectives,
    floors: Iterable[float],
    task_types: Iterable[str] | None = None,
) -> list[tuple[float, Decision]]:
    """The decision at each floor (the configured one included): the frontier's points."""
    wanted = sorted({round(f, 4) for f in floors} | {round(objectives.quality_floor, 4)})
    types = list(task_types or ())
    return [
        (f, decide(evidence, replace(objectives, quality_floor=f), types)) for f in wanted if f > 0
    ]


# ---------------------------------------------------------------- conversation stickiness
