"""Other routing rules, replayed on the same per-request evidence as the plan's decision, for
comparison: by expected output length, by a static rule of thumb per task type, and the plan
itself (:func:`compare_views`).
"""

from __future__ import annotations

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
    Decision,
    Objectives,
    memory_of,
)
from planner.evaluate.evidence import (
    PRODUCTION,
    Candidate,
    DeviceFit,
    Evidence,
    Observation,
)
from planner.stats import percentile


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
        latency_p95_ms=percentile(latencies, 95),
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
