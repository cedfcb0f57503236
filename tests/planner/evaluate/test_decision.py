"""The routing decision on constructed evidence, stickiness, the floor sweep and the other views."""

from __future__ import annotations

from typing import Any

import pytest

from planner.errors import PlanError
from planner.evaluate.conversations import Turn, stickiness_impact, summarize_turns
from planner.evaluate.decision import Objectives, choose_route, decide, sweep_floors
from planner.evaluate.evidence import (
    UNCERTAIN,
    Candidate,
    DeviceFit,
    Evidence,
    Method,
    Observation,
    build_evidence,
)
from planner.evaluate.views import (
    Fitted,
    Tiers,
    compare_views,
    half_of,
    length_bucket,
    pick_tiers,
    static_tier,
)

OBJ = Objectives(quality_floor=0.95, p95_latency_ms=2000)
FITS = DeviceFit(fits=True, needed_mb=1500, headroom_mb=2500, est_tokens_per_s=20)


def ev(candidate: str, kind: str = "relay", task: str = "summarization", **kw: Any) -> Evidence:
    """Evidence with passing figures unless told otherwise."""
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
        "ttft_p50_ms": 100.0,
        "ttft_p95_ms": 200.0,
        "latency_p50_ms": 800.0,
        "latency_p95_ms": 1500.0,
        "tokens_per_s": 30.0,
        "cost_per_1k_usd": 0.0 if kind == "local" else 0.5,
        "peak_memory_mb": None,
        "fit": FITS if kind == "local" else None,
        "error_rate": 0.0,
        "errors": {},
        "scorers": {"rouge_l+token_f1": 50},
    }
    if kind == "production":
        base.update(
            quality_mean=1.0,
            quality_low=1.0,
            quality_high=1.0,
            cost_per_1k_usd=3.0,
            latency_p95_ms=2500.0,
        )
    base.update(kw)
    return Evidence(**base)


def test_a_model_just_under_the_floor_is_not_chosen() -> None:
    route = choose_route(
        "summarization",
        [
            ev("small", "local", quality_low=0.949),
            ev("relay", quality_low=0.951),
            ev("production", "production"),
        ],
        OBJ,
    )
    assert route.route == "relay"
    assert route.fallbacks == ("production",)
    (rejected,) = route.rejected
    assert rejected.candidate == "small"
    assert rejected.reasons == ("quality lower bound 0.949 below the floor 0.950",)


def test_a_model_that_does_not_fit_the_device_is_not_chosen() -> None:
    too_big = DeviceFit(fits=False, needed_mb=9000, headroom_mb=-1200, est_tokens_per_s=4)
    route = choose_route(
        "summarization", [ev("big", "local", quality_low=0.99, fit=too_big), ev("relay")], OBJ
    )
    assert route.route == "relay"
    assert "does not fit the device (needs 9000 MB, headroom -1200 MB)" in route.rejected[0].reasons
    # the formula fits (1500 of 4000 MB) but the replays measured more than the device has
    heavy = choose_route(
        "summarization",
        [ev("heavy", "local", peak_memory_mb=4100.0), ev("light", "local", peak_memory_mb=900.0)],
        OBJ,
    )
    assert heavy.route == "light"
    assert heavy.rejected[0].reasons == (
        "measured peak memory 4100 MB over the device's usable 4000 MB",
    )
    unknown = choose_route("summarization", [ev("big", "local", fit=None)], OBJ)
    assert unknown.route == "production"
    assert unknown.rejected[0].reasons == ("device fit unknown",)


