"""Where each task type's traffic should go: the decision rule and the floor sweep.

The rule, per task type: the cheapest route whose quality verdict qualifies (the sequential
Clopper–Pearson rule of :mod:`planner.evaluate.verdict`: the pass rate's lower bound reaches
``floor x production's ceiling``), whose p95 latency *on the target device* meets the SLO and
which, if local, fits the device tier; otherwise the type stays on production, saying why ("not
enough evidence" when a candidate was undecided at the cap). Ties go to the cheaper route, then
the smaller model. Requests the classifier is unsure of go to production unless a route
qualifies on the sample's uncertain stratum. Conversations stay on their first turn's route
(:mod:`planner.evaluate.conversations` counts what that moves); other routing rules are compared
in :mod:`planner.evaluate.views`.
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
    UNCERTAIN,
    Evidence,
)
from planner.evaluate.verdict import QualityVerdict

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
    min_samples: int = 10

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
    verdict: QualityVerdict | None = None  # the chosen route's (or the closest candidate's)
    latency_basis: str = "measured"
    host_latency_p95_ms: float | None = None

    @property
    def samples_needed(self) -> int | None:
        """Measured replays the decision rested on (the look it stopped at)."""
        return None if self.verdict is None else self.verdict.n

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
            "samples_needed": self.samples_needed,
            "verdict": None if self.verdict is None else self.verdict.summary(),
            "latency_basis": self.latency_basis,
            "host_latency_p95_ms": self.host_latency_p95_ms,
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
    uncertain: Route | None = None  # how the uncertain stratum's route was decided

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


def quality_verdict(ev: Evidence, objectives: Objectives) -> QualityVerdict | None:
    """The rule's verdict on this evidence at the objectives' floor."""
    if ev.passes is not None:
        if (
            ev.verdict is not None
            and abs(ev.verdict.required - _required(ev, objectives)) < 1e-12
            and ev.passes.min_samples == objectives.min_samples
        ):
            return ev.verdict
        return ev.verdict_at(objectives.quality_floor, objectives.min_samples)
    return None


def _required(ev: Evidence, objectives: Objectives) -> float:
    return objectives.quality_floor * (ev.ceiling.value if ev.ceiling is not None else 1.0)


def check(ev: Evidence, objectives: Objectives) -> tuple[str, ...]:
    """Why this candidate may not serve its task type (empty: it qualifies)."""
    reasons: list[str] = []
    verdict = quality_verdict(ev, objectives)
    if verdict is not None:
        if verdict.state == "below":
            reasons.append(f"below the floor: {verdict.reason}")
        elif verdict.state == "undecided":
            reasons.append(f"not enough evidence: {verdict.reason}")
        elif verdict.state == "no data":
            reasons.append("no quality scores")
    elif ev.quality_low is None:  # evidence given as figures (no outcomes): its bound is read
        reasons.append("no quality scores")
    elif ev.quality_low < objectives.quality_floor:
        reasons.append(
            f"quality lower bound {ev.quality_low:.3f} below the floor "
            f"{objectives.quality_floor:.3f}"
        )
    where = "" if ev.latency_basis == "measured" else " on the device"
    if ev.latency_p95_ms is None:
        reasons.append("no latency measured")
    elif ev.latency_p95_ms > objectives.p95_latency_ms:
        reasons.append(
            f"p95 latency {ev.latency_p95_ms:.0f} ms{where} over the SLO "
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
        elif ev.peak_memory_mb is not None:
            # The estimate fits; the replays' measured peak (the model's own memory, above the
            # process's baseline) must fit too: the estimate is a formula, the peak is not.
            usable = ev.fit.needed_mb + ev.fit.headroom_mb
            if ev.peak_memory_mb > usable:
                reasons.append(
                    f"measured peak memory {ev.peak_memory_mb:.0f} MB over the device's usable "
                    f"{usable:.0f} MB"
                )
    if ev.cost_per_1k_usd is None:
        reasons.append("cost unknown")
    return tuple(reasons)


def _production_route(
    task_type: str,
    production: Evidence | None,
    reason: str,
    rejected: tuple[Rejection, ...],
    verdict: QualityVerdict | None = None,
) -> Route:
    return Route(
        task_type=task_type,
        route=PRODUCTION,
        kind="production",
        fallbacks=(),
        reason=reason,
        quality_mean=1.0,
        quality_low=None,
        latency_p95_ms=None if production is None else production.latency_p95_ms,
        cost_per_1k_usd=None if production is None else production.cost_per_1k_usd,
        rejected=rejected,
        verdict=verdict,
    )


def _stay_reason(others: Sequence[Evidence], objectives: Objectives) -> tuple[str, Any]:
    """Why a type stays on production: "not enough evidence" when the only thing missing for
    some candidate was a decided quality verdict (the closest such candidate is named)."""
    if not others:
        return "no replays", None
    waiting = []
    for ev in others:
        verdict = quality_verdict(ev, objectives)
        if verdict is None or verdict.state != "undecided":
            continue
        rest = [r for r in check(ev, objectives) if not r.startswith("not enough evidence")]
        if not rest:
            waiting.append((verdict.lower or 0.0, ev.candidate, verdict))
    if waiting:
        _, name, verdict = max(waiting)
        return f"not enough evidence for {name} ({verdict.reason})", verdict
    return "no candidate meets the floor, the SLO and the device", None


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
        reason, verdict = _stay_reason(others, objectives)
        return _production_route(task_type, production, reason, tuple(rejected), verdict)
    best = qualifying[0]
    chain: list[str] = []
    seen_tiers = {TIER_RANK[best.kind]}
    for ev in qualifying[1:]:
        tier = TIER_RANK[ev.kind]
        if tier > TIER_RANK[best.kind] and tier not in seen_tiers:
            chain.append(ev.candidate)
            seen_tiers.add(tier)
    chain.append(PRODUCTION)
    verdict = quality_verdict(best, objectives)
    low = best.quality_low if verdict is None else verdict.lower
    where = "" if best.latency_basis == "measured" else " on the device"
    reason = (
        "cheapest route whose quality verdict qualifies ("
        + (verdict.reason if verdict is not None else f"lower bound {low:.3f}")
        + f") and p95 {best.latency_p95_ms:.0f} ms{where} <= {objectives.p95_latency_ms:.0f} ms"
    )
    ceiling = best.ceiling.value if best.ceiling is not None else 1.0
    return Route(
        task_type=task_type,
        route=best.candidate,
        kind=best.kind,
        fallbacks=tuple(chain),
        reason=reason,
        quality_mean=(
            best.quality_mean
            if verdict is None or verdict.pass_rate is None
            else verdict.pass_rate / ceiling
        ),
        quality_low=(
            best.quality_low
            if verdict is None or verdict.lower is None
            else verdict.lower / ceiling
        ),
        latency_p95_ms=best.latency_p95_ms,
        cost_per_1k_usd=best.cost_per_1k_usd,
        memory_guard_mb=best.fit.needed_mb if best.kind == "local" and best.fit else None,
        rejected=tuple(rejected),
        verdict=verdict,
        latency_basis=best.latency_basis,
        host_latency_p95_ms=best.host_latency_p95_ms,
    )


def decide(
    evidence: Iterable[Evidence], objectives: Objectives, task_types: Iterable[str] | None = None
) -> Decision:
    """A route for every task type seen in the evidence (and in ``task_types``, if given).

    Uncertain requests go where the uncertain stratum's evidence (task type ``UNCERTAIN``) lets
    them: the cheapest route that qualifies there, else production."""
    by_type: dict[str, list[Evidence]] = defaultdict(list)
    for ev in evidence:
        by_type[ev.task_type].append(ev)
    unsure = by_type.pop(UNCERTAIN, [])
    types = sorted((set(by_type) | set(task_types or ())) - {UNCERTAIN})
    if not types:
        raise PlanError(
            "no evidence and no task types: nothing to plan (run replay and scoring first)"
        )
    routes = tuple(choose_route(t, by_type.get(t, []), objectives) for t in types)
    uncertain = choose_route(UNCERTAIN, unsure, objectives)
    return Decision(
        objectives=objectives,
        routes=routes,
        uncertain_route=uncertain.route,
        uncertain_fallbacks=uncertain.fallbacks,
        uncertain=uncertain,
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
