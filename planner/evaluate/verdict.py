"""How a verdict is reached: outcomes, intervals, production's ceiling and the sequential rule.

Every scored replay has a score in [0, 1] and an *outcome*: at least as good as production
("pass"), not ("fail"), or, for the pairwise judge, a "tie" (worth ``tie_credit`` of a pass).
The rule reads the **pass rate**, never the mean score:

- its lower bound is the exact one-sided Clopper–Pearson bound, ``Beta(alpha; x, n - x + 1)``
  with ``x`` passes in ``n`` measured replays — for ``x = n = 5`` that is ``alpha ** (1/5)``, far
  below 1, so five right answers out of five say little. Where a judge may tie, the pass rate
  is ``c x P(not worse) + (1 - c) x P(win)`` (a tie counts ``c``), and its bound is the same mix
  of the two proportions' exact bounds, each at ``alpha / 2`` (if both hold, the mix holds);
- the floor is read against production's own *ceiling*: the candidate must reach
  ``required = floor x ceiling``, where the ceiling is how often production passes against
  itself (exact-repeat prompts, scored by the same rule; its Clopper–Pearson *upper* bound), 0.5
  for judged types when ties count half (a candidate exactly as good as production wins as often
  as it loses), and 1 where it is not measured;
- samples come in rounds (``looks``: 10, 20, 40, ... up to the cap); a pair stops at the first
  look whose lower bound reaches ``required`` ("qualifies"), or whose upper bound is below it, or
  that could not reach it even if every remaining sample passed ("below"). Undecided at the cap
  is "not enough evidence".

The error budget ``alpha = 1 - confidence`` is spent by Bonferroni: half on the ceiling's upper
bound when one is measured, the rest split evenly over the candidates tried on the type and over
the looks. So, per task type, the chance of migrating to a route whose true pass rate is below
``required`` is at most ``alpha`` (the union bound), however many looks and candidates there are.

The mean score is shown beside the pass rate with a BCa bootstrap interval (scipy, 9,999
resamples); it informs, the pass rate decides. Evidence (:class:`PassEvidence`) and the rule
(:func:`sequential_verdict`) are apart, so the page shows exactly what the rule saw.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from planner.evaluate.intervals import CP_METHOD, cp_upper, credit_bounds

Outcome = Literal["pass", "tie", "fail"]
State = Literal["qualifies", "below", "undecided", "no data"]


# Scorers whose score is a match (1) or not (0): pass iff the score is 1.
EXACT_SCORERS: frozenset[str] = frozenset(
    {"label_match", "final_answer", "json_field_f1", "json_field_f1 (candidate not JSON)"}
)
JUDGE_PREFIX = "judge:"
# Stand-ins where a judge should have scored: they say nothing the judge's rule can read.
NOT_COUNTED_PREFIXES: tuple[str, ...] = ("similarity (judge",)
CODE_PARSE_WEIGHT = 0.3  # the code scorer: 0.3 x parses + 0.7 x similarity


@dataclass(frozen=True)
class PassRules:
    """When a replay counts as at least as good as production, by scorer.

    - label match, final answer, JSON field F1: the score is 1 (an exact match);
    - similarity scorers (ROUGE-L + token F1): the score is at least ``similarity_pass``;
    - Python code: at least ``0.3 + 0.7 x similarity_pass`` (it parses and is that similar);
    - the pairwise judge: "pass" when production lost in both orders, "fail" when it won in
      both, otherwise a "tie" (worth ``tie_credit``).
    """

    similarity_pass: float = 0.5
    tie_credit: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.similarity_pass <= 1.0:
            raise ValueError(f"similarity_pass must be within [0, 1], got {self.similarity_pass}")
        if not 0.0 <= self.tie_credit <= 1.0:
            raise ValueError(f"tie_credit must be within [0, 1], got {self.tie_credit}")

    def credit(self, outcome: Outcome) -> float:
        return {"pass": 1.0, "tie": self.tie_credit, "fail": 0.0}[outcome]

    def describe(self) -> list[str]:
        """The rules in words, for the page and the README."""
        sp = self.similarity_pass
        return [
            "label match, final answer, JSON fields: the answer matches production's exactly",
            f"text similarity (ROUGE-L + token F1): at least {sp:.2f}",
            f"Python code: parses and similarity at least {sp:.2f} "
            f"(score >= {CODE_PARSE_WEIGHT + (1 - CODE_PARSE_WEIGHT) * sp:.2f})",
            "pairwise judge: production loses in both orders; a tie (orders disagree, or "
            f"both say TIE) counts {self.tie_credit:g} of a pass",
        ]


def is_judge(scorer: str | None) -> bool:
    return bool(scorer) and str(scorer).startswith(JUDGE_PREFIX)


def outcome_of(scorer: str | None, score: float, rules: PassRules) -> Outcome | None:
    """The outcome of one scored replay by its scorer's rule; None when it cannot count."""
    name = str(scorer or "")
    if name.startswith(NOT_COUNTED_PREFIXES):
        return None
    if name.startswith(JUDGE_PREFIX):  # the score is the preference over both orders
        if score >= 1.0 - 1e-9:
            return "pass"
        return "fail" if score <= 1e-9 else "tie"
    if name in EXACT_SCORERS:
        return "pass" if score >= 1.0 - 1e-9 else "fail"
    if name.startswith("code: python"):
        bar = CODE_PARSE_WEIGHT + (1 - CODE_PARSE_WEIGHT) * rules.similarity_pass
        return "pass" if score >= bar - 1e-9 else "fail"
    return "pass" if score >= rules.similarity_pass - 1e-9 else "fail"


