"""Where each task type's traffic should go, and the views that check that choice.

The rule, per task type: the cheapest route whose quality *lower bound* (95% bootstrap interval,
relative to production) meets the floor, whose p95 latency meets the SLO and which, if local,
fits the device tier; otherwise the next tier up, down to "stay on production". Ties go to the
cheaper route, then the smaller model. Requests the classifier is unsure of go to the safest
tier the plan uses. Conversations stay on their first turn's route; :func:`stickiness_impact`
counts what that moves. :func:`evaluate_view` replays other routing rules (by expected output
length, by a static rule of thumb) on the same per-request evidence for comparison.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from planner.errors import PlanError
from planner.evidence import PRODUCTION, TIER_RANK, Candidate, DeviceFit, Evidence, Observation

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


def _memory_of(ev: Evidence) -> float:
    if ev.fit is not None:
        return ev.fit.needed_mb
    return ev.peak_memory_mb if ev.peak_memory_mb is not None else 0.0


def _cost_key(ev: Evidence) -> tuple[float, int, float, str]:
    """Cheapest first; then the lower tier; then the smaller model; then by name (stable)."""
    cost = ev.cost_per_1k_usd if ev.cost_per_1k_usd is not None else float("inf")
    return (cost, TIER_RANK.get(ev.kind, 9), _memory_of(ev), ev.candidate)


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


@dataclass(frozen=True)
class Turn:
    conversation_id: str
    turn_index: int
    task_type: str


@dataclass(frozen=True)
class Conversations:
    """Logged requests grouped into conversations, in counts: all that stickiness needs, and
    small whatever the traffic (the warehouse counts it in SQL: ``conversation_shape``)."""

    requests: int
    depth: tuple[tuple[int, int], ...]  # (turns in a conversation, conversations that long)
    later: tuple[tuple[str, str, int], ...]  # (first turn's type, later turn's type, turns)

    @property
    def conversations(self) -> int:
        return sum(n for _, n in self.depth)


def summarize_turns(turns: Iterable[Turn]) -> Conversations:
    """The counts of ``turns``; a conversation's first turn is its lowest ``turn_index`` (the
    earlier one on a tie)."""
    by_conv: dict[str, list[Turn]] = defaultdict(list)
    for turn in turns:
        by_conv[turn.conversation_id].append(turn)
    depth: Counter[int] = Counter(len(conv) for conv in by_conv.values())
    later: Counter[tuple[str, str]] = Counter()
    for conv in by_conv.values():
        conv.sort(key=lambda t: t.turn_index)
        for turn in conv[1:]:
            later[(conv[0].task_type, turn.task_type)] += 1
    return Conversations(
        requests=sum(depth[n] * n for n in depth),
        depth=tuple(sorted(depth.items())),
        later=tuple((a, b, n) for (a, b), n in sorted(later.items())),
    )


@dataclass(frozen=True)
class Stickiness:
    """What keeping a conversation on its first turn's route moves."""

    requests: int
    conversations: int
    multi_turn_conversations: int
    multi_turn_share: float  # share of requests that belong to multi-turn conversations
    later_turns: int
    rerouted_turns: int  # later turns whose own type would route elsewhere
    rerouted_share: float  # of all requests
    to_lower_tier: int  # rerouted turns sent to a cheaper tier than their type's route
    to_higher_tier: int
    moves: tuple[tuple[str, str, str, int], ...] = field(
        default=()
    )  # (task type, own route, sticky route, count)

    def summary(self) -> dict[str, Any]:
        data = {k: v for k, v in vars(self).items() if k != "moves"}
        data["moves"] = [
            {"task_type": t, "own_route": a, "sticky_route": b, "count": n}
            for t, a, b, n in self.moves
        ]
        return data


