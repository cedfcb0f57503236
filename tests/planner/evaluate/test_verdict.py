"""The verdict's statistics where the truth is known: exact bounds, their coverage, the sequential
rule's false "migrate" rate, production's ceiling, the BCa interval and the pass rules."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from planner.evaluate.decision import Objectives, decide
from planner.evaluate.evidence import Candidate, Method, Observation, build_evidence
from planner.evaluate.intervals import cp_lower, cp_upper, credit_bounds, mean_interval
from planner.evaluate.verdict import (
    Budget,
    PassEvidence,
    PassRules,
    judge_ceiling,
    looks,
    measure_ceiling,
    outcome_of,
    sequential_verdict,
    simulate_sequential,
)

RULES = PassRules()
ALPHA = 0.05


def test_bounds_are_scipys_exact_binomial_interval() -> None:
    for k, n in [(0, 5), (3, 5), (5, 5), (49, 50), (380, 400)]:
        two_sided = stats.binomtest(k, n).proportion_ci(1 - 2 * ALPHA, method="exact")
        assert cp_lower(k, n, ALPHA) == pytest.approx(two_sided.low, abs=1e-12)
        assert cp_upper(k, n, ALPHA) == pytest.approx(two_sided.high, abs=1e-12)
    assert cp_lower(5, 5, ALPHA) == pytest.approx(ALPHA ** (1 / 5))  # 0.549, not 1.000


def test_five_of_five_no_longer_beats_49_of_50() -> None:
    """The old bootstrap gave 5/5 the bound 1.000 (a point) and 49/50 0.940: the rule rewarded
    less evidence. The cheaper candidate with 5/5 now loses to the one with 49/50."""
    assert cp_lower(5, 5, ALPHA) < cp_lower(49, 50, ALPHA)
    cands = {
        "cheap": Candidate("cheap", "relay", price_in=0.1, price_out=0.1),
        "dear": Candidate("dear", "relay", price_in=1.0, price_out=1.0),
        "production": Candidate("production", "production"),
    }
    obs = [
        Observation(f"r{i}", "reasoning", "production", 1.0, "reference", position=i)
        for i in range(50)
    ]
    obs += [
        Observation(f"r{i}", "reasoning", "cheap", 1.0, "final_answer", latency_ms=100.0,
                    prompt_tokens=10, completion_tokens=10, position=i)
        for i in range(5)
    ]  # fmt: skip
    obs += [
        Observation(f"r{i}", "reasoning", "dear", 0.0 if i == 7 else 1.0, "final_answer",
                    latency_ms=100.0, prompt_tokens=10, completion_tokens=10, position=i)
        for i in range(50)
    ]  # fmt: skip
    objectives = Objectives(quality_floor=0.85, p95_latency_ms=1000, min_samples=5)
    evidence = build_evidence(
        obs, cands, floor=0.85, min_samples=5, adaptive=False, method=Method(resamples=0)
    )
    route = decide(evidence, objectives).route_for("reasoning")
    assert route is not None and route.route == "dear"
    assert route.samples_needed == 50
    (rejected,) = route.rejected
    assert rejected.candidate == "cheap" and "not enough evidence" in rejected.reasons[0]


@pytest.mark.parametrize("n", [5, 12, 30, 100, 400])
@pytest.mark.parametrize("p", [0.5, 0.8, 0.95, 0.99])
def test_lower_bound_covers_the_true_rate(n: int, p: float) -> None:
    """2,000 simulated Bernoulli(p) samples of size n: the 95% lower bound is below p in at
    least 95% of them. Exactly (over the binomial distribution) it is at least 95%; the
    simulated share may fall below by Monte Carlo noise (one standard error with 2,000 draws is
    0.0049; where the exact coverage is 0.9506, half of all seeds land under 0.95), so it is
    held to 95% less three standard errors."""
    rng = np.random.default_rng(n * 1000 + int(p * 100))
    k = rng.binomial(n, p, size=2000)
    simulated = float(np.mean(cp_lower(k, n, ALPHA) < p))
    assert simulated >= 0.95 - 3 * np.sqrt(0.95 * 0.05 / 2000)
    support = np.arange(n + 1)
    exact = float(stats.binom.pmf(support, n, p)[cp_lower(support, n, ALPHA) < p].sum())
    assert exact >= 0.95


@pytest.mark.parametrize(("p_win", "p_tie"), [(0.2, 0.6), (0.45, 0.1), (0.0, 1.0), (0.3, 0.3)])
def test_bound_with_ties_covers_the_true_credit(p_win: float, p_tie: float) -> None:
    """Judged outcomes: win, tie (half a pass) or loss. The mixed bound covers the true credit."""
    rng = np.random.default_rng(7)
    truth = p_win + 0.5 * p_tie
    for n in (12, 30, 100):
        u = rng.random((4000, n))
        wins, not_worse = (u < p_win).sum(1), (u < p_win + p_tie).sum(1)
        lower, upper = credit_bounds(wins, not_worse, n, ALPHA, 0.5, True)
        assert np.mean(lower <= truth) >= 0.95 and np.mean(upper >= truth) >= 0.95


def test_all_ties_can_qualify_against_the_judge_ceiling() -> None:
    """A candidate the judge always ties with production is as good as production: its credit
    is 0.5, the judged types' ceiling, and it qualifies once the sample is large enough."""
    ceiling = judge_ceiling("chatbot", RULES)
    assert ceiling.value == 0.5
    assert judge_ceiling("chatbot", PassRules(tie_credit=1.0)).value == 1.0
    qualified, used = simulate_sequential(
        0.0, p_tie=1.0, required=0.9 * 0.5, cap=80, alpha_look=ALPHA / 4, draws=50, seed=1
    )
    assert qualified.all() and set(used) == {80}
    never, _ = simulate_sequential(
        0.0, p_tie=1.0, required=0.9 * 0.5, cap=20, alpha_look=ALPHA / 2, draws=50, seed=1
    )
    assert not never.any()