# ---------------------------------------------------------------- production's ceiling


@dataclass(frozen=True)
class Ceiling:
    """How often production passes against itself on a task type: the floor is read against it.

    ``value`` is what the floor is multiplied by: the Clopper–Pearson upper bound of the
    self-pass rate when measured (conservative: it asks more of the candidate), 0.5 (or the tie
    credit, if higher) for judged types, else 1.0 ("not measured")."""

    task_type: str
    method: Literal["measured", "judge symmetry", "not measured"]
    value: float
    pairs: int = 0
    passes: float = 0.0
    rate: float | None = None
    upper: float | None = None
    mean_score: float | None = None
    alpha: float | None = None
    scorers: dict[str, int] = field(default_factory=dict)
    sources: dict[str, int] = field(default_factory=dict)  # "exact repeats" / "re-asked"
    note: str = ""

    @property
    def measured(self) -> bool:
        return self.method == "measured"

    def summary(self) -> dict[str, Any]:
        return {
            "task_type": self.task_type,
            "method": self.method,
            "value": self.value,
            "pairs": self.pairs,
            "passes": self.passes,
            "rate": self.rate,
            "upper": self.upper,
            "mean_score": self.mean_score,
            "alpha": self.alpha,
            "scorers": dict(self.scorers),
            "sources": dict(self.sources),
            "note": self.note,
        }


def judge_ceiling(task_type: str, rules: PassRules) -> Ceiling:
    """A candidate exactly as good as production wins as often as it loses, so its credit is
    ``(1 - t)/2 + c x t`` for a tie rate ``t``: at most ``max(0.5, c)`` whatever ``t``."""
    value = max(0.5, rules.tie_credit)
    return Ceiling(
        task_type,
        "judge symmetry",
        value,
        note=(
            f"a route as good as production wins as often as it loses; with ties worth "
            f"{rules.tie_credit:g}, its pass rate is at most {value:g}"
        ),
    )


def measure_ceiling(
    task_type: str,
    pairs: Iterable[tuple[str | None, float, str]],
    rules: PassRules,
    *,
    alpha: float,
    min_pairs: int = 10,
) -> Ceiling:
    """Production's self-agreement from (scorer, score, source) of production-vs-production pairs.

    Fewer than ``min_pairs`` usable pairs: not measured (the ceiling is 1)."""
    outcomes: list[tuple[Outcome, float, str, str]] = []
    for scorer, score, source in pairs:
        got = outcome_of(scorer, score, rules)
        if got is not None:
            outcomes.append((got, float(score), str(scorer), source))
    n = len(outcomes)
    scorers: dict[str, int] = {}
    sources: dict[str, int] = {}
    for _, _, name, source in outcomes:
        scorers[name] = scorers.get(name, 0) + 1
        sources[source] = sources.get(source, 0) + 1
    passes = sum(rules.credit(o) for o, _, _, _ in outcomes)
    mean = float(np.mean([s for _, s, _, _ in outcomes])) if outcomes else None
    if n < min_pairs:
        return Ceiling(
            task_type,
            "not measured",
            1.0,
            pairs=n,
            passes=passes,
            rate=passes / n if n else None,
            mean_score=mean,
            scorers=scorers,
            sources=sources,
            note=f"{n} production-vs-production pairs (< {min_pairs}): not measured",
        )
    upper = float(cp_upper(passes, n, alpha))
    return Ceiling(
        task_type,
        "measured",
        upper,
        pairs=n,
        passes=passes,
        rate=passes / n,
        upper=upper,
        mean_score=mean,
        alpha=alpha,
        scorers=scorers,
        sources=sources,
    )


