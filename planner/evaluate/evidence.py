"""The evidence for each (task type, candidate): how good, how fast, how costly, how often it fails.

Quality is relative to production (production's own answers score 1.0). A replay that failed
counts as quality 0 (the user would not have got an answer from that route), while replays that
were never sent (budget cap, open circuit) say nothing about the model and are only counted. The
95% interval of the mean is a seeded percentile bootstrap, so the same replays give the same
interval on every run.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from planner.errors import PlanError
from planner.stats import percentile

Kind = Literal["local", "relay", "production"]
PRODUCTION = "production"
KINDS: tuple[str, ...] = ("local", "relay", "production")
TIER_RANK: dict[str, int] = {"local": 0, "relay": 1, "production": 2}
NOT_SENT = frozenset({"budget", "circuit_open"})


@dataclass(frozen=True)
class Candidate:
    """A route traffic can take: a local model, a relay endpoint, or production itself.

    Prices are USD per 1M tokens. ``api_key_env`` names the variable holding the key; no key is
    ever held here.
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
        return (self.price_in * prompt_tokens + self.price_out * completion_tokens) / 1e6


@dataclass(frozen=True)
class DeviceFit:
    """Whether a local model fits the device tier (computed by the devices module)."""

    fits: bool
    needed_mb: float
    headroom_mb: float
    est_tokens_per_s: float | None = None


def device_fit_from(candidate: str, data: DeviceFit | Mapping[str, Any]) -> DeviceFit:
    """A :class:`DeviceFit` from the plain dict the devices module hands over."""
    if isinstance(data, DeviceFit):
        return data
    try:
        tps = data.get("est_tokens_per_s")
        return DeviceFit(
            fits=bool(data["fits"]),
            needed_mb=float(data["needed_mb"]),
            headroom_mb=float(data["headroom_mb"]),
            est_tokens_per_s=None if tps is None else float(tps),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise PlanError(
            f"device fit for candidate {candidate!r}: bad or missing field {exc}"
        ) from exc


@dataclass(frozen=True)
class Observation:
    """One replayed request through one candidate (or production's logged call), flattened."""

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


@dataclass(frozen=True)
class Evidence:
    """What the replays say about one candidate on one task type."""

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
    share_at_floor: float | None
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
    latency_samples: tuple[float, ...] = field(default=(), repr=False, compare=False)

    @property
    def interval_width(self) -> float | None:
        if self.quality_low is None or self.quality_high is None:
            return None
        return self.quality_high - self.quality_low

    def summary(self) -> dict[str, Any]:
        """Every figure as plain JSON-ready data (latency samples left out)."""
        return {
            "task_type": self.task_type,
            "candidate": self.candidate,
            "kind": self.kind,
            "n": self.n,
            "n_scored": self.n_scored,
            "n_unscored": self.n_unscored,
            "n_not_sent": self.n_not_sent,
            "quality_mean": self.quality_mean,
            "quality_low": self.quality_low,
            "quality_high": self.quality_high,
            "share_at_floor": self.share_at_floor,
            "ttft_p50_ms": self.ttft_p50_ms,
            "ttft_p95_ms": self.ttft_p95_ms,
            "latency_p50_ms": self.latency_p50_ms,
            "latency_p95_ms": self.latency_p95_ms,
            "tokens_per_s": self.tokens_per_s,
            "cost_per_1k_usd": self.cost_per_1k_usd,
            "peak_memory_mb": self.peak_memory_mb,
            "fit": None if self.fit is None else vars(self.fit).copy(),
            "error_rate": self.error_rate,
            "errors": dict(self.errors),
            "scorers": dict(self.scorers),
        }


def bootstrap_interval(
    values: Iterable[float], *, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float] | None:
    """Percentile-bootstrap interval of the mean (None without values; a point for one value)."""
    arr = np.asarray(list(values), dtype=float)
    if arr.size == 0:
        return None
    if arr.size == 1 or np.all(arr == arr[0]):
        return float(arr[0]), float(arr[0])
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, arr.size, size=(n_boot, arr.size))].mean(axis=1)
    tail = (1.0 - level) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def _tokens_per_s(obs: Observation) -> float | None:
    if obs.tokens_per_s is not None:
        return obs.tokens_per_s
    if obs.completion_tokens and obs.latency_ms is not None:
        gen_ms = obs.latency_ms - (obs.ttft_ms or 0.0)
        if gen_ms > 0:
            return obs.completion_tokens / (gen_ms / 1000.0)
    return None