def test_ties_go_to_the_cheaper_route() -> None:
    route = choose_route(
        "summarization", [ev("pricey", cost_per_1k_usd=0.9), ev("cheap", cost_per_1k_usd=0.2)], OBJ
    )
    assert route.route == "cheap"
    assert route.cost_per_1k_usd == 0.2
    # equal price (two local models): the smaller one; then the name keeps it stable
    small = DeviceFit(True, 800, 3000, 40)
    route = choose_route(
        "summarization", [ev("large", "local"), ev("tiny", "local", fit=small)], OBJ
    )
    assert route.route == "tiny"
    assert route.memory_guard_mb == 800
    # a better but dearer route does not beat a cheaper one that meets every objective
    route = choose_route(
        "summarization",
        [ev("best", quality_low=0.999, cost_per_1k_usd=0.6), ev("ok", cost_per_1k_usd=0.5)],
        OBJ,
    )
    assert route.route == "ok"


def test_latency_slo_and_sample_size_are_enforced() -> None:
    route = choose_route(
        "summarization", [ev("slow", latency_p95_ms=2100.0), ev("production", "production")], OBJ
    )
    assert route.route == "production"
    assert route.rejected[0].reasons == ("p95 latency 2100 ms over the SLO 2000 ms",)
    assert route.cost_per_1k_usd == 3.0 and route.latency_p95_ms == 2500.0
    cands = {
        "relay": Candidate("relay", "relay"),
        "production": Candidate("production", "production"),
    }
    rows = [
        Observation(f"r{i}", "summarization", c, 1.0, "rouge_l+token_f1", latency_ms=100.0,
                    prompt_tokens=10, completion_tokens=5, position=i)
        for i in range(8)
        for c in ("relay", "production")
    ]  # fmt: skip
    evidence = build_evidence(rows, cands, floor=0.5, method=Method(resamples=0), adaptive=False)
    few = choose_route("summarization", evidence, Objectives(0.5, 2000, min_samples=10))
    assert few.route == "production"
    assert few.rejected[0].reasons[0].startswith("not enough evidence: n = 8")
    assert "fewer than 10 measured" in few.rejected[0].reasons[0]
    assert few.reason.startswith("not enough evidence for relay")
    enough = choose_route("summarization", evidence, Objectives(0.5, 2000, min_samples=5))
    assert enough.route == "relay" and enough.samples_needed == 8


def test_fallback_chain_climbs_the_tiers() -> None:
    route = choose_route(
        "summarization",
        [
            ev("small", "local"),
            ev("large", "local", fit=DeviceFit(True, 3000, 900, 10)),
            ev("relay-b", cost_per_1k_usd=0.7),
            ev("relay-a"),
            ev("production", "production"),
        ],
        OBJ,
    )
    assert route.route == "small"
    assert route.kind == "local"
    assert route.fallbacks == ("relay-a", "production")  # one hop per higher tier, the cheapest
    assert route.memory_guard_mb == 1500
    assert "cheapest route" in route.reason


def test_uncertain_requests_go_to_production_unless_a_route_qualifies_on_their_stratum() -> None:
    evidence = [
        ev("small", "local", task="classification"),
        ev("relay", task="summarization"),
        ev("small", "local", task="summarization", quality_low=0.5),
    ]
    decision = decide(evidence, OBJ, ["classification", "summarization", "reasoning"])
    assert decision.route_map() == {
        "classification": "small",
        "reasoning": "production",
        "summarization": "relay",
    }
    assert decision.route_for("reasoning").reason == "no replays"  # type: ignore[union-attr]
    # every type moved, but nothing measured on the uncertain stratum: production takes them
    only_moved = decide(evidence[:2], OBJ)
    assert only_moved.uncertain_route == "production"
    assert only_moved.uncertain is not None and only_moved.uncertain.reason == "no replays"
    stratum = [
        ev("small", "local", task=UNCERTAIN, quality_low=0.6),
        ev("relay", task=UNCERTAIN, quality_low=0.97),
    ]
    measured = decide(evidence[:2] + stratum, OBJ)
    assert measured.uncertain_route == "relay"
    assert measured.uncertain_fallbacks == ("production",)
    assert UNCERTAIN not in measured.route_map()
    with pytest.raises(PlanError):
        decide([], OBJ)


