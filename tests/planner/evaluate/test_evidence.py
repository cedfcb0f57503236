"""Evidence per (task type, candidate) from constructed observations with known figures."""

from __future__ import annotations

import numpy as np
import pytest

from planner.errors import PlanError
from planner.evaluate.evidence import (
    UNCERTAIN,
    Candidate,
    DeviceFit,
    Method,
    Observation,
    build_evidence,
    device_fit_from,
    percentile,
    summarize,
)
from planner.evaluate.intervals import cp_lower
from planner.evaluate.verdict import Ceiling

RELAY = Candidate("relay", "relay", price_in=1.0, price_out=2.0, timeout_s=30.0)
LOCAL = Candidate("small", "local", timeout_s=20.0)
PROD = Candidate("production", "production")
QUICK = Method(resamples=0)


def obs(i: int, candidate: str = "relay", quality: float | None = 1.0, **kw: object) -> Observation:
    base: dict[str, object] = {
        "request_id": f"r{i}",
        "task_type": "summarization",
        "candidate": candidate,
        "quality": quality,
        "scorer": "rouge_l+token_f1",
        "ttft_ms": 100.0 + i,
        "latency_ms": 1000.0 + 10 * i,
        "prompt_tokens": 400,
        "completion_tokens": 50,
        "cost_usd": 0.002,
        "position": i,
    }
    base.update(kw)
    return Observation(**base)  # type: ignore[arg-type]


def test_percentile_ignores_missing_values() -> None:
    assert percentile([None, 1.0, 2.0, 3.0, None], 50) == 2.0
    assert percentile([None], 95) is None


def test_summarize_counts_failures_as_fails_at_their_timeout_and_skips_never_sent() -> None:
    observations = [obs(i, quality=1.0) for i in range(8)]
    observations += [
        obs(8, quality=None, error_kind="timeout", latency_ms=None),
        obs(9, quality=None, error_kind="timeout", latency_ms=None),
    ]
    observations += [
        obs(10, quality=None, error_kind="budget"),
        obs(11, quality=None, error_kind="circuit_open"),
    ]
    observations.append(obs(12, quality=None))  # answered, not scored yet
    ev = summarize("summarization", RELAY, observations, floor=0.5, method=Method(), size=13)
    assert (ev.n, ev.n_scored, ev.n_unscored, ev.n_not_sent) == (11, 8, 1, 2)
    assert ev.outcomes == {"pass": 8, "tie": 0, "fail": 2}
    assert ev.pass_rate == pytest.approx(0.8)
    assert ev.score_mean == pytest.approx(0.8)  # 8 x 1.0 and 2 failures x 0
    assert ev.score_method == "BCa bootstrap, 9,999 resamples"
    assert ev.score_low is not None and ev.score_high is not None
    assert ev.score_low < 0.8 < ev.score_high
    assert ev.error_rate == pytest.approx(2 / 11)
    assert ev.errors == {"timeout": 2}
    assert ev.scorers == {"rouge_l+token_f1": 8}
    # latency: the answered replays (r0..r7, r12) and each failure at the 30-s timeout
    answered = [1000.0 + 10 * i for i in [*range(8), 12]] + [30000.0, 30000.0]
    assert ev.latency_p95_ms == pytest.approx(float(np.percentile(answered, 95)))
    assert ev.latency_p95_ms > 20000  # two timeouts in eleven: p95 is a timeout
    assert sorted(ev.latency_samples) == sorted(answered)
    # priced now, from the candidate's prices and the replay's own tokens: (400 x 1 + 50 x 2)/1e6
    assert ev.cost_per_1k_usd == pytest.approx(0.5)
    # the verdict read the 10 measured outcomes (8 passes) in sample order
    assert ev.verdict is not None and ev.verdict.n == 10 and ev.verdict.passes == 8


def test_price_edit_changes_the_cost_not_the_stored_one() -> None:
    observations = [obs(i, cost_usd=99.0) for i in range(5)]  # the stored cost is ignored
    dear = Candidate("relay", "relay", price_in=10.0, price_out=20.0)
    assert summarize("s", RELAY, observations, floor=0.5, method=QUICK).cost_per_1k_usd == (
        pytest.approx(0.5)
    )
    assert summarize("s", dear, observations, floor=0.5, method=QUICK).cost_per_1k_usd == (
        pytest.approx(5.0)
    )


