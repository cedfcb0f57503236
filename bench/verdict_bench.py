"""The verdict's statistics, simulated where the truth is known (seeded, vectorised numpy).

1. Coverage of the 95% lower bound (Clopper–Pearson one-sided): for n in {5, 12, 30, 100, 400}
   and p in {0.5, 0.8, 0.95, 0.99}, the share of 2,000 Bernoulli(p) samples whose bound is below
   p (simulated), beside the exact share over the binomial distribution (the goal: >= 95%).
2. False "migrate" of the sequential rule: a true pass rate just below what is required, the
   rule with alpha split over its looks (and the same looks each at the full alpha, to show why
   the split is needed), for several caps and floors (goal: <= 5%).
3. Adaptive against fixed sampling on a simulated mix of (task type, candidate) pairs like a
   real plan's (many clearly poor, some perfect, some good, a few borderline): every pair
   replayed to the cap and decided once, against rounds that stop a pair once decided. Replays
   needed (adaptive / fixed, goal <= 0.5) and how often the two reach the same decision.

Run: ``make bench BENCH_ARGS=verdict`` (or ``.venv/bin/python -m bench.verdict_bench``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

from planner.evaluate.intervals import cp_lower
from planner.evaluate.verdict import looks, simulate_sequential

ALPHA = 0.05
SIZES = (5, 12, 30, 100, 400)
RATES = (0.5, 0.8, 0.95, 0.99)


def coverage(draws: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    rows = []
    for n in SIZES:
        support = np.arange(n + 1)
        below = cp_lower(support, n, ALPHA)
        for p in RATES:
            k = rng.binomial(n, p, size=draws)
            simulated = float(np.mean(cp_lower(k, n, ALPHA) < p))
            exact = float(stats.binom.pmf(support, n, p)[below < p].sum())
            rows.append({"n": n, "p": p, "simulated": simulated, "exact": exact})
    return rows


def false_migrate(draws: int = 20000, seed: int = 1) -> list[dict[str, Any]]:
    rows = []
    for cap, required in ((50, 0.9), (80, 0.9), (200, 0.95), (400, 0.95), (400, 0.99)):
        k = len(looks(cap))
        for gap in (0.005, 0.02):
            p = required - gap
            split, _ = simulate_sequential(
                p, required=required, cap=cap, alpha_look=ALPHA / k, draws=draws, seed=seed
            )
            naive, _ = simulate_sequential(
                p, required=required, cap=cap, alpha_look=ALPHA, draws=draws, seed=seed
            )
            rows.append(
                {
                    "cap": cap,
                    "required": required,
                    "true_rate": round(p, 4),
                    "looks": k,
                    "split": float(split.mean()),
                    "naive": float(naive.mean()),
                }
            )
    return rows


def _mix(pairs: int, rng: np.random.Generator) -> np.ndarray:
    """True pass rates of a plan's pairs: 40% clearly poor, 15% middling, 25% perfect,
    15% good, 5% borderline."""
    kind = rng.choice(5, size=pairs, p=[0.40, 0.15, 0.25, 0.15, 0.05])
    return np.select(
        [kind == 0, kind == 1, kind == 2, kind == 3],
        [
            rng.uniform(0.0, 0.6, pairs),
            rng.uniform(0.6, 0.85, pairs),
            np.ones(pairs),
            rng.uniform(0.985, 1.0, pairs),
        ],
        rng.uniform(0.88, 0.95, pairs),
    )


def adaptive_vs_fixed(
    *, floor: float, cap: int, candidates: int = 6, types: int = 11, mixes: int = 40, seed: int = 2
) -> dict[str, Any]:
    """Replays and decisions of the rounds against one fixed sample at the cap."""
    rng = np.random.default_rng(seed)
    schedule = looks(cap)
    alpha_adaptive = ALPHA / candidates / len(schedule)
    alpha_fixed = ALPHA / candidates
    used_adaptive = used_fixed = 0
    same = total = 0
    qualified_a = qualified_f = 0
    for _ in range(mixes):
        for p in _mix(candidates * types, rng):
            q, used = simulate_sequential(
                float(p), required=floor, cap=cap, alpha_look=alpha_adaptive, draws=1,
                seed=int(rng.integers(1 << 31)), min_samples=10,
            )  # fmt: skip
            outcomes = np.random.default_rng(int(rng.integers(1 << 31))).random(cap) < p
            fixed = bool(cp_lower(outcomes.sum(), cap, alpha_fixed) >= floor)
            used_adaptive += int(used[0])
            used_fixed += cap
            same += int(bool(q[0]) == fixed)
            qualified_a += int(q[0])
            qualified_f += int(fixed)
            total += 1
    return {
        "floor": floor,
        "cap": cap,
        "pairs": total,
        "replays_adaptive": used_adaptive,
        "replays_fixed": used_fixed,
        "ratio": round(used_adaptive / used_fixed, 3),
        "same_decision": round(same / total, 4),
        "qualified_adaptive": qualified_a,
        "qualified_fixed": qualified_f,
    }


def run() -> dict[str, Any]:
    cov = coverage()
    print("coverage of the 95% lower bound (Clopper–Pearson one-sided), 2,000 draws each:")
    print("      n" + "".join(f"   p={p:<4} sim / exact" for p in RATES))
    for n in SIZES:
        cells = [c for c in cov if c["n"] == n]
        print(f"  {n:5d}" + "".join(f"   {c['simulated']:.4f} / {c['exact']:.4f}" for c in cells))
    worst = min(c["exact"] for c in cov)
    print(f"  lowest exact coverage {worst:.4f} (goal >= 0.95); lowest simulated "
          f"{min(c['simulated'] for c in cov):.4f} (Monte Carlo noise: 1 SE = 0.0049)")  # fmt: skip
    fm = false_migrate()
    print("false 'migrate' of the sequential rule, true rate just below required, 20,000 draws:")
    for r in fm:
        print(
            f"  cap {r['cap']:3d}, required {r['required']:.2f}, true {r['true_rate']:.3f}, "
            f"{r['looks']} looks: alpha split {r['split']:.4f} (goal <= 0.05); "
            f"each look at full alpha {r['naive']:.4f}"
        )
    ad = [adaptive_vs_fixed(floor=0.9, cap=80), adaptive_vs_fixed(floor=0.95, cap=200)]
    print("adaptive rounds against one fixed sample at the cap (simulated plans, 6 candidates x 11 "
          "types):")  # fmt: skip
    for r in ad:
        print(
            f"  floor {r['floor']}, cap {r['cap']}: replays {r['replays_adaptive']:,} adaptive / "
            f"{r['replays_fixed']:,} fixed = {r['ratio']} (goal <= 0.5); same decision on "
            f"{r['same_decision']:.1%} of {r['pairs']:,} pairs (qualified: adaptive "
            f"{r['qualified_adaptive']}, fixed {r['qualified_fixed']})"
        )
    return {"coverage": cov, "false_migrate": fm, "adaptive_vs_fixed": ad}


if __name__ == "__main__":
    run()