def stickiness_impact(conversations: Conversations, decision: Decision) -> Stickiness:
    """Count the later turns that stickiness routes differently from their own task type."""
    routes = decision.route_map()
    kinds = {r.route: r.kind for r in decision.routes}
    requests = conversations.requests
    multi = sum(n for size, n in conversations.depth if size >= 2)
    in_multi = sum(size * n for size, n in conversations.depth if size >= 2)
    moves: Counter[tuple[str, str, str]] = Counter()
    later = lower = higher = 0
    for first_type, task_type, n in conversations.later:
        later += n
        sticky = routes.get(first_type, PRODUCTION)
        own = routes.get(task_type, PRODUCTION)
        if own == sticky:
            continue
        moves[(task_type, own, sticky)] += n
        own_rank = TIER_RANK.get(kinds.get(own, "production"), 2)
        sticky_rank = TIER_RANK.get(kinds.get(sticky, "production"), 2)
        if sticky_rank < own_rank:
            lower += n
        elif sticky_rank > own_rank:
            higher += n
    rerouted = sum(moves.values())
    return Stickiness(
        requests=requests,
        conversations=conversations.conversations,
        multi_turn_conversations=multi,
        multi_turn_share=in_multi / requests if requests else 0.0,
        later_turns=later,
        rerouted_turns=rerouted,
        rerouted_share=rerouted / requests if requests else 0.0,
        to_lower_tier=lower,
        to_higher_tier=higher,
        moves=tuple((t, a, b, n) for (t, a, b), n in sorted(moves.items())),
    )


# ---------------------------------------------------------------- other rules, same evidence


@dataclass(frozen=True)
class View:
    """One routing rule evaluated on the sampled requests."""

    name: str
    description: str
    requests: int
    missing: int  # requests whose assigned route has no replay of them
    quality_mean: float | None
    share_at_floor: float | None
    cost_per_1k_usd: float | None
    latency_p95_ms: float | None
    route_share: dict[str, float]
    assignment: dict[str, str] = field(
        default_factory=dict, repr=False
    )  # task type/bucket -> route

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items()}


@dataclass(frozen=True)
class Tiers:
    """The rule-of-thumb tiers: the smallest and the larger local model, and the cloud route."""

    small: str
    large: str
    cloud: str


def pick_tiers(
    candidates: Mapping[str, Candidate],
    evidence: Sequence[Evidence],
    fits: Mapping[str, DeviceFit] | None = None,
) -> Tiers:
    """The rule of thumb's tiers from the candidates.

    Local models that are known not to fit the device are left out; the rest are ordered by memory
    needed (else peak RSS). The cloud tier is the relay with the best mean quality, else production.
    """
    fit_map = dict(fits or {})
    for ev in evidence:
        if ev.fit is not None:
            fit_map.setdefault(ev.candidate, ev.fit)
    size: dict[str, float] = {}
    for name, cand in candidates.items():
        if cand.kind != "local":
            continue
        fit = fit_map.get(name)
        if fit is not None and not fit.fits:
            continue
        measured = [_memory_of(e) for e in evidence if e.candidate == name]
        size[name] = fit.needed_mb if fit is not None else max(measured, default=0.0)
    relay_quality: dict[str, list[float]] = defaultdict(list)
    for ev in evidence:
        if ev.kind == "relay" and ev.quality_mean is not None:
            relay_quality[ev.candidate].append(ev.quality_mean)
    relays = sorted(n for n, c in candidates.items() if c.kind == "relay")
    if relay_quality:
        cloud = max(relay_quality, key=lambda c: (float(np.mean(relay_quality[c])), c))
    else:
        cloud = relays[0] if relays else PRODUCTION
    by_size = sorted(size, key=lambda n: (size[n], n))
    small = by_size[0] if by_size else cloud
    large = by_size[-1] if by_size else cloud
    return Tiers(small=small, large=large, cloud=cloud)


def _index(
    observations: Iterable[Observation],
) -> tuple[dict[tuple[str, str], Observation], dict[str, Observation]]:
    by_pair: dict[tuple[str, str], Observation] = {}
    reference: dict[str, Observation] = {}
    for obs in observations:
        by_pair[(obs.request_id, obs.candidate)] = obs
        if obs.candidate == PRODUCTION:
            reference[obs.request_id] = obs
    return by_pair, reference


