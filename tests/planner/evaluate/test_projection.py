"""Projection arithmetic on a constructed plan, the frontier, verdicts and the risks."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from planner.errors import PlanError
from planner.evaluate.conversations import Stickiness
from planner.evaluate.decision import Decision, Objectives, Route, decide, sweep_floors
from planner.evaluate.evidence import UNCERTAIN, Candidate, DeviceFit, Evidence
from planner.evaluate.projection import (
    Device,
    Traffic,
    TypeTraffic,
    frontier,
    project,
    request_cost,
    type_verdict,
    weighted_quantile,
)
from planner.evaluate.risks import assess_risks

OBJ = Objectives(quality_floor=0.95, p95_latency_ms=2000)
CANDS = {
    "small": Candidate("small", "local"),
    "relay": Candidate("relay", "relay", price_in=1.0, price_out=2.0, rpm=600),
    "production": Candidate("production", "production", price_in=2.0, price_out=8.0),
}
TRAFFIC = Traffic(
    period_days=10.0,
    types=(
        TypeTraffic(
            "classification",
            1000,
            200_000,
            20_000,
            10.0,
            uncertain=100,
            first_half=500,
            second_half=500,
        ),
        TypeTraffic("summarization", 500, 500_000, 100_000, 20.0, first_half=250, second_half=250),
        TypeTraffic("code", 200, 100_000, 60_000, 8.0, first_half=100, second_half=100),
    ),
)


def ev(candidate: str, kind: str, task: str, **kw: Any) -> Evidence:
    base: dict[str, Any] = {
        "task_type": task,
        "candidate": candidate,
        "kind": kind,
        "n": 50,
        "n_scored": 50,
        "n_unscored": 0,
        "n_not_sent": 0,
        "quality_mean": 0.98,
        "quality_low": 0.96,
        "quality_high": 0.99,
        "ttft_p50_ms": 50.0,
        "ttft_p95_ms": 80.0,
        "latency_p50_ms": 400.0,
        "latency_p95_ms": 500.0,
        "tokens_per_s": 25.0,
        "cost_per_1k_usd": 0.0 if kind == "local" else 1.0,
        "peak_memory_mb": None,
        "fit": DeviceFit(True, 1500, 2500, 20.0) if kind == "local" else None,
        "error_rate": 0.0,
        "errors": {},
        "scorers": {"s": 50},
        "latency_samples": (400.0, 500.0),
    }
    if kind == "production":
        base.update(
            quality_mean=1.0,
            quality_low=1.0,
            quality_high=1.0,
            latency_p95_ms=1000.0,
            latency_samples=(900.0, 1000.0),
        )
    base.update(kw)
    return Evidence(**base)


EVIDENCE = [
    ev(
        "small", "local", "classification", quality_mean=0.97, error_rate=0.1, errors={"runtime": 5}
    ),
    ev("relay", "relay", "classification"),
    ev("production", "production", "classification"),
    ev("small", "local", "summarization", quality_low=0.5, quality_mean=0.6),
    ev("relay", "relay", "summarization", quality_mean=0.96),
    ev("production", "production", "summarization"),
    ev("relay", "relay", "code", quality_low=0.7, quality_mean=0.8),
    ev("production", "production", "code"),
]


def plan() -> Decision:
    return decide(EVIDENCE, OBJ, [t.task_type for t in TRAFFIC.types])


def test_the_decision_used_below() -> None:
    d = plan()
    assert d.route_map() == {
        "classification": "small",
        "code": "production",
        "summarization": "relay",
    }
    assert d.route_for("classification").fallbacks == ("relay", "production")  # type: ignore[union-attr]
    assert d.uncertain_route == "production"


def test_request_cost_per_route() -> None:
    cls = TRAFFIC.types[0]
    assert request_cost("production", cls, CANDS) == pytest.approx(0.01)  # $10 / 1000 logged
    assert request_cost("relay", cls, CANDS) == pytest.approx((200 * 1.0 + 20 * 2.0) / 1e6)
    assert request_cost("small", cls, CANDS) == 0.0
    with pytest.raises(PlanError, match="'nope'"):
        request_cost("nope", cls, CANDS)


def test_monthly_cost_savings_payback_and_shares() -> None:
    proj = project(plan(), TRAFFIC, EVIDENCE, CANDS, migration_cost_usd=1000.0)
    assert proj.monthly_factor == pytest.approx(3.0)
    assert proj.monthly_requests == pytest.approx(1700 * 3)
    by = {t.task_type: t for t in proj.types}
    # one cost model: a relay request costs what its replays of that type cost at today's
    # prices (the evidence's $1.00 per 1k requests: $0.001), the figure the ranking used
    # classification: 900 local (10% fail over to the relay) + 100 uncertain on production
    assert by["classification"].cost_after_usd == pytest.approx(
        (900 * 0.1 * 0.001 + 100 * 0.01) * 3
    )
    assert by["classification"].cost_before_usd == pytest.approx(30.0)
    assert by["summarization"].cost_after_usd == pytest.approx(500 * 0.001 * 3)
    assert by["code"].cost_after_usd == pytest.approx(24.0) and by[
        "code"
    ].savings_usd == pytest.approx(0.0)
    assert proj.cost_before_usd == pytest.approx(114.0)
    after = (900 * 0.1 * 0.001 + 100 * 0.01 + 500 * 0.001 + 8.0) * 3
    assert proj.cost_after_usd == pytest.approx(after)
    assert proj.savings_usd == pytest.approx(114.0 - after)
    assert proj.savings_share == pytest.approx((114.0 - after) / 114.0)
    assert proj.payback_months == pytest.approx(1000.0 / (114.0 - after))
    assert proj.tier_share == pytest.approx(
        {"local": 900 / 1700, "relay": 500 / 1700, "production": 300 / 1700}
    )
    assert proj.migrated_share == pytest.approx(1400 / 1700)
    assert proj.cloud_calls_removed == pytest.approx(900 / 1700)
    assert proj.route_share == pytest.approx(
        {"production": 300 / 1700, "relay": 500 / 1700, "small": 900 / 1700}
    )
    # quality: classification 0.9 x 0.97 + 0.1 x 1.0; summarization 0.96; code 1.0;
    # weighted by requests
    q_cls = 0.9 * 0.97 + 0.1 * 1.0
    assert by["classification"].quality == pytest.approx(q_cls)
    assert proj.quality == pytest.approx((1000 * q_cls + 500 * 0.96 + 200 * 1.0) / 1700)
    assert proj.suitability == "suitable"
    assert proj.verdict.startswith("Suitable: move 82% of traffic")
    assert "paying back in" in proj.verdict


def test_latency_p95_is_the_traffic_weighted_mixture() -> None:
    proj = project(plan(), TRAFFIC, EVIDENCE, CANDS)
    # after: 1400 requests at 400/500 ms (local + relay), 300 at 900/1000 ms (production)
    values = [400.0, 500.0, 400.0, 500.0, 900.0, 1000.0, 900.0, 1000.0]
    weights = [450, 450, 250, 250, 50, 50, 100, 100]
    assert proj.latency_p95_after_ms == weighted_quantile(values, weights, 0.95) == 1000.0
    assert proj.latency_p95_before_ms == 1000.0
    assert weighted_quantile([1.0, 2.0, 3.0], [1, 1, 98], 0.5) == 3.0
    assert weighted_quantile([1.0, 2.0, 3.0], [98, 1, 1], 0.95) == 1.0
    assert weighted_quantile([], [], 0.5) is None


def test_energy_and_battery_on_the_device_tier() -> None:
    proj = project(
        plan(), TRAFFIC, EVIDENCE, CANDS, device=Device("phone", power_w=5.0, battery_wh=15.0)
    )
    cls = next(t for t in proj.types if t.task_type == "classification")
    # 20 output tokens per request at 20 tokens/s = 1 s at 5 W = 5 J
    assert cls.energy_wh_per_request == pytest.approx(5 / 3600)
    assert cls.battery_pct_per_100_requests == pytest.approx(5 / 3600 * 100 / 15 * 100)
    relay = next(t for t in proj.types if t.task_type == "summarization")
    assert relay.energy_wh_per_request is None


def test_stickiness_cost_and_no_payback_without_savings() -> None:
    sticky = Stickiness(
        100, 50, 10, 0.2, 50, 10, 0.1, 0, 10, moves=(("summarization", "relay", "production", 10),)
    )
    proj = project(plan(), TRAFFIC, EVIDENCE, CANDS, stickiness=sticky)
    alone = project(plan(), TRAFFIC, EVIDENCE, CANDS)
    assert proj.stickiness_cost_usd == pytest.approx(10 * (0.04 - 0.001) * 3)
    # the headline is the written config: the sticky turns' cost is in it
    assert proj.cost_after_usd == pytest.approx(alone.cost_after_usd + proj.stickiness_cost_usd)
    assert proj.sticky and not alone.sticky
    summ = next(t for t in proj.types if t.task_type == "summarization")
    assert summ.sticky_share == pytest.approx(10 / 500)
    assert summ.quality == pytest.approx((490 * 0.96 + 10 * 1.0) / 500)
    assert proj.payback_months == 0.0  # no migration cost
    everything_home = decide(
        [e for e in EVIDENCE if e.kind == "production"],
        OBJ,
        ["classification", "summarization", "code"],
    )
    home = project(everything_home, TRAFFIC, EVIDENCE, CANDS, migration_cost_usd=500)
    assert home.savings_usd == pytest.approx(0.0)
    assert home.payback_months is None
    assert home.suitability == "not suitable"
    assert home.verdict.startswith("Not suitable: no task type")
    with pytest.raises(PlanError, match="no logged traffic"):
        project(plan(), Traffic(1.0, ()), EVIDENCE, CANDS)


def test_sticky_turns_take_their_conversations_route_and_its_measured_quality() -> None:
    """Later turns re-routed by stickiness get the quality of (their own type, the sticky route)
    where that pair was measured, and are reported as unmeasured where it was not."""
    sticky = Stickiness(
        1700, 400, 200, 0.5, 300, 150, 0.09, 150, 0,
        moves=(("summarization", "relay", "small", 100), ("code", "production", "small", 50)),
    )  # fmt: skip
    proj = project(plan(), TRAFFIC, EVIDENCE, CANDS, stickiness=sticky)
    by = {t.task_type: t for t in proj.types}
    assert by["summarization"].quality == pytest.approx((400 * 0.96 + 100 * 0.6) / 500)
    assert by["summarization"].unmeasured_share == 0.0
    # (code, small) was never replayed: its 50 turns are unmeasured, never given a borrowed figure
    assert by["code"].unmeasured_share == pytest.approx(50 / 200)
    assert by["code"].quality == pytest.approx(1.0)  # the 150 measured requests, on production
    assert proj.unmeasured_share == pytest.approx(50 / 1700)
    assert by["code"].cost_after_usd == pytest.approx(150 * 0.04 * 3)  # 50 free local turns


def test_uncertain_traffic_uses_the_uncertain_strata_evidence() -> None:
    stratum = [
        ev("relay", "relay", UNCERTAIN, quality_mean=0.98, quality_low=0.96, cost_per_1k_usd=3.0)
    ]
    d = decide(EVIDENCE + stratum, OBJ, [t.task_type for t in TRAFFIC.types])
    assert d.uncertain_route == "relay"
    proj = project(d, TRAFFIC, EVIDENCE + stratum, CANDS)
    cls = next(t for t in proj.types if t.task_type == "classification")
    # 100 uncertain requests on the relay at the stratum's price and quality
    assert cls.cost_after_usd == pytest.approx((900 * 0.1 * 0.001 + 100 * 0.003) * 3)
    assert cls.quality == pytest.approx(0.9 * 0.97 + 0.1 * 0.98)


def test_verdict_per_type() -> None:
    routes = {r.task_type: r for r in plan().routes}
    assert type_verdict(routes["classification"]).startswith(
        "Suitable: move to small on the device"
    )
    assert "through the relay" in type_verdict(routes["summarization"])
    assert type_verdict(routes["code"]).startswith("Not suitable yet: stay on production")


def test_frontier_marks_the_chosen_floor_and_costs_rise_with_the_floor() -> None:
    types = [t.task_type for t in TRAFFIC.types]
    points = frontier(
        sweep_floors(EVIDENCE, OBJ, [0.5, 0.8, 1.0], types), TRAFFIC, EVIDENCE, CANDS, 0.95
    )
    assert [p.floor for p in points] == [0.5, 0.8, 0.95, 1.0]
    assert [p.chosen for p in points] == [False, False, True, False]
    costs = [p.monthly_cost_usd for p in points]
    assert costs == sorted(costs)
    assert points[-1].monthly_cost_usd == pytest.approx(114.0)  # everything on production
    assert points[-1].quality == pytest.approx(1.0) and points[-1].migrated_share == pytest.approx(
        0.0
    )
    assert points[0].migrated_share > points[2].migrated_share


def test_risks_are_drawn_from_the_data() -> None:
    tight = DeviceFit(True, 3000, 200, 20.0)
    evidence = [
        ev(
            "m-int4",
            "local",
            "classification",
            n=20,
            n_scored=20,
            quality_mean=0.96,
            quality_low=0.955,
            quality_high=1.0,
            fit=tight,
        ),
        ev(
            "m-int8",
            "local",
            "classification",
            quality_mean=0.99,
            fit=DeviceFit(False, 6000, -100, 10.0),
        ),
        ev(
            "relay",
            "relay",
            "summarization",
            quality_mean=0.955,
            quality_low=0.95,
            quality_high=1.0,
            error_rate=0.04,
            errors={"timeout": 2},
        ),
    ]
    cands = {
        "m-int4": Candidate("m-int4", "local"),
        "m-int8": Candidate("m-int8", "local"),
        "relay": Candidate("relay", "relay", rpm=1),
        "production": Candidate("production", "production"),
    }
    traffic = Traffic(
        3.0,
        (
            TypeTraffic(
                "classification",
                9000,
                10,
                10,
                1.0,
                uncertain=3000,
                first_half=2000,
                second_half=7000,
            ),
            TypeTraffic("summarization", 5000, 10, 10, 1.0, first_half=4000, second_half=1000),
        ),
    )
    d = decide(evidence, OBJ, ["classification", "summarization"])
    assert d.route_map() == {"classification": "m-int4", "summarization": "relay"}
    proj = project(d, traffic, evidence, cands)
    risks = assess_risks(
        d, evidence, traffic, cands, proj, previous_quality={"summarization": 0.99}
    )
    titles = {(r.title, r.level, r.task_type) for r in risks}
    assert ("Few samples", "medium", "classification") in titles
    assert ("Wide interval", "medium", "classification") in titles
    assert ("Little memory headroom", "high", "classification") in titles
    assert ("Quantization loss", "medium", "classification") in titles
    assert ("Task mix drift", "medium", "classification") in titles
    assert ("Quality drift", "high", "summarization") in titles
    assert ("Failures", "medium", "summarization") in titles
    assert ("Short logged period", "low", None) in titles
    assert ("Uncertain classifier", "medium", None) in titles
    assert ("Relay rate limit", "high", None) in titles
    assert [r.level for r in risks] == sorted(
        (r.level for r in risks), key=["high", "medium", "low"].index
    )
    quiet = assess_risks(
        plan(),
        EVIDENCE,
        replace(TRAFFIC, period_days=30.0),
        CANDS,
        project(plan(), TRAFFIC, EVIDENCE, CANDS),
    )
    assert {r.title for r in quiet} == {"Failures"}  # the local route fails 10% of the time


def test_route_without_evidence_is_projected_on_production() -> None:
    d = Decision(
        OBJ,
        (Route("classification", "production", "production", (), "r", 1.0, 1.0, None, None),),
        "production",
        (),
    )
    proj = project(d, TRAFFIC, [], CANDS)
    code = next(t for t in proj.types if t.task_type == "code")
    assert code.route == "production" and code.cost_after_usd == pytest.approx(code.cost_before_usd)
    assert proj.savings_usd == pytest.approx(0.0)