def test_sweeping_the_floor_moves_more_traffic_as_it_drops() -> None:
    evidence = [
        ev("small", "local", task="classification", quality_low=0.97),
        ev("small", "local", task="summarization", quality_low=0.85),
        ev("relay", task="summarization", quality_low=0.93),
        ev("relay", task="code", quality_low=0.75),
    ]
    sweep = sweep_floors(evidence, OBJ, [0.7, 0.9, 1.0])
    assert [f for f, _ in sweep] == [0.7, 0.9, 0.95, 1.0]  # the configured floor is always in
    routes = {f: d.route_map() for f, d in sweep}
    assert routes[0.7] == {"classification": "small", "code": "relay", "summarization": "small"}
    assert routes[0.9] == {
        "classification": "small",
        "code": "production",
        "summarization": "relay",
    }
    assert routes[0.95] == {
        "classification": "small",
        "code": "production",
        "summarization": "production",
    }
    assert routes[1.0] == {
        "classification": "production",
        "code": "production",
        "summarization": "production",
    }


def test_stickiness_counts_later_turns_routed_elsewhere() -> None:
    decision = decide(
        [ev("small", "local", task="classification"), ev("relay", task="summarization")],
        OBJ,
        ["chatbot"],
    )
    turns = [
        Turn("c1", 0, "classification"),
        Turn("c1", 1, "summarization"),
        Turn("c1", 2, "classification"),
        Turn("c2", 0, "chatbot"),
        Turn("c2", 1, "summarization"),
        Turn("c3", 0, "summarization"),
        Turn("c3", 1, "summarization"),
        Turn("c4", 0, "classification"),
    ]
    s = stickiness_impact(summarize_turns(turns), decision)
    assert (s.requests, s.conversations, s.multi_turn_conversations, s.later_turns) == (8, 4, 3, 4)
    assert s.multi_turn_share == pytest.approx(7 / 8)
    # c1 turn 1 (summarization -> relay, stays on small: lower tier);
    # c2 turn 1 (relay -> production: higher tier)
    assert s.rerouted_turns == 2 and s.rerouted_share == pytest.approx(2 / 8)
    assert (s.to_lower_tier, s.to_higher_tier) == (1, 1)
    assert s.moves == (
        ("summarization", "relay", "production", 1),
        ("summarization", "relay", "small", 1),
    )


def observations() -> list[Observation]:
    """Four requests with production's reference and two candidates' scored replays."""
    out = []
    spec = [
        ("r1", "classification", 5),
        ("r2", "classification", 50),
        ("r3", "reasoning", 150),
        ("r4", "summarization", 60),
    ]
    quality = {"small": [1.0, 0.0, 0.0, 0.5], "relay": [1.0, 1.0, 0.9, 0.96]}
    for i, (rid, task, tokens) in enumerate(spec):
        out.append(
            Observation(
                rid,
                task,
                "production",
                1.0,
                "reference",
                latency_ms=900.0,
                cost_usd=0.004,
                reference_tokens=tokens,
            )
        )
        out.append(
            Observation(
                rid, task, "small", quality["small"][i], "s", latency_ms=300.0, cost_usd=0.0
            )
        )
        error = "timeout" if rid == "r4" else None
        out.append(
            Observation(
                rid,
                task,
                "relay",
                None if error else quality["relay"][i],
                "s",
                error_kind=error,
                latency_ms=500.0,
                cost_usd=9.9,  # as stored at replay time: the views price it now
                prompt_tokens=1000,
                completion_tokens=1000,
            )
        )
    return out


CANDS = {
    "small": Candidate("small", "local"),
    "relay": Candidate("relay", "relay", price_in=0.3, price_out=0.7),
    "production": Candidate("production", "production"),
}
TIERS = Tiers(small="small", large="relay", cloud="production")