def evaluate_view(
    name: str,
    description: str,
    observations: Sequence[Observation],
    assign: Callable[[Observation], str],
    candidates: Mapping[str, Candidate],
    objectives: Objectives,
    assignment: Mapping[str, str] | None = None,
) -> View:
    """Quality, cost and latency if each sampled request had gone where ``assign`` sends it.

    ``assign`` receives production's observation of the request (its task type and output length).
    A failed replay counts as quality 0, as in the evidence.
    """
    by_pair, reference = _index(observations)
    qualities: list[float] = []
    costs: list[float] = []
    latencies: list[float] = []
    shares: Counter[str] = Counter()
    missing = 0
    for request_id, ref in sorted(reference.items()):
        route = assign(ref)
        obs = by_pair.get((request_id, route))
        if obs is None or (obs.quality is None and obs.error_kind is None):
            missing += 1
            continue
        shares[route] += 1
        if obs.error_kind is not None:
            qualities.append(0.0)
            continue
        qualities.append(float(obs.quality if obs.quality is not None else 0.0))
        kind = candidates[route].kind if route in candidates else "production"
        costs.append(0.0 if kind == "local" else float(obs.cost_usd or 0.0))
        if obs.latency_ms is not None:
            latencies.append(obs.latency_ms)
    counted = sum(shares.values())
    return View(
        name=name,
        description=description,
        requests=len(reference),
        missing=missing,
        quality_mean=float(np.mean(qualities)) if qualities else None,
        share_at_floor=(sum(q >= objectives.quality_floor for q in qualities) / len(qualities))
        if qualities
        else None,
        cost_per_1k_usd=float(np.mean(costs)) * 1000 if costs else None,
        latency_p95_ms=float(np.percentile(latencies, 95)) if latencies else None,
        route_share={r: n / counted for r, n in sorted(shares.items())} if counted else {},
        assignment=dict(assignment or {}),
    )


def length_bucket(tokens: int | None) -> str:
    if tokens is None or tokens < SHORT_OUTPUT_TOKENS:
        return "short"
    return "medium" if tokens <= LONG_OUTPUT_TOKENS else "long"


def static_tier(task_type: str) -> str:
    if task_type in SIMPLE_TYPES:
        return "simple"
    return "moderate" if task_type in MODERATE_TYPES else "complex"


def compare_views(
    observations: Sequence[Observation],
    decision: Decision,
    candidates: Mapping[str, Candidate],
    tiers: Tiers,
) -> list[View]:
    """The evidence-based plan, routing by expected output length, and the static rule of thumb."""
    routes = decision.route_map()
    objectives = decision.objectives
    by_length = {"short": tiers.small, "medium": tiers.large, "long": tiers.cloud}
    by_tier = {"simple": tiers.small, "moderate": tiers.large, "complex": tiers.cloud}
    return [
        evaluate_view(
            "plan",
            "By task type, on the evidence (this plan)",
            observations,
            lambda ref: routes.get(ref.task_type, PRODUCTION),
            candidates,
            objectives,
            routes,
        ),
        evaluate_view(
            "by_length",
            f"By expected output length: < {SHORT_OUTPUT_TOKENS} tokens -> smallest model, "
            f"{SHORT_OUTPUT_TOKENS}-{LONG_OUTPUT_TOKENS} -> larger model, "
            f"> {LONG_OUTPUT_TOKENS} -> cloud",
            observations,
            lambda ref: by_length[length_bucket(ref.reference_tokens)],
            candidates,
            objectives,
            by_length,
        ),
        evaluate_view(
            "static",
            "Static rule of thumb: simple types -> smallest edge model, "
            "moderate -> larger edge model, "
            "complex -> relay",
            observations,
            lambda ref: by_tier[static_tier(ref.task_type)],
            candidates,
            objectives,
            by_tier,
        ),
    ]
