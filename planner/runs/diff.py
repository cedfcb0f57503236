"""What changed between two runs, and what a person must look at first.

Pure functions over plain data: :func:`figures_from_metrics` reads the few figures a comparison
needs out of a run's ``metrics.json`` (as written by
:meth:`planner.report.render.PlanReport.metrics`) and :func:`diff_runs` compares two of them. A
:class:`Signal` is one thing a person must look at; :mod:`planner.runs.alerts` builds them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from planner.errors import PlannerError

PRODUCTION_KIND = "production"

# Headline figures kept per run: the projection's monthly money, shares, quality and latency.
HEADLINE_NUMBERS = (
    "cost_before_usd",
    "cost_after_usd",
    "savings_usd",
    "savings_share",
    "migrated_share",
    "quality",
    "latency_p95_before_ms",
    "latency_p95_after_ms",
    "payback_months",
)
HEADLINE_TEXTS = ("verdict", "suitability")
COST_KEYS = ("cost_before_usd", "cost_after_usd", "savings_usd")
HEADLINE_DIFF_KEYS = (
    "requests",
    "migrated_share",
    "quality",
    "latency_p95_before_ms",
    "latency_p95_after_ms",
)

DRIFT_EPSILON = 1e-9  # shares are floats: a drift equal to the threshold must not alert

SignalKind = Literal[
    "decision_flipped",
    "quality_below_floor",
    "deployed_route_failing",
    "relay_serving_changed",
    "drift",
    "classifier_changed",
]


class FiguresError(PlannerError):
    """A run's metrics lack a figure the history needs (names the field)."""

    def __init__(self, field_name: str, reason: str) -> None:
        self.field = field_name
        self.reason = reason
        super().__init__(f"metrics.json: field {field_name}: {reason}")


@dataclass(frozen=True)
class RouteFigures:
    """One task type's decision in one run."""

    task_type: str
    route: str
    kind: str  # "local" | "relay" | "production"
    quality_mean: float | None
    latency_p95_ms: float | None
    cost_per_1k_usd: float | None
    share: float | None  # of the run's requests

    @property
    def migrated(self) -> bool:
        return self.kind != PRODUCTION_KIND

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_type": self.task_type,
            "route": self.route,
            "kind": self.kind,
            "quality_mean": self.quality_mean,
            "latency_p95_ms": self.latency_p95_ms,
            "cost_per_1k_usd": self.cost_per_1k_usd,
            "share": self.share,
        }


@dataclass(frozen=True)
class RunFigures:
    """The figures of one run that are compared with other runs."""

    headline: dict[str, float | str | None]
    task_mix: dict[str, float]  # task type -> share of requests
    routes: tuple[RouteFigures, ...]
    quality_floor: float

    def route(self, task_type: str) -> RouteFigures | None:
        return next((r for r in self.routes if r.task_type == task_type), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "headline": dict(self.headline),
            "task_mix": dict(self.task_mix),
            "routes": [r.to_dict() for r in self.routes],
            "quality_floor": self.quality_floor,
        }


def _number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FiguresError(where, f"expected a number, got {type(value).__name__}")
    number = float(value)
    return None if math.isnan(number) or math.isinf(number) else number


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise FiguresError(where, "expected a non-empty string")
    return value