def summarize(
    task_type: str,
    candidate: Candidate,
    observations: list[Observation],
    *,
    floor: float,
    fit: DeviceFit | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> Evidence:
    """The evidence of one (task type, candidate) from its observations."""
    sent = [o for o in observations if o.error_kind not in NOT_SENT]
    failed = [o for o in sent if o.error_kind is not None]
    ok = [o for o in sent if o.error_kind is None]
    scored = [o for o in ok if o.quality is not None]
    qualities = [float(o.quality) for o in scored if o.quality is not None] + [0.0] * len(failed)
    interval = bootstrap_interval(qualities, n_boot=n_boot, seed=seed)
    costs = [o.cost_usd for o in ok if o.cost_usd is not None]
    if candidate.kind == "local":
        cost_per_1k: float | None = 0.0
    else:
        cost_per_1k = float(np.mean(costs)) * 1000 if costs else None
    memory = [o.peak_rss_mb for o in ok if o.peak_rss_mb is not None]
    tps = [t for t in (_tokens_per_s(o) for o in ok) if t is not None]
    latencies = tuple(float(o.latency_ms) for o in ok if o.latency_ms is not None)
    return Evidence(
        task_type=task_type,
        candidate=candidate.name,
        kind=candidate.kind,
        n=len(sent),
        n_scored=len(scored),
        n_unscored=len(ok) - len(scored),
        n_not_sent=len(observations) - len(sent),
        quality_mean=float(np.mean(qualities)) if qualities else None,
        quality_low=None if interval is None else interval[0],
        quality_high=None if interval is None else interval[1],
        share_at_floor=(sum(q >= floor for q in qualities) / len(qualities)) if qualities else None,
        ttft_p50_ms=percentile((o.ttft_ms for o in ok), 50),
        ttft_p95_ms=percentile((o.ttft_ms for o in ok), 95),
        latency_p50_ms=percentile(latencies, 50),
        latency_p95_ms=percentile(latencies, 95),
        tokens_per_s=float(np.median(tps)) if tps else None,
        cost_per_1k_usd=cost_per_1k,
        peak_memory_mb=max(memory) if memory else None,
        fit=fit,
        error_rate=len(failed) / len(sent) if sent else 0.0,
        errors=dict(Counter(o.error_kind for o in failed if o.error_kind)),
        scorers=dict(Counter(o.scorer for o in scored if o.scorer)),
        latency_samples=latencies,
    )


def build_evidence(
    observations: Iterable[Observation],
    candidates: Mapping[str, Candidate],
    *,
    floor: float,
    fits: Mapping[str, DeviceFit | Mapping[str, Any]] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> list[Evidence]:
    """Evidence for every (task type, candidate) seen, sorted by task type then candidate.

    ``candidates`` must name every candidate observed (production included, kind "production");
    ``fits`` maps local candidate names to their device fit.
    """
    groups: dict[tuple[str, str], list[Observation]] = defaultdict(list)
    for obs in observations:
        groups[(obs.task_type, obs.candidate)].append(obs)
    fit_map = {name: device_fit_from(name, data) for name, data in (fits or {}).items()}
    out: list[Evidence] = []
    for (task_type, name), group in sorted(groups.items()):
        if name not in candidates:
            known = ", ".join(sorted(candidates)) or "none"
            raise PlanError(
                f"replays of candidate {name!r} but no such candidate is configured "
                f"(known: {known})"
            )
        cand = candidates[name]
        out.append(
            summarize(
                task_type,
                cand,
                group,
                floor=floor,
                fit=fit_map.get(name) if cand.kind == "local" else None,
                n_boot=n_boot,
                seed=seed,
            )
        )
    return out
