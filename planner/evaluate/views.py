"""Other routing rules, replayed on the same per-request evidence as the plan's decision, for
comparison: by expected output length, by a static rule of thumb per task type, and the plan
itself (:func:`compare_views`).

The comparison is cross-fitted: the sampled requests are split in two halves by a hash of their
id; each rule's data-driven choices (the plan's routes, the tiers of the rules of thumb) are made
on one half and scored on the other, then the other way round, and the two halves pooled. A rule
is never scored on the requests it was chosen on. A request's quality is its outcome's credit
relative to production's ceiling on its type (production's own answer: 1), as in the evidence.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from planner.evaluate.decision import (
    LONG_OUTPUT_TOKENS,
    MODERATE_TYPES,
    SHORT_OUTPUT_TOKENS,
    SIMPLE_TYPES,
    memory_of,
)
from planner.evaluate.evidence import (
    NOT_SENT,
    PRODUCTION,
    Candidate,
    DeviceFit,
    Evidence,
    Observation,
)
from planner.evaluate.verdict import PassRules, outcome_of
from planner.stats import percentile


@dataclass(frozen=True)
class View:
    """One routing rule evaluated on the sampled requests."""

    name: str
    description: str
    requests: int
    missing: int  # requests whose assigned route has no replay of them
    quality_mean: float | None  # mean credit relative to production's ceiling
    pass_rate: float | None  # mean credit
    cost_per_1k_usd: float | None
    latency_p95_ms: float | None
    route_share: dict[str, float]
    assignment: dict[str, str] = field(
        default_factory=dict, repr=False
    )  # task type/bucket -> route (chosen on the first half)
    needs: str = ""  # what the rule needs to know that a router may not

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
        measured = [memory_of(e) for e in evidence if e.candidate == name]
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
        if obs.stratum != "type":
            continue
        by_pair[(obs.request_id, obs.candidate)] = obs
        if obs.candidate == PRODUCTION:
            reference[obs.request_id] = obs
    return by_pair, reference


def half_of(request_id: str) -> int:
    """0 or 1, by a stable hash of the id (the cross-fitting split)."""
    return hashlib.md5(request_id.encode("utf-8")).digest()[0] & 1


@dataclass
class _Tally:
    qualities: list[float] = field(default_factory=list)
    credits: list[float] = field(default_factory=list)
    costs: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    shares: Counter[str] = field(default_factory=Counter)
    missing: int = 0
    requests: int = 0


def _score_request(
    tally: _Tally,
    request_id: str,
    route: str,
    by_pair: Mapping[tuple[str, str], Observation],
    candidates: Mapping[str, Candidate],
    rules: PassRules,
    ceilings: Mapping[str, float],
) -> None:
    tally.requests += 1
    obs = by_pair.get((request_id, route))
    if obs is None or obs.error_kind in NOT_SENT or (obs.quality is None and not obs.error_kind):
        tally.missing += 1
        return
    outcome = (
        "pass"
        if route == PRODUCTION
        else "fail"
        if obs.error_kind is not None
        else outcome_of(obs.scorer, float(obs.quality or 0.0), rules)
    )
    if outcome is None:
        tally.missing += 1
        return
    tally.shares[route] += 1
    credit = rules.credit(outcome)  # type: ignore[arg-type]
    tally.credits.append(credit)
    tally.qualities.append(
        1.0 if route == PRODUCTION else credit / ceilings.get(obs.task_type, 1.0)
    )
    if obs.error_kind is not None:
        return
    cand = candidates.get(route)
    if cand is None or cand.kind == "production":
        tally.costs.append(float(obs.cost_usd or 0.0))
    else:
        tally.costs.append(cand.cost_usd(obs.prompt_tokens or 0, obs.completion_tokens or 0))
    if obs.latency_ms is not None:
        tally.latencies.append(obs.latency_ms)


def evaluate_view(
    name: str,
    description: str,
    observations: Sequence[Observation],
    assigners: Sequence[tuple[Callable[[str], bool], Callable[[Observation], str]]],
    candidates: Mapping[str, Candidate],
    *,
    rules: PassRules | None = None,
    ceilings: Mapping[str, float] | None = None,
    assignment: Mapping[str, str] | None = None,
    needs: str = "",
) -> View:
    """Quality, cost and latency if each sampled request had gone where its assigner sends it.

    ``assigners`` pairs a test of the request id (which half it is in) with the rule fitted on
    the other half; an assigner receives production's observation of the request (its task type
    and output length). A failed replay is a fail, as in the evidence."""
    rules = rules or PassRules()
    by_pair, reference = _index(observations)
    tally = _Tally()
    for request_id, ref in sorted(reference.items()):
        assign = next((a for inside, a in assigners if inside(request_id)), None)
        if assign is None:
            continue
        _score_request(
            tally, request_id, assign(ref), by_pair, candidates, rules, dict(ceilings or {})
        )
    counted = sum(tally.shares.values())
    return View(
        name=name,
        description=description,
        requests=tally.requests,
        missing=tally.missing,
        quality_mean=float(np.mean(tally.qualities)) if tally.qualities else None,
        pass_rate=float(np.mean(tally.credits)) if tally.credits else None,
        cost_per_1k_usd=float(np.mean(tally.costs)) * 1000 if tally.costs else None,
        latency_p95_ms=percentile(tally.latencies, 95),
        route_share={r: n / counted for r, n in sorted(tally.shares.items())} if counted else {},
        assignment=dict(assignment or {}),
        needs=needs,
    )


def length_bucket(tokens: int | None) -> str:
    if tokens is None or tokens < SHORT_OUTPUT_TOKENS:
        return "short"
    return "medium" if tokens <= LONG_OUTPUT_TOKENS else "long"


def static_tier(task_type: str) -> str:
    if task_type in SIMPLE_TYPES:
        return "simple"
    return "moderate" if task_type in MODERATE_TYPES else "complex"


@dataclass(frozen=True)
class Fitted:
    """What one half of the sample decides: the plan's routes and the rules' tiers."""

    routes: dict[str, str]
    tiers: Tiers


def compare_views(
    observations: Sequence[Observation],
    candidates: Mapping[str, Candidate],
    fit_half: Callable[[Sequence[Observation]], Fitted],
    *,
    rules: PassRules | None = None,
    ceilings: Mapping[str, float] | None = None,
) -> list[View]:
    """The evidence-based plan, routing by output length, and the static rule of thumb,
    cross-fitted: ``fit_half`` decides on one half's observations, the other half scores."""
    halves = [[o for o in observations if half_of(o.request_id) == h] for h in (0, 1)]
    fitted = [fit_half(half) for half in halves]

    def on_half(h: int) -> Callable[[str], bool]:
        return lambda request_id: half_of(request_id) == h

    def plan_rule(f: Fitted) -> Callable[[Observation], str]:
        return lambda ref: f.routes.get(ref.task_type, PRODUCTION)

    def length_rule(f: Fitted) -> Callable[[Observation], str]:
        table = {"short": f.tiers.small, "medium": f.tiers.large, "long": f.tiers.cloud}
        return lambda ref: table[length_bucket(ref.reference_tokens)]

    def static_rule(f: Fitted) -> Callable[[Observation], str]:
        table = {"simple": f.tiers.small, "moderate": f.tiers.large, "complex": f.tiers.cloud}
        return lambda ref: table[static_tier(ref.task_type)]

    # each half is scored by what the *other* half decided
    def crossed(
        rule: Callable[[Fitted], Callable[[Observation], str]],
    ) -> list[tuple[Callable[[str], bool], Callable[[Observation], str]]]:
        return [(on_half(0), rule(fitted[1])), (on_half(1), rule(fitted[0]))]

    first = fitted[1]  # the choices shown are those scored on half 0
    kw = {"rules": rules, "ceilings": ceilings}
    return [
        evaluate_view(
            "plan",
            "By task type, on the evidence (this plan's rule)",
            observations,
            crossed(plan_rule),
            candidates,
            assignment=first.routes,
            **kw,  # type: ignore[arg-type]
        ),
        evaluate_view(
            "by_length",
            f"By output length: < {SHORT_OUTPUT_TOKENS} tokens -> smallest model, "
            f"{SHORT_OUTPUT_TOKENS}-{LONG_OUTPUT_TOKENS} -> larger model, "
            f"> {LONG_OUTPUT_TOKENS} -> cloud",
            observations,
            crossed(length_rule),
            candidates,
            assignment={
                "short": first.tiers.small,
                "medium": first.tiers.large,
                "long": first.tiers.cloud,
            },
            needs=(
                "the answer's length in advance: scored with production's realized answer "
                "length, which no router knows before the answer exists"
            ),
            **kw,  # type: ignore[arg-type]
        ),
        evaluate_view(
            "static",
            "Static rule of thumb: simple types -> smallest edge model, "
            "moderate -> larger edge model, "
            "complex -> relay",
            observations,
            crossed(static_rule),
            candidates,
            assignment={
                "simple": first.tiers.small,
                "moderate": first.tiers.large,
                "complex": first.tiers.cloud,
            },
            **kw,  # type: ignore[arg-type]
        ),
    ]