def test_sequential_rule_false_migrate_is_at_most_alpha() -> None:
    """True pass rate just below what is required: the rule with alpha split over its looks
    migrates at most 5% of the time; the same looks each at the full alpha would not hold."""
    for cap, required in ((50, 0.9), (200, 0.95), (400, 0.95)):
        k = len(looks(cap))
        qualified, _ = simulate_sequential(
            required - 0.005, required=required, cap=cap, alpha_look=ALPHA / k, draws=4000,
            seed=cap,
        )  # fmt: skip
        assert qualified.mean() <= ALPHA
    naive, _ = simulate_sequential(
        0.945, required=0.95, cap=400, alpha_look=ALPHA, draws=4000, seed=3
    )
    split, _ = simulate_sequential(
        0.945, required=0.95, cap=400, alpha_look=ALPHA / len(looks(400)), draws=4000, seed=3
    )
    assert naive.mean() > split.mean()


def test_sequential_rule_stops_early_when_the_answer_is_clear() -> None:
    good, used_good = simulate_sequential(
        1.0, required=0.95, cap=200, alpha_look=ALPHA / 6, draws=200, seed=1
    )
    assert good.all() and set(used_good) == {160}  # 0.0083 ** (1/160) = 0.970 >= 0.95
    bad, used_bad = simulate_sequential(
        0.8, required=0.95, cap=200, alpha_look=ALPHA / 6, draws=2000, seed=2
    )
    assert not bad.any()  # a relay right 80% of the time never takes a 0.95 type
    assert np.mean(used_bad) < 40


def _evidence(outcomes: list[str | None], cap: int, required: float, k: int) -> PassEvidence:
    return PassEvidence(tuple(outcomes), cap, required, ALPHA / k, looks(cap), 10)  # type: ignore[arg-type]


def test_verdict_states_and_the_look_they_stop_at() -> None:
    always = _evidence(["pass"] * 200, 200, 0.95, 6)
    verdict = sequential_verdict(always)
    assert (verdict.state, verdict.n) == ("qualifies", 160)
    assert [lk.n for lk in verdict.looks] == [10, 20, 40, 80, 160]
    five = sequential_verdict(_evidence(["pass"] * 5, 5, 0.95, 1))
    assert five.state == "undecided" and five.stopped and "fewer than 10" in five.reason
    poor = sequential_verdict(_evidence((["pass"] * 4 + ["fail"]) * 40, 200, 0.95, 6))
    assert poor.state == "below" and poor.n == 20  # 16/20: out of reach, and under 0.95 so far
    awful = sequential_verdict(_evidence(["fail"] * 10, 200, 0.95, 6))
    assert awful.state == "below" and awful.n == 10 and "upper bound" in awful.reason
    # undecided midway: more samples may still decide, so sampling goes on
    half = sequential_verdict(_evidence(["pass"] * 20 + [None] * 180, 200, 0.95, 6))
    assert half.state == "undecided" and not half.stopped and half.n == 20
    # out of reach within the cap with a record at the required rate: undecided, sampling stops
    tight = sequential_verdict(_evidence(["pass"] * 50, 50, 0.95, 4))
    assert tight.state == "undecided" and tight.stopped and "cap of 50 is too small" in tight.reason
    assert tight.n == 10  # known at the first look: no need to replay the other 40
    ties = PassEvidence(("tie",) * 27, 27, 0.45, ALPHA / 18, looks(27), 10, 0.5, True)
    all_ties = sequential_verdict(ties)  # as good as production, but 27 cannot show it
    assert all_ties.state == "undecided" and "too small" in all_ties.reason
    assert sequential_verdict(_evidence([None] * 10, 10, 0.9, 1)).state == "no data"