def _mapping(data: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = data.get(key)
    if not isinstance(value, Mapping):
        raise FiguresError(f"{where}{key}", "missing or not an object")
    return value


def _list(data: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = data.get(key)
    if not isinstance(value, list):
        raise FiguresError(f"{where}{key}", "missing or not a list")
    return value


def figures_from_metrics(metrics: Mapping[str, Any]) -> RunFigures:
    """Read the comparable figures out of one run's ``metrics.json`` data.

    Money is the projection's monthly figure; ``share`` per route and ``task_mix`` come from the
    workload's task types. A malformed file is one :class:`FiguresError` naming the field.
    """
    objectives = _mapping(metrics, "objectives", "")
    floor = _number(objectives.get("quality_floor"), "objectives.quality_floor")
    if floor is None:
        raise FiguresError("objectives.quality_floor", "missing")
    projection = _mapping(metrics, "projection", "")
    workload = _mapping(metrics, "workload", "")

    mix: dict[str, float] = {}
    for i, row in enumerate(_list(workload, "types", "workload.")):
        where = f"workload.types[{i}]"
        if not isinstance(row, Mapping):
            raise FiguresError(where, "not an object")
        share = _number(row.get("share"), f"{where}.share")
        mix[_text(row.get("task_type"), f"{where}.task_type")] = share or 0.0

    requests = _number(workload.get("requests"), "workload.requests")
    headline: dict[str, float | str | None] = {
        "requests": None if requests is None else int(requests)
    }
    for key in HEADLINE_NUMBERS:
        headline[key] = _number(projection.get(key), f"projection.{key}")
    for key in HEADLINE_TEXTS:
        value = projection.get(key)
        headline[key] = value if isinstance(value, str) else None
    generated = metrics.get("generated_at")
    headline["generated_at"] = generated if isinstance(generated, str) else None

    routes = []
    for i, row in enumerate(_list(metrics, "routes", "")):
        where = f"routes[{i}]"
        if not isinstance(row, Mapping):
            raise FiguresError(where, "not an object")
        task = _text(row.get("task_type"), f"{where}.task_type")
        routes.append(
            RouteFigures(
                task_type=task,
                route=_text(row.get("route"), f"{where}.route"),
                kind=_text(row.get("kind"), f"{where}.kind"),
                quality_mean=_number(row.get("quality_mean"), f"{where}.quality_mean"),
                latency_p95_ms=_number(row.get("latency_p95_ms"), f"{where}.latency_p95_ms"),
                cost_per_1k_usd=_number(row.get("cost_per_1k_usd"), f"{where}.cost_per_1k_usd"),
                share=mix.get(task),
            )
        )
    routes.sort(key=lambda r: r.task_type)
    return RunFigures(headline=headline, task_mix=mix, routes=tuple(routes), quality_floor=floor)


@dataclass(frozen=True)
class Change:
    """One figure in run A and in run B."""

    a: float | None
    b: float | None

    @property
    def delta(self) -> float | None:
        return None if self.a is None or self.b is None else self.b - self.a

    def to_dict(self) -> dict[str, float | None]:
        return {"a": self.a, "b": self.b, "delta": self.delta}


@dataclass(frozen=True)
class MixChange:
    """A task type's share of requests in run A and run B (0 where the type is absent)."""

    task_type: str
    share_a: float
    share_b: float

    @property
    def delta(self) -> float:
        return self.share_b - self.share_a

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_type": self.task_type,
            "share_a": self.share_a,
            "share_b": self.share_b,
            "delta": self.delta,
        }


RouteStatus = Literal["same", "flipped", "added", "removed"]


@dataclass(frozen=True)
class RouteChange:
    """One task type's decision in run A and run B."""

    task_type: str
    route_a: str | None
    route_b: str | None
    kind_a: str | None
    kind_b: str | None
    quality: Change
    latency_p95_ms: Change
    cost_per_1k_usd: Change

    @property
    def status(self) -> RouteStatus:
        if self.route_a is None:
            return "added"
        if self.route_b is None:
            return "removed"
        return "flipped" if self.route_a != self.route_b else "same"

    @property
    def flipped(self) -> bool:
        """The task type was decided in both runs, and its route differs."""
        return self.status == "flipped"

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_type": self.task_type,
            "status": self.status,
            "flipped": self.flipped,
            "route_a": self.route_a,
            "route_b": self.route_b,
            "kind_a": self.kind_a,
            "kind_b": self.kind_b,
            "quality": self.quality.to_dict(),
            "latency_p95_ms": self.latency_p95_ms.to_dict(),
            "cost_per_1k_usd": self.cost_per_1k_usd.to_dict(),
        }