def test_local_latency_is_on_the_device_with_the_host_figure_beside() -> None:
    observations = [
        obs(i, candidate="small", quality=0.9, cost_usd=None, ttft_ms=200.0, latency_ms=2200.0,
            peak_rss_mb=900.0 + i)
        for i in range(5)
    ]  # fmt: skip
    fit = DeviceFit(True, 1200, 2000, 30, latency_factor=2.5, latency_basis="host x 2.50")
    ev = summarize("summarization", LOCAL, observations, floor=0.95, fit=fit, method=QUICK)
    assert ev.cost_per_1k_usd == 0.0
    assert ev.host_latency_p95_ms == pytest.approx(2200.0)
    assert ev.latency_p95_ms == pytest.approx(5500.0)  # the device tier is 2.5x slower
    assert ev.ttft_p95_ms == pytest.approx(500.0)
    assert ev.latency_basis == "host x 2.50"
    assert ev.tokens_per_s == pytest.approx(25.0)  # 50 tokens in 2.0 s after the first token
    assert ev.peak_memory_mb == 904.0
    assert ev.summary()["fit"]["latency_factor"] == 2.5
    no_factor = summarize("summarization", LOCAL, observations, floor=0.95, method=QUICK)
    assert no_factor.latency_p95_ms == pytest.approx(2200.0)
    assert no_factor.latency_basis == "measured"


def test_quality_is_the_pass_rate_relative_to_the_ceiling() -> None:
    observations = [obs(i, quality=0.6 if i % 2 else 0.3) for i in range(40)]
    ceiling = Ceiling("summarization", "measured", 0.8, pairs=30, rate=0.7, upper=0.8)
    ev = summarize("summarization", RELAY, observations, floor=0.9, ceiling=ceiling, method=QUICK)
    assert ev.pass_rate == pytest.approx(0.5)
    assert ev.quality_mean == pytest.approx(0.5 / 0.8)
    assert ev.verdict is not None and ev.verdict.required == pytest.approx(0.9 * 0.8)
    assert "half to the ceiling's bound" in ev.bound_method
    assert ev.quality_low == pytest.approx(ev.verdict.lower / 0.8)


def test_build_evidence_groups_strata_and_checks_candidates() -> None:
    observations = [obs(i) for i in range(3)] + [
        obs(i, candidate="small", quality=0.5) for i in range(3)
    ]
    observations += [obs(i, candidate="production", scorer="reference") for i in range(3)]
    observations += [obs(9, task_type="code", position=0)]
    observations += [obs(20 + i, stratum="uncertain", position=i) for i in range(4)]
    fits = {
        "small": {"fits": False, "needed_mb": 9000, "headroom_mb": -100, "est_tokens_per_s": None}
    }
    evidence = build_evidence(
        observations,
        {"relay": RELAY, "small": LOCAL, "production": PROD},
        floor=0.9,
        fits=fits,
        method=QUICK,
    )
    keys = [(e.task_type, e.candidate, e.n) for e in evidence]
    assert keys == [
        (UNCERTAIN, "relay", 4),
        ("code", "relay", 1),
        ("summarization", "production", 3),
        ("summarization", "relay", 3),
        ("summarization", "small", 3),
    ]
    small = evidence[-1]
    assert small.fit is not None and small.fit.fits is False and small.fit.needed_mb == 9000
    assert evidence[3].fit is None  # relays have no device fit
    # two candidates tried on summarization: each gets half the type's alpha per look
    relay = evidence[3]
    assert relay.passes is not None and relay.passes.alpha_look == pytest.approx(0.05 / 2)
    assert evidence[2].quality_mean == 1.0 and evidence[2].quality_low is None  # the reference
    with pytest.raises(PlanError, match="'ghost'"):
        build_evidence([obs(1, candidate="ghost")], {"relay": RELAY}, floor=0.9)


def test_more_evidence_gives_a_tighter_bound() -> None:
    cands = {"relay": RELAY, "production": PROD}
    for n, expected in ((5, cp_lower(5, 5, 0.05)), (50, cp_lower(50, 50, 0.05))):
        rows = [obs(i) for i in range(n)] + [
            obs(i, candidate="production", scorer="reference") for i in range(n)
        ]
        (_, relay) = build_evidence(rows, cands, floor=0.9, method=QUICK, adaptive=False)
        assert relay.quality_low == pytest.approx(expected)


def test_device_fit_from_names_the_candidate_on_bad_input() -> None:
    assert device_fit_from("m", {"fits": 1, "needed_mb": "10", "headroom_mb": 5}) == DeviceFit(
        True, 10.0, 5.0, None
    )
    with pytest.raises(PlanError, match=r"candidate 'm'.*needed_mb"):
        device_fit_from("m", {"fits": True, "headroom_mb": 5})


def test_candidate_kind_is_checked() -> None:
    with pytest.raises(PlanError, match="kind"):
        Candidate("x", "cloud")  # type: ignore[arg-type]
    assert RELAY.cost_usd(1_000_000, 500_000) == pytest.approx(2.0)
    assert LOCAL.cost_usd(1_000_000, 500_000) == 0.0
