"""Evidence per (task type, candidate) from constructed observations with known figures."""

from __future__ import annotations

import numpy as np
import pytest

from planner.errors import PlanError
from planner.evaluate.evidence import (
    Candidate,
    DeviceFit,
    Observation,
    bootstrap_interval,
    build_evidence,
    device_fit_from,
    percentile,
    summarize,
)

RELAY = Candidate("relay", "relay", price_in=1.0, price_out=2.0)
LOCAL = Candidate("small", "local")


def obs(i: int, candidate: str = "relay", quality: float | None = 1.0, **kw: object) -> Observation:
    base: dict[str, object] = {
        "request_id": f"r{i}",
        "task_type": "summarization",
        "candidate": candidate,
        "quality": quality,
        "scorer": "rouge_l+token_f1",
        "ttft_ms": 100.0 + i,
        "latency_ms": 1000.0 + 10 * i,
        "completion_tokens": 50,
        "cost_usd": 0.002,
    }
    base.update(kw)
    return Observation(**base)  # type: ignore[arg-type]


def test_bootstrap_interval_is_seeded_and_brackets_the_mean() -> None:
    rng = np.random.default_rng(7)
    values = list(rng.uniform(0.6, 1.0, size=40))
    first = bootstrap_interval(values, seed=3)
    assert first == bootstrap_interval(values, seed=3)
    assert first is not None
    low, high = first
    assert low < float(np.mean(values)) < high
    assert low >= 0.6 and high <= 1.0
    wide = bootstrap_interval(values[:8], seed=3)
    assert wide is not None and (wide[1] - wide[0]) > (high - low)
    assert bootstrap_interval([0.7]) == (0.7, 0.7)
    assert bootstrap_interval([1.0, 1.0, 1.0]) == (1.0, 1.0)
    assert bootstrap_interval([]) is None


def test_percentile_ignores_missing_values() -> None:
    assert percentile([None, 1.0, 2.0, 3.0, None], 50) == 2.0
    assert percentile([None], 95) is None


def test_summarize_counts_failures_as_zero_and_skips_never_sent() -> None:
    observations = [obs(i, quality=1.0) for i in range(8)]
    observations += [
        obs(8, quality=None, error_kind="timeout"),
        obs(9, quality=None, error_kind="timeout"),
    ]
    observations += [
        obs(10, quality=None, error_kind="budget"),
        obs(11, quality=None, error_kind="circuit_open"),
    ]
    observations.append(obs(12, quality=None))  # answered, not scored yet
    ev = summarize("summarization", RELAY, observations, floor=0.95)
    assert (ev.n, ev.n_scored, ev.n_unscored, ev.n_not_sent) == (11, 8, 1, 2)
    assert ev.quality_mean == pytest.approx(0.8)  # 8 x 1.0 and 2 failures x 0
    assert ev.share_at_floor == pytest.approx(0.8)
    assert ev.error_rate == pytest.approx(2 / 11)
    assert ev.errors == {"timeout": 2}
    assert ev.scorers == {"rouge_l+token_f1": 8}
    assert ev.quality_low is not None and ev.quality_high is not None
    assert ev.quality_low < 0.8 < ev.quality_high
    # latency figures from the answered replays only (r0..r7 and r12)
    answered = [1000.0 + 10 * i for i in [*range(8), 12]]
    assert ev.latency_p50_ms == pytest.approx(float(np.percentile(answered, 50)))
    assert ev.latency_p95_ms == pytest.approx(float(np.percentile(answered, 95)))
    assert ev.cost_per_1k_usd == pytest.approx(2.0)
    assert sorted(ev.latency_samples) == answered


def test_local_cost_is_zero_and_tokens_per_second_derived() -> None:
    observations = [
        obs(
            i,
            candidate="small",
            quality=0.9,
            cost_usd=None,
            ttft_ms=200.0,
            latency_ms=2200.0,
            peak_rss_mb=900.0 + i,
        )
        for i in range(5)
    ]
    fit = DeviceFit(fits=True, needed_mb=1200, headroom_mb=2000, est_tokens_per_s=30)
    ev = summarize("summarization", LOCAL, observations, floor=0.95, fit=fit)
    assert ev.cost_per_1k_usd == 0.0
    assert ev.tokens_per_s == pytest.approx(25.0)  # 50 tokens in 2.0 s after the first token
    assert ev.peak_memory_mb == 904.0
    assert ev.share_at_floor == 0.0
    assert ev.fit == fit
    assert ev.summary()["fit"] == {
        "fits": True,
        "needed_mb": 1200,
        "headroom_mb": 2000,
        "est_tokens_per_s": 30,
    }


def test_build_evidence_groups_and_checks_candidates() -> None:
    observations = [obs(i) for i in range(3)] + [
        obs(i, candidate="small", quality=0.5) for i in range(3)
    ]
    observations += [obs(9, task_type="code")]
    fits = {
        "small": {"fits": False, "needed_mb": 9000, "headroom_mb": -100, "est_tokens_per_s": None}
    }
    evidence = build_evidence(observations, {"relay": RELAY, "small": LOCAL}, floor=0.9, fits=fits)
    keys = [(e.task_type, e.candidate, e.n) for e in evidence]
    assert keys == [
        ("code", "relay", 1),
        ("summarization", "relay", 3),
        ("summarization", "small", 3),
    ]
    small = evidence[2]
    assert small.fit is not None and small.fit.fits is False and small.fit.needed_mb == 9000
    assert evidence[1].fit is None  # relays have no device fit
    with pytest.raises(PlanError, match="'ghost'"):
        build_evidence([obs(1, candidate="ghost")], {"relay": RELAY}, floor=0.9)


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