def test_views_compare_plan_length_rule_and_static_tiers_on_the_same_requests() -> None:
    fitted = Fitted(
        {"classification": "small", "reasoning": "relay", "summarization": "production"}, TIERS
    )
    plan, by_length, static = compare_views(observations(), CANDS, lambda half: fitted)
    # outcomes by the similarity rule (>= 0.5 passes); production's own answer is a pass
    # plan: r1, r2 -> small (pass, fail); r3 -> relay (pass); r4 -> production (pass)
    assert plan.quality_mean == pytest.approx(3 / 4)
    assert plan.route_share == {"production": 0.25, "relay": 0.25, "small": 0.5}
    # relay priced now: (1000 x 0.3 + 1000 x 0.7) / 1e6 = $0.001; production as logged
    assert plan.cost_per_1k_usd == pytest.approx((0 + 0 + 0.001 + 0.004) / 4 * 1000)
    # by length: r1 (5) -> small pass; r2 (50), r4 (60) -> relay pass and failed; r3 (150) -> prod
    assert by_length.quality_mean == pytest.approx(3 / 4)
    assert by_length.route_share == {"production": 0.25, "relay": 0.5, "small": 0.25}
    assert "in advance" in by_length.needs and plan.needs == ""
    # static: classification simple -> small; summarization moderate -> relay (failed);
    # reasoning complex -> production
    assert static.quality_mean == pytest.approx(2 / 4)
    assert static.assignment == {"simple": "small", "moderate": "relay", "complex": "production"}
    assert plan.requests == by_length.requests == static.requests == 4


def test_views_are_cross_fitted() -> None:
    """Each half is scored by what the other half decided: here a half that holds r3 sends
    reasoning to the relay, the other keeps it on production."""
    assert (half_of("r3"), half_of("r1")) == (1, 0)
    seen: list[set[str]] = []

    def fit_half(half: list[Observation]) -> Fitted:  # type: ignore[type-arg]
        ids = {o.request_id for o in half}
        seen.append(ids)
        route = "relay" if "r3" in ids else "production"
        return Fitted({"reasoning": route, "classification": "small"}, TIERS)

    plan = compare_views(observations(), CANDS, fit_half)[0]  # type: ignore[arg-type]
    assert seen == [{"r1", "r2", "r4"}, {"r3"}]
    # r3 (half 1) is scored by half 0's choice: production, never the relay it was chosen on
    assert plan.route_share["production"] == pytest.approx(2 / 4)  # r3 and r4
    assert plan.assignment["reasoning"] == "relay"  # what half 1 chose (scored on half 0)


def test_tiers_skip_models_that_do_not_fit_and_pick_the_best_relay() -> None:
    cands = {
        "tiny": Candidate("tiny", "local"),
        "mid": Candidate("mid", "local"),
        "huge": Candidate("huge", "local"),
        "r1": Candidate("r1", "relay"),
        "r2": Candidate("r2", "relay"),
    }
    evidence = [ev("r1", quality_mean=0.8), ev("r2", quality_mean=0.9)]
    fits = {
        "tiny": DeviceFit(True, 500, 3000),
        "mid": DeviceFit(True, 2000, 1000),
        "huge": DeviceFit(False, 9000, -10),
    }
    assert pick_tiers(cands, evidence, fits) == Tiers(small="tiny", large="mid", cloud="r2")
    assert pick_tiers({"p": Candidate("p", "production")}, []) == Tiers(
        "production", "production", "production"
    )


def test_rule_of_thumb_buckets() -> None:
    assert [length_bucket(t) for t in (None, 0, 19, 20, 100, 101)] == [
        "short",
        "short",
        "short",
        "medium",
        "medium",
        "long",
    ]
    assert [static_tier(t) for t in ("classification", "rewrite", "code", "whatever")] == [
        "simple",
        "moderate",
        "complex",
        "complex",
    ]


def test_objectives_are_checked() -> None:
    with pytest.raises(PlanError, match="floor"):
        Objectives(quality_floor=0)
    with pytest.raises(PlanError, match="SLO"):
        Objectives(p95_latency_ms=-1)
