"""The evidence for each (task type, candidate): how often it is as good as production, how fast
on the target device, how costly at today's prices, how often it fails.

Each scored replay has an outcome (:mod:`planner.evaluate.verdict`): the *pass rate* and its exact
bounds are what the decision reads, relative to production's ceiling on the type
(``quality_* = pass rate / ceiling``, so a route qualifies when ``quality_low >= floor``). The
mean score is shown beside it with its BCa interval. A replay that failed is a fail (the user
would not have got an answer from that route) and counts at its timeout in the latency figures;
replays never sent (budget cap, open circuit) say nothing about the model and are only counted.

Latency of a local model is reported for the device tier the plan names: the host measurement
times the fit's ``latency_factor`` (host decode speed / device decode speed), with the host
figure beside it. Cost is priced now, from the candidate's current prices and each replay's
token counts (:meth:`Candidate.cost_usd`): the ranking and the projection use that one function.

The sample's uncertain stratum (requests the classifier was unsure of) is evidence of its own,
under the task type :data:`UNCERTAIN`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from planner.errors import PlanError
from planner.evaluate.intervals import BCA_RESAMPLES, mean_interval
from planner.evaluate.verdict import (
    Budget,
    Ceiling,
    Outcome,
    PassEvidence,
    PassRules,
    QualityVerdict,
    is_judge,
    looks,
    outcome_of,
    sequential_verdict,
)
from planner.stats import percentile

Kind = Literal["local", "relay", "production"]
PRODUCTION = "production"
UNCERTAIN = "(uncertain)"  # the task type of the uncertain stratum's evidence
KINDS: tuple[str, ...] = ("local", "relay", "production")
TIER_RANK: dict[str, int] = {"local": 0, "relay": 1, "production": 2}
NOT_SENT = frozenset({"budget", "circuit_open"})


@dataclass(frozen=True)
class Candidate:
    """A route traffic can take: a local model, a relay endpoint, or production itself.

    Prices are USD per 1M tokens. ``api_key_env`` names the variable holding the key; no key is
    ever held here. ``timeout_s`` is what a failed request costs in the latency figures.
    """

    name: str
    kind: Kind
    price_in: float = 0.0
    price_out: float = 0.0
    rpm: int | None = None
    tpm: int | None = None
    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    timeout_s: float = 60.0
    max_retries: int = 2

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise PlanError(
                f"candidate {self.name!r}: kind must be one of {', '.join(KINDS)}, "
                f"got {self.kind!r}"
            )

    def cost_usd(self, prompt_tokens: float, completion_tokens: float) -> float:
        """The one cost function: USD of one request at this candidate's current prices."""
        if self.kind == "local":
            return 0.0
        return (self.price_in * prompt_tokens + self.price_out * completion_tokens) / 1e6


@dataclass(frozen=True)
class DeviceFit:
    """Whether a local model fits the device tier (computed by the devices module), and how much
    slower (> 1) or faster it runs there than on this host (``latency_factor``)."""

    fits: bool
    needed_mb: float
    headroom_mb: float
    est_tokens_per_s: float | None = None
    latency_factor: float | None = None
    latency_basis: str = ""


