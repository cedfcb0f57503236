"""Figures out of metrics.json and the diff of two runs."""

from __future__ import annotations

from typing import Any

import pytest

from planner.runs.diff import (
    FiguresError,
    RouteFigures,
    RunFigures,
    diff_runs,
    figures_from_metrics,
    mix_drift,
)

Route = tuple[str, str, str, float | None, float | None, float | None]


def make_metrics(
    *,
    mix: dict[str, float],
    routes: list[Route],
    floor: float = 0.9,
    cost: tuple[float, float] = (100.0, 40.0),
    quality: float = 0.97,
    migrated: float = 0.6,
    requests: int = 1000,
) -> dict[str, Any]:
    """A metrics.json shaped like PlanReport.metrics() writes it (only the parts read here)."""
    return {
        "run_id": "plan-x",
        "generated_at": "2026-11-20 23:22 UTC",
        "objectives": {"quality_floor": floor, "p95_latency_ms": 2000.0, "min_samples": 5},
        "workload": {
            "requests": requests,
            "types": [
                {"task_type": t, "requests": round(s * requests), "share": s, "cost_usd": 1.0}
                for t, s in mix.items()
            ],
        },
        "projection": {
            "cost_before_usd": cost[0],
            "cost_after_usd": cost[1],
            "savings_usd": cost[0] - cost[1],
            "savings_share": (cost[0] - cost[1]) / cost[0],
            "migrated_share": migrated,
            "quality": quality,
            "latency_p95_before_ms": 900.0,
            "latency_p95_after_ms": 300.0,
            "payback_months": 0.0,
            "verdict": "Suitable: move some traffic.",
            "suitability": "suitable",
            "types": [],
        },
        "routes": [
            {
                "task_type": t,
                "route": r,
                "kind": k,
                "fallbacks": ["production"],
                "quality_mean": q,
                "quality_low": None if q is None else q - 0.02,
                "latency_p95_ms": lat,
                "cost_per_1k_usd": c,
            }
            for t, r, k, q, lat, c in routes
        ],
        "risks": [],
    }


MIX_A = {"classification": 0.5, "summarization": 0.3, "chatbot": 0.2}
ROUTES_A: list[Route] = [
    ("classification", "edge-small-int4", "local", 0.98, 5.0, 0.0),
    ("summarization", "relay-deepseek", "relay", 0.95, 1500.0, 0.12),
    ("chatbot", "production", "production", 1.0, 850.0, 0.2),
]


def test_figures_from_metrics_reads_headline_mix_and_routes() -> None:
    figures = figures_from_metrics(make_metrics(mix=MIX_A, routes=ROUTES_A))
    assert figures.quality_floor == 0.9
    assert figures.task_mix == MIX_A
    assert figures.headline["requests"] == 1000
    assert figures.headline["cost_after_usd"] == 40.0
    assert figures.headline["savings_usd"] == 60.0
    assert figures.headline["verdict"] == "Suitable: move some traffic."
    assert [r.task_type for r in figures.routes] == ["chatbot", "classification", "summarization"]
    summ = figures.route("summarization")
    assert summ == RouteFigures("summarization", "relay-deepseek", "relay", 0.95, 1500.0, 0.12, 0.3)


def test_figures_from_metrics_names_the_bad_field() -> None:
    broken = make_metrics(mix=MIX_A, routes=ROUTES_A)
    del broken["projection"]
    with pytest.raises(FiguresError, match="field projection: missing"):
        figures_from_metrics(broken)
    broken = make_metrics(mix=MIX_A, routes=ROUTES_A)
    broken["routes"][1]["quality_mean"] = "high"
    with pytest.raises(FiguresError, match=r"routes\[1\]\.quality_mean: expected a number"):
        figures_from_metrics(broken)


def test_mix_drift_is_total_variation_distance() -> None:
    assert mix_drift(MIX_A, MIX_A) == 0.0
    assert mix_drift({"a": 1.0}, {"b": 1.0}) == 1.0
    # 0.5*(|.5-.3| + |.3-.3| + |.2-.4|) = 0.2
    assert mix_drift(MIX_A, {"classification": 0.3, "summarization": 0.3, "chatbot": 0.4}) == (
        pytest.approx(0.2)
    )
    # counts or shares: each mix is normalized first
    assert mix_drift({"a": 2.0, "b": 2.0}, {"a": 0.5, "b": 0.5}) == pytest.approx(0.0)


def two_runs() -> tuple[RunFigures, RunFigures]:
    a = figures_from_metrics(make_metrics(mix=MIX_A, routes=ROUTES_A))
    b = figures_from_metrics(
        make_metrics(
            mix={"classification": 0.3, "summarization": 0.3, "chatbot": 0.3, "code": 0.1},
            routes=[
                ("classification", "production", "production", 1.0, 700.0, 0.2),  # flipped back
                ("summarization", "relay-deepseek", "relay", 0.81, 1600.0, 0.12),  # below floor
                ("chatbot", "production", "production", 1.0, 860.0, 0.2),
                ("code", "production", "production", 1.0, 1200.0, 0.3),  # new type
            ],
            cost=(120.0, 90.0),
            quality=0.93,
            migrated=0.3,
        )
    )
    return a, b


def test_diff_runs_reports_flips_quality_mix_and_cost() -> None:
    a, b = two_runs()
    diff = diff_runs("run-a", a, "run-b", b)
    assert diff.drift == pytest.approx(0.5 * (0.2 + 0.0 + 0.1 + 0.1))
    assert [c.task_type for c in diff.flipped] == ["classification"]
    statuses = [(c.task_type, c.status) for c in diff.route_changes]
    assert statuses == [
        ("classification", "flipped"),
        ("code", "added"),
        ("chatbot", "same"),
        ("summarization", "same"),
    ]
    summ = next(c for c in diff.route_changes if c.task_type == "summarization")
    assert (summ.quality.a, summ.quality.b) == (0.95, 0.81)
    assert summ.quality.delta == pytest.approx(-0.14)
    assert summ.latency_p95_ms.delta == pytest.approx(100.0)
    assert diff.cost["savings_usd"].a == 60.0 and diff.cost["savings_usd"].b == 30.0
    assert diff.cost["cost_before_usd"].delta == pytest.approx(20.0)
    assert diff.headline["migrated_share"].b == 0.3
    assert diff.mix_changes[0].task_type == "classification"
    assert diff.mix_changes[0].delta == pytest.approx(-0.2)
    data = diff.to_dict()
    assert data["flipped"] == ["classification"]
    assert data["route_changes"][0]["route_a"] == "edge-small-int4"
    assert data["route_changes"][0]["route_b"] == "production"
    assert data["cost"]["savings_usd"]["delta"] == pytest.approx(-30.0)