@dataclass(frozen=True)
class RunDiff:
    """What changed from run A to run B."""

    a_run_id: str
    b_run_id: str
    drift: float  # total variation distance of the task mix, 0..1
    mix_changes: tuple[MixChange, ...]  # largest change first
    route_changes: tuple[RouteChange, ...]  # flipped first, then by task type
    cost: dict[str, Change]  # monthly cost_before_usd, cost_after_usd, savings_usd
    headline: dict[str, Change]  # requests, migrated_share, quality, latency p95
    verdict_a: str | None = None
    verdict_b: str | None = None
    quality_floor_a: float | None = None
    quality_floor_b: float | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def flipped(self) -> tuple[RouteChange, ...]:
        return tuple(c for c in self.route_changes if c.flipped)

    def to_dict(self) -> dict[str, Any]:
        return {
            "a_run_id": self.a_run_id,
            "b_run_id": self.b_run_id,
            "drift": self.drift,
            "flipped": [c.task_type for c in self.flipped],
            "mix_changes": [m.to_dict() for m in self.mix_changes],
            "route_changes": [c.to_dict() for c in self.route_changes],
            "cost": {k: v.to_dict() for k, v in self.cost.items()},
            "headline": {k: v.to_dict() for k, v in self.headline.items()},
            "verdict_a": self.verdict_a,
            "verdict_b": self.verdict_b,
            "quality_floor_a": self.quality_floor_a,
            "quality_floor_b": self.quality_floor_b,
            "notes": list(self.notes),
        }


def mix_drift(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """Total variation distance between two task mixes (each normalized to sum 1): 0..1."""
    total_a, total_b = sum(a.values()), sum(b.values())
    if total_a <= 0 or total_b <= 0:
        return 0.0 if total_a == total_b else 1.0
    types = set(a) | set(b)
    distance = 0.5 * sum(abs(a.get(t, 0.0) / total_a - b.get(t, 0.0) / total_b) for t in types)
    return min(1.0, max(0.0, distance))


def _headline_number(figures: RunFigures, key: str) -> float | None:
    value = figures.headline.get(key)
    return float(value) if isinstance(value, int | float) else None


def _headline_text(figures: RunFigures, key: str) -> str | None:
    value = figures.headline.get(key)
    return value if isinstance(value, str) else None


def diff_runs(a_id: str, a: RunFigures, b_id: str, b: RunFigures) -> RunDiff:
    """Compare run A (usually the older) with run B: mix drift, decisions, quality, cost."""
    types = sorted(set(a.task_mix) | set(b.task_mix))
    mix = sorted(
        (MixChange(t, a.task_mix.get(t, 0.0), b.task_mix.get(t, 0.0)) for t in types),
        key=lambda m: (-abs(m.delta), m.task_type),
    )
    changes = []
    for task in sorted({r.task_type for r in a.routes} | {r.task_type for r in b.routes}):
        ra, rb = a.route(task), b.route(task)
        changes.append(
            RouteChange(
                task_type=task,
                route_a=ra.route if ra else None,
                route_b=rb.route if rb else None,
                kind_a=ra.kind if ra else None,
                kind_b=rb.kind if rb else None,
                quality=Change(ra.quality_mean if ra else None, rb.quality_mean if rb else None),
                latency_p95_ms=Change(
                    ra.latency_p95_ms if ra else None, rb.latency_p95_ms if rb else None
                ),
                cost_per_1k_usd=Change(
                    ra.cost_per_1k_usd if ra else None, rb.cost_per_1k_usd if rb else None
                ),
            )
        )
    order = {"flipped": 0, "added": 1, "removed": 2, "same": 3}
    changes.sort(key=lambda c: (order[c.status], c.task_type))
    notes = []
    if a.quality_floor != b.quality_floor:
        notes.append(f"The quality floor changed from {a.quality_floor:g} to {b.quality_floor:g}.")
    return RunDiff(
        a_run_id=a_id,
        b_run_id=b_id,
        drift=mix_drift(a.task_mix, b.task_mix),
        mix_changes=tuple(mix),
        route_changes=tuple(changes),
        cost={k: Change(_headline_number(a, k), _headline_number(b, k)) for k in COST_KEYS},
        headline={
            k: Change(_headline_number(a, k), _headline_number(b, k)) for k in HEADLINE_DIFF_KEYS
        },
        verdict_a=_headline_text(a, "verdict"),
        verdict_b=_headline_text(b, "verdict"),
        quality_floor_a=a.quality_floor,
        quality_floor_b=b.quality_floor,
        notes=tuple(notes),
    )


@dataclass(frozen=True)
class Signal:
    """One thing a person must look at, in one sentence."""

    kind: SignalKind
    task_type: str | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "task_type": self.task_type, "message": self.message}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Signal:
        return cls(kind=data["kind"], task_type=data.get("task_type"), message=data["message"])


def signals_from_dicts(rows: Sequence[Mapping[str, Any]]) -> list[Signal]:
    return [Signal.from_dict(row) for row in rows]