def device_fit_from(candidate: str, data: DeviceFit | Mapping[str, Any]) -> DeviceFit:
    """A :class:`DeviceFit` from the plain dict the devices module hands over."""
    if isinstance(data, DeviceFit):
        return data
    try:
        tps = data.get("est_tokens_per_s")
        factor = data.get("latency_factor")
        return DeviceFit(
            fits=bool(data["fits"]),
            needed_mb=float(data["needed_mb"]),
            headroom_mb=float(data["headroom_mb"]),
            est_tokens_per_s=None if tps is None else float(tps),
            latency_factor=None if factor is None else float(factor),
            latency_basis=str(data.get("latency_basis") or ""),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise PlanError(
            f"device fit for candidate {candidate!r}: bad or missing field {exc}"
        ) from exc


@dataclass(frozen=True)
class Observation:
    """One replayed request through one candidate (or production's logged call), flattened.

    ``position`` is the request's place in its stratum's sample order (the order rounds take
    requests in); ``stratum`` is "type" (the per-type quota) or "uncertain"."""

    request_id: str
    task_type: str
    candidate: str
    quality: float | None = None  # None: failed, or not scored yet
    scorer: str | None = None
    error_kind: str | None = None
    ttft_ms: float | None = None
    latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    tokens_per_s: float | None = None
    cost_usd: float | None = None
    peak_rss_mb: float | None = None
    reference_tokens: int | None = None  # production's completion tokens for this request
    conversation_id: str | None = None
    turn_index: int | None = None
    position: int | None = None
    stratum: str = "type"


@dataclass(frozen=True)
class Method:
    """How evidence is weighed: the confidence of the whole decision per task type, the first
    look of the sequential rule, the pass rules and the bootstrap size."""

    confidence: float = 0.95
    first_look: int = 10
    rules: PassRules = field(default_factory=PassRules)
    resamples: int = BCA_RESAMPLES
    ceiling_min_pairs: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.5 <= self.confidence < 1.0:
            raise PlanError(f"confidence must be within [0.5, 1), got {self.confidence}")

    @property
    def alpha(self) -> float:
        return 1.0 - self.confidence


@dataclass(frozen=True)
class Evidence:
    """What the replays say about one candidate on one task type.

    ``quality_mean/low/high`` are the pass rate and its bounds (at the deciding look) divided by
    production's ceiling on the type: the floor applies to them. ``score_*`` are the mean score
    and its BCa interval. ``latency_*`` are on the device tier for a local model (``host_*``
    beside them), with failed requests at their timeout."""

    task_type: str
    candidate: str
    kind: str
    n: int  # replays sent (failed ones included, never-sent ones not)
    n_scored: int
    n_unscored: int
    n_not_sent: int
    quality_mean: float | None
    quality_low: float | None
    quality_high: float | None
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    tokens_per_s: float | None
    cost_per_1k_usd: float | None
    peak_memory_mb: float | None
    fit: DeviceFit | None
    error_rate: float
    errors: dict[str, int]
    scorers: dict[str, int]
    outcomes: dict[str, int] = field(default_factory=dict)  # pass / tie / fail counts
    pass_rate: float | None = None  # over every measured replay
    score_mean: float | None = None
    score_low: float | None = None
    score_high: float | None = None
    score_note: str | None = None
    score_method: str = ""
    host_latency_p95_ms: float | None = None
    latency_basis: str = "measured"
    ceiling: Ceiling | None = None
    passes: PassEvidence | None = field(default=None, repr=False, compare=False)
    verdict: QualityVerdict | None = None
    bound_method: str = ""
    latency_samples: tuple[float, ...] = field(default=(), repr=False, compare=False)

    @property
    def interval_width(self) -> float | None:
        if self.quality_low is None or self.quality_high is None:
            return None
        return self.quality_high - self.quality_low

    def verdict_at(self, floor: float, min_samples: int | None = None) -> QualityVerdict | None:
        """The rule's verdict at another floor (the same evidence)."""
        if self.passes is None:
            return None
        ceiling = self.ceiling.value if self.ceiling is not None else 1.0
        fewest = self.passes.min_samples if min_samples is None else min_samples
        return sequential_verdict(
            replace(self.passes, required=floor * ceiling, min_samples=fewest)
        )

    def summary(self) -> dict[str, Any]:
        """Every figure as plain JSON-ready data (latency samples and outcomes left out)."""
        data = {
            k: (dict(v) if isinstance(v, dict) else v)
            for k, v in vars(self).items()
            if k not in ("latency_samples", "passes", "verdict", "ceiling", "fit")
        }
        data["verdict"] = None if self.verdict is None else self.verdict.summary()
        data["ceiling"] = None if self.ceiling is None else self.ceiling.summary()
        data["fit"] = None if self.fit is None else vars(self.fit).copy()
        return data


def _tokens_per_s(obs: Observation) -> float | None:
    if obs.tokens_per_s is not None:
        return obs.tokens_per_s
    if obs.completion_tokens and obs.latency_ms is not None:
        gen_ms = obs.latency_ms - (obs.ttft_ms or 0.0)
        if gen_ms > 0:
            return obs.completion_tokens / (gen_ms / 1000.0)
    return None


def price_per_1k(candidate: Candidate, answered: Sequence[Observation]) -> float | None:
    """USD per 1,000 requests at the candidate's current prices, on its replays' own tokens
    (production: what its logged calls cost)."""
    if candidate.kind == "local":
        return 0.0
    if candidate.kind == "production":
        logged = [o.cost_usd for o in answered if o.cost_usd is not None]
        return float(np.mean(logged)) * 1000 if logged else None
    priced = [
        candidate.cost_usd(o.prompt_tokens, o.completion_tokens)
        for o in answered
        if o.prompt_tokens is not None and o.completion_tokens is not None
    ]
    return float(np.mean(priced)) * 1000 if priced else None


def outcomes_in_order(
    observations: Sequence[Observation], size: int, rules: PassRules
) -> tuple[tuple[Outcome | None, ...], Counter[str]]:
    """Each sample position's outcome (None: no outcome) and the outcome counts."""
    outcomes: list[Outcome | None] = [None] * size
    counts: Counter[str] = Counter()
    for obs in observations:
        if obs.error_kind in NOT_SENT:
            continue
        if obs.error_kind is not None:
            outcome: Outcome | None = "fail"
        elif obs.quality is None:
            continue
        else:
            outcome = outcome_of(obs.scorer, float(obs.quality), rules)
        if outcome is None:
            continue
        counts[outcome] += 1
        pos = obs.position
        if pos is not None and 0 <= pos < size:
            outcomes[pos] = outcome
    return tuple(outcomes), counts


def summarize(
    task_type: str,
    candidate: Candidate,
    observations: list[Observation],
    *,
    floor: float,
    method: Method | None = None,
    ceiling: Ceiling | None = None,
    size: int | None = None,
    candidates_tried: int = 1,
    schedule: tuple[int, ...] | None = None,
    min_samples: int = 10,
    fit: DeviceFit | None = None,
) -> Evidence:
    """The evidence of one (task type, candidate) from its observations.

    ``size`` is the type's sample size (default: the observations' positions); ``schedule`` the
    looks (default :func:`looks` up to ``size``)."""
    method = method or Method()
    ceiling = ceiling or Ceiling(task_type, "not measured", 1.0)
    observations = _positioned(observations)
    size = size if size is not None else max((o.position or 0) + 1 for o in observations)
    sent = [o for o in observations if o.error_kind not in NOT_SENT]
    failed = [o for o in sent if o.error_kind is not None]
    ok = [o for o in sent if o.error_kind is None]
    scored = [o for o in ok if o.quality is not None]
    scores = [float(o.quality) for o in scored if o.quality is not None] + [0.0] * len(failed)
    production = candidate.kind == "production"
    interval = mean_interval(scores, resamples=method.resamples, seed=method.seed)
    host_lat = tuple(float(o.latency_ms) for o in ok if o.latency_ms is not None)
    host_lat += tuple(candidate.timeout_s * 1000.0 for _ in failed)  # a failure waits it out
    factor = fit.latency_factor if (fit is not None and candidate.kind == "local") else None
    latencies = tuple(v * factor for v in host_lat) if factor else host_lat
    ttfts = [o.ttft_ms * factor if factor else o.ttft_ms for o in ok if o.ttft_ms is not None]
    memory = [o.peak_rss_mb for o in ok if o.peak_rss_mb is not None]
    tps = [t for t in (_tokens_per_s(o) for o in ok) if t is not None]
    base: dict[str, Any] = {
        "task_type": task_type,
        "candidate": candidate.name,
        "kind": candidate.kind,
        "n": len(sent),
        "n_scored": len(scored),
        "n_unscored": len(ok) - len(scored),
        "n_not_sent": len(observations) - len(sent),
        "ttft_p50_ms": percentile(ttfts, 50),
        "ttft_p95_ms": percentile(ttfts, 95),
        "latency_p50_ms": percentile(latencies, 50),
        "latency_p95_ms": percentile(latencies, 95),
        "host_latency_p95_ms": percentile(host_lat, 95),
        "latency_basis": ((fit.latency_basis if fit else "") or "device estimate")
        if factor
        else "measured",
        "tokens_per_s": float(np.median(tps)) if tps else None,
        "cost_per_1k_usd": price_per_1k(candidate, ok),
        "peak_memory_mb": max(memory) if memory else None,
        "fit": fit,
        "error_rate": len(failed) / len(sent) if sent else 0.0,
        "errors": dict(Counter(o.error_kind for o in failed if o.error_kind)),
        "scorers": dict(Counter(o.scorer for o in scored if o.scorer)),
        "score_mean": interval.mean,
        "score_low": interval.low,
        "score_high": interval.high,
        "score_note": interval.note,
        "score_method": interval.method,
        "ceiling": ceiling,
        "latency_samples": latencies,
    }
    if production:
        return Evidence(
            **base,
            quality_mean=1.0,
            quality_low=None,
            quality_high=None,
            bound_method="the reference",
        )
    outcomes, counts = outcomes_in_order(observations, size, method.rules)
    schedule = schedule or looks(size, method.first_look)
    budget = Budget(method.alpha, candidates_tried, len(schedule), 0.5 if ceiling.measured else 0.0)
    evidence = PassEvidence(
        outcomes,
        size,
        floor * ceiling.value,
        budget.per_look,
        schedule,
        min_samples,
        tie_credit=method.rules.tie_credit,
        # a tie can occur where the judge scores (the method, never the outcomes, decides)
        ties=ceiling.method == "judge symmetry" or any(is_judge(o.scorer) for o in observations),
    )
    verdict = sequential_verdict(evidence)
    measured = [method.rules.credit(o) for o in outcomes if o is not None]
    pass_rate = (sum(measured) / len(measured)) if measured else None
    ceil = ceiling.value
    return Evidence(
        **base,
        outcomes={k: counts.get(k, 0) for k in ("pass", "tie", "fail")},
        pass_rate=pass_rate,
        quality_mean=None if verdict.pass_rate is None else verdict.pass_rate / ceil,
        quality_low=None if verdict.lower is None else verdict.lower / ceil,
        quality_high=None if verdict.upper is None else verdict.upper / ceil,
        passes=evidence,
        verdict=verdict,
        bound_method=budget.describe(),
    )


def _positioned(observations: Sequence[Observation]) -> list[Observation]:
    """Observations with a sample position; those without one are placed after the others in
    request-id order (data assembled by hand, without a sample)."""
    if all(o.position is not None for o in observations):
        return list(observations)
    taken = {o.position for o in observations if o.position is not None}
    start = max((p for p in taken if p is not None), default=-1) + 1
    out = [o for o in observations if o.position is not None]
    loose = sorted((o for o in observations if o.position is None), key=lambda o: o.request_id)
    out += [replace(o, position=start + i) for i, o in enumerate(loose)]
    return out


def build_evidence(
    observations: Iterable[Observation],
    candidates: Mapping[str, Candidate],
    *,
    floor: float,
    fits: Mapping[str, DeviceFit | Mapping[str, Any]] | None = None,
    method: Method | None = None,
    ceilings: Mapping[str, Ceiling] | None = None,
    min_samples: int = 10,
    adaptive: bool = True,
) -> list[Evidence]:
    """Evidence for every (task type, candidate) seen, sorted by task type then candidate.

    ``candidates`` must name every candidate observed (production included, kind "production");
    ``fits`` maps local candidate names to their device fit; ``ceilings`` production's ceiling
    per task type (default: not measured). A type's sample size is the number of its sampled
    requests (production's rows); the looks run up to it (``adaptive``), else one look at it.
    The uncertain stratum is one look at its whole size, under :data:`UNCERTAIN`.
    """
    method = method or Method()
    groups: dict[tuple[str, str], list[Observation]] = defaultdict(list)
    for obs in observations:
        key = UNCERTAIN if obs.stratum == "uncertain" else obs.task_type
        groups[(key, obs.candidate)].append(obs)
    fit_map = {name: device_fit_from(name, data) for name, data in (fits or {}).items()}
    sizes: dict[str, int] = {}
    tried: Counter[str] = Counter()
    for (task_type, name), group in groups.items():
        if name not in candidates:
            known = ", ".join(sorted(candidates)) or "none"
            raise PlanError(
                f"replays of candidate {name!r} but no such candidate is configured "
                f"(known: {known})"
            )
        if candidates[name].kind == "production":
            sizes[task_type] = len(group)
        else:
            tried[task_type] += 1
    out: list[Evidence] = []
    for (task_type, name), group in sorted(groups.items()):
        cand = candidates[name]
        size = sizes.get(task_type)
        if size is None or any(o.position is not None and o.position >= size for o in group):
            size = max(len(group), max((o.position or 0) + 1 for o in group))
        schedule = looks(size, method.first_look) if adaptive else (size,)
        if task_type == UNCERTAIN:
            schedule = (size,)
        ceiling = (ceilings or {}).get(task_type)
        out.append(
            summarize(
                task_type,
                cand,
                group,
                floor=floor,
                method=method,
                ceiling=ceiling,
                size=size,
                candidates_tried=max(1, tried[task_type]),
                schedule=schedule,
                min_samples=min_samples,
                fit=fit_map.get(name) if cand.kind == "local" else None,
            )
        )
    return out