# ---------------------------------------------------------------- looks and the error budget


def looks(cap: int, first: int = 10) -> tuple[int, ...]:
    """The sample sizes at which a pair is looked at: first, 2 x first, 4 x first, ..., cap."""
    if cap < 1:
        return ()
    first = max(1, first)
    out: list[int] = []
    n = first
    while n < cap:
        out.append(n)
        n *= 2
    out.append(cap)
    return tuple(out)


@dataclass(frozen=True)
class Budget:
    """How ``alpha`` is spent on one (task type, candidate): the per-look level of its bound."""

    alpha: float  # 1 - confidence, for the whole task type
    candidates: int  # candidates tried on the type
    looks: int
    ceiling_share: float  # 0.5 when a measured ceiling takes half, else 0

    @property
    def per_look(self) -> float:
        return self.alpha * (1 - self.ceiling_share) / max(1, self.candidates) / max(1, self.looks)

    @property
    def ceiling_alpha(self) -> float:
        return self.alpha * self.ceiling_share

    def describe(self) -> str:
        parts = []
        if self.ceiling_share:
            parts.append("half to the ceiling's bound")
        if self.candidates > 1:
            parts.append(f"{self.candidates} candidates")
        if self.looks > 1:
            parts.append(f"{self.looks} looks")
        split = f" (α = {self.alpha:g} split over {', '.join(parts)})" if parts else ""
        return f"{CP_METHOD} at {1 - self.per_look:.2%}{split}"


# ---------------------------------------------------------------- evidence and the rule


@dataclass(frozen=True)
class Look:
    """One look at a pair: its measured replays, passes and bounds."""

    n: int
    passes: float
    lower: float
    upper: float


@dataclass(frozen=True)
class PassEvidence:
    """What the rule reads for one (task type, candidate): the outcomes in sample order.

    ``outcomes[i]`` is the outcome of the request at sample position ``i`` (a failed replay is a
    fail), or None where there is none (not replayed yet, not sent, not scored). ``size`` is the
    type's sample size: the last look is at it. ``ties`` says whether a tie can occur (the type
    is judged): the bound is then the mix of :func:`credit_bounds`."""

    outcomes: tuple[Outcome | None, ...]
    size: int
    required: float  # floor x ceiling
    alpha_look: float
    schedule: tuple[int, ...]
    min_samples: int = 10
    tie_credit: float = 0.5
    ties: bool = False

    @property
    def measured(self) -> int:
        return sum(o is not None for o in self.outcomes)

    def counts(self, upto: int) -> tuple[int, int, int]:
        """(measured, wins, not worse) among the first ``upto`` positions."""
        got = [o for o in self.outcomes[:upto] if o is not None]
        wins = sum(o == "pass" for o in got)
        return len(got), wins, wins + sum(o == "tie" for o in got)


@dataclass(frozen=True)
class QualityVerdict:
    """The rule's answer for one pair, with the look it stopped at and every look it made."""

    state: State
    n: int  # measured replays at the deciding (or last) look
    passes: float  # wins + tie credit x ties
    lower: float | None
    upper: float | None
    required: float
    alpha_look: float
    looks: tuple[Look, ...]
    reason: str
    stopped: bool = False  # no more samples can change it (decided, futile, or at the cap)

    @property
    def pass_rate(self) -> float | None:
        return self.passes / self.n if self.n else None

    def summary(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "n": self.n,
            "passes": self.passes,
            "pass_rate": self.pass_rate,
            "lower": self.lower,
            "upper": self.upper,
            "required": self.required,
            "alpha_look": self.alpha_look,
            "looks": [vars(lk).copy() for lk in self.looks],
            "reason": self.reason,
            "stopped": self.stopped,
        }