def test_budget_splits_alpha_over_ceiling_candidates_and_looks() -> None:
    assert Budget(0.05, 1, 1, 0.0).per_look == pytest.approx(0.05)
    assert Budget(0.05, 6, 4, 0.5).per_look == pytest.approx(0.05 / 2 / 6 / 4)
    assert Budget(0.05, 6, 4, 0.5).ceiling_alpha == pytest.approx(0.025)
    assert "Clopper–Pearson one-sided" in Budget(0.05, 2, 3, 0.0).describe()
    assert looks(50) == (10, 20, 40, 50) and looks(200)[-2:] == (160, 200) and looks(5) == (5,)


def test_bca_interval_is_scipys_and_takes_no_shortcut() -> None:
    rng = np.random.default_rng(5)
    scores = list(rng.uniform(0.3, 1.0, size=40))
    got = mean_interval(scores, seed=3)
    direct = stats.bootstrap(
        (np.asarray(scores),), np.mean, n_resamples=9999, method="BCa",
        rng=np.random.default_rng(3),
    ).confidence_interval  # fmt: skip
    assert (got.low, got.high) == pytest.approx((direct.low, direct.high))
    assert got.method == "BCa bootstrap, 9,999 resamples"
    assert got.low is not None and got.high is not None and got.low < np.mean(scores) < got.high
    same = mean_interval([1.0] * 5)
    assert (same.mean, same.low, same.high) == (1.0, None, None)  # never a point interval
    assert same.note is not None and "all 5 scores equal" in same.note


def test_pass_rules_per_scorer() -> None:
    assert outcome_of("label_match", 1.0, RULES) == "pass"
    assert outcome_of("final_answer", 0.0, RULES) == "fail"
    assert outcome_of("json_field_f1", 0.99, RULES) == "fail"  # exact scorers need a match
    assert outcome_of("rouge_l+token_f1", 0.5, RULES) == "pass"
    assert outcome_of("rouge_l+token_f1", 0.49, RULES) == "fail"
    assert outcome_of("code: python ast + similarity", 0.65, RULES) == "pass"
    assert outcome_of("code: python ast + similarity", 0.60, RULES) == "fail"
    assert outcome_of("judge:j both orders", 1.0, RULES) == "pass"
    assert outcome_of("judge:j both orders", 0.5, RULES) == "tie"
    assert outcome_of("judge:j both orders", 0.75, RULES) == "tie"
    assert outcome_of("judge:j both orders", 0.0, RULES) == "fail"
    assert outcome_of("similarity (judge reply unusable)", 1.0, RULES) is None
    assert PassRules(tie_credit=1.0).credit("tie") == 1.0
    with pytest.raises(ValueError):
        PassRules(similarity_pass=1.5)


def test_production_ceiling_from_repeat_pairs() -> None:
    pairs = [("rouge_l+token_f1", 0.8, "exact repeats")] * 14 + [
        ("rouge_l+token_f1", 0.2, "exact repeats")
    ] * 6
    ceiling = measure_ceiling("summarization", pairs, RULES, alpha=0.025)
    assert ceiling.measured and ceiling.pairs == 20 and ceiling.rate == pytest.approx(0.7)
    assert ceiling.value == pytest.approx(cp_upper(14, 20, 0.025))  # conservative: its upper bound
    assert ceiling.sources == {"exact repeats": 20}
    few = measure_ceiling("summarization", pairs[:5], RULES, alpha=0.025)
    assert (few.method, few.value) == ("not measured", 1.0)
