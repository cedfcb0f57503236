"""Population stability index on distributions built by hand."""

from __future__ import annotations

import math

import pytest

from classifiers import RunDistribution, compare_runs, psi, psi_terms, verdict


def test_identical_distributions_have_zero_psi() -> None:
    d = {"a": 0.5, "b": 0.3, "c": 0.2}
    assert psi(d, d) == 0.0


def test_psi_matches_the_formula() -> None:
    before = {"a": 0.5, "b": 0.5}
    after = {"a": 0.8, "b": 0.2}
    expected = (0.8 - 0.5) * math.log(0.8 / 0.5) + (0.2 - 0.5) * math.log(0.2 / 0.5)
    assert psi(before, after) == pytest.approx(expected)
    assert psi(before, after) == pytest.approx(0.4158883, rel=1e-6)
    terms = psi_terms(before, after)
    assert terms["a"] == pytest.approx(0.3 * math.log(1.6))


def test_a_type_that_appears_is_floored_not_infinite() -> None:
    value = psi({"a": 1.0}, {"a": 0.9, "new": 0.1})
    assert math.isfinite(value)
    assert value == pytest.approx((0.9 - 1.0) * math.log(0.9) + (0.1 - 1e-4) * math.log(0.1 / 1e-4))


@pytest.mark.parametrize(
    ("value", "label"), [(0.05, "stable"), (0.15, "moderate shift"), (0.4, "significant shift")]
)
def test_verdict_thresholds(value: float, label: str) -> None:
    assert verdict(value) == label


def test_compare_runs_reports_mix_and_confidence_per_type_and_overall() -> None:
    prev = RunDistribution(
        "r1",
        100,
        {"code": 50, "chatbot": 50},
        [0] * 9 + [100],
        {"code": [0] * 9 + [50], "chatbot": [0] * 9 + [50]},
        uncertain=0,
    )
    cur = RunDistribution(
        "r2",
        100,
        {"code": 80, "chatbot": 20},
        [0] * 4 + [20] + [0] * 4 + [80],
        {"code": [0] * 9 + [80], "chatbot": [0] * 4 + [20] + [0] * 5},
        uncertain=20,
    )
    out = compare_runs(prev, cur)
    assert out["previous_run"] == "r1" and out["current_run"] == "r2"
    assert out["mix_psi"] == pytest.approx(
        0.3 * math.log(0.8 / 0.5) + (-0.3) * math.log(0.2 / 0.5), abs=1e-4
    )
    assert out["mix_verdict"] == "significant shift"
    assert out["per_type"]["code"]["share_change"] == pytest.approx(0.3)
    assert out["per_type"]["code"]["confidence_psi"] == 0.0  # code stayed confident
    assert out["per_type"]["chatbot"]["confidence_psi"] > 1.0  # chatbot moved to mid confidence
    assert out["confidence_psi"] > 0.25
    assert out["uncertain_share_after"] == 0.2
    total_terms = sum(t["mix_psi_term"] for t in out["per_type"].values())
    assert total_terms == pytest.approx(out["mix_psi"], abs=1e-3)