def sequential_verdict(ev: PassEvidence) -> QualityVerdict:
    """Walk the looks in order; stop at the first that decides.

    At look ``n_k`` the bound reads the measured outcomes among the first ``n_k`` sample
    positions. It qualifies when ``lower >= required`` (and at least ``min_samples`` were
    measured); it is below when ``upper < required``. When even every position up to the cap
    that has no outcome yet passing would leave the final lower bound short, sampling stops:
    "below" if its pass rate so far is under the required rate (its failures rule it out), else
    undecided ("not enough evidence": the cap is too small to show it qualifies). A look with
    no new outcome is skipped (it would repeat the last one)."""
    made: list[Look] = []
    last_m = -1
    final = ev.schedule[-1] if ev.schedule else 0
    at_cap = False
    t = ev.tie_credit

    def bounds(wins: int, not_worse: int, m: int) -> tuple[float, float]:
        low, high = credit_bounds(wins, not_worse, m, ev.alpha_look, t, ev.ties)
        return float(low), float(high)

    for n_k in ev.schedule:
        m, wins, not_worse = ev.counts(n_k)
        if m == last_m or m == 0:
            continue
        last_m = m
        at_cap = n_k == final
        x = wins + t * (not_worse - wins)
        lower, upper = bounds(wins, not_worse, m)
        made.append(Look(m, x, lower, upper))
        shown = f"pass rate {x:g}/{m}"
        if lower >= ev.required and m >= ev.min_samples:
            return QualityVerdict(
                "qualifies",
                m,
                x,
                lower,
                upper,
                ev.required,
                ev.alpha_look,
                tuple(made),
                f"{shown}: lower bound {lower:.3f} >= required {ev.required:.3f}",
                stopped=True,
            )
        if upper < ev.required:
            return QualityVerdict(
                "below",
                m,
                x,
                lower,
                upper,
                ev.required,
                ev.alpha_look,
                tuple(made),
                f"{shown}: upper bound {upper:.3f} < required {ev.required:.3f}",
                stopped=True,
            )
        # positions up to the cap that have no outcome yet (later rounds or runs may fill them)
        left = max(0, final - m) if n_k < final else 0
        if left > 0 and bounds(wins + left, not_worse + left, m + left)[0] < ev.required:
            # out of reach within the cap: "below" when its record so far is under the required
            # rate (its failures rule it out), else the cap is too small to show it qualifies
            under = x / m < ev.required
            return QualityVerdict(
                "below" if under else "undecided",
                m,
                x,
                lower,
                upper,
                ev.required,
                ev.alpha_look,
                tuple(made),
                (
                    f"{shown}: even if all {left} samples left to the cap of {final} passed, "
                    f"the lower bound would stay under {ev.required:.3f}"
                )
                if under
                else (
                    f"n = {m}, {shown}, interval [{lower:.3f}, {upper:.3f}]; the cap of "
                    f"{final} is too small: even if every sample left passed, the lower bound "
                    f"would stay under {ev.required:.3f}"
                ),
                stopped=True,
            )
    if not made:
        return QualityVerdict(
            "no data", 0, 0.0, None, None, ev.required, ev.alpha_look, (), "no scored replays"
        )
    look = made[-1]
    short = f" (fewer than {ev.min_samples} measured)" if look.n < ev.min_samples else ""
    return QualityVerdict(
        "undecided",
        look.n,
        look.passes,
        look.lower,
        look.upper,
        ev.required,
        ev.alpha_look,
        tuple(made),
        f"n = {look.n}, pass rate {look.passes:g}/{look.n}, interval "
        f"[{look.lower:.3f}, {look.upper:.3f}] around required {ev.required:.3f}{short}",
        stopped=at_cap,
    )


# ---------------------------------------------------------------- simulation (tests and bench)


def simulate_sequential(
    p: float,
    *,
    required: float,
    cap: int,
    first: int = 10,
    alpha_look: float,
    draws: int,
    seed: int,
    min_samples: int = 1,
    p_tie: float = 0.0,
    tie_credit: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """The sequential rule on ``draws`` simulated pairs (vectorised): each replay is a win with
    probability ``p``, a tie with ``p_tie`` (judged types), else a fail.

    Returns (qualified: bool per draw, samples used per draw)."""
    rng = np.random.default_rng(seed)
    u = rng.random((draws, cap))
    wins = np.cumsum(u < p, axis=1)
    not_worse = np.cumsum(u < p + p_tie, axis=1)
    ties = p_tie > 0
    qualified = np.zeros(draws, dtype=bool)
    stopped = np.zeros(draws, dtype=bool)
    used = np.full(draws, cap)
    for n_k in looks(cap, first):
        w, nw = wins[:, n_k - 1], not_worse[:, n_k - 1]
        lower, upper = credit_bounds(w, nw, n_k, alpha_look, tie_credit, ties)
        left = cap - n_k
        best = credit_bounds(w + left, nw + left, cap, alpha_look, tie_credit, ties)[0]
        yes = ~stopped & (lower >= required) & (n_k >= min_samples)
        no = ~stopped & ~yes & ((upper < required) | ((left > 0) & (best < required)))
        qualified |= yes
        used = np.where(yes | no, n_k, used)
        stopped |= yes | no
    return qualified, used
