"""What a person must look at after a run, built from what the run measured: pure functions over
plain data, most serious first.

- ``decision_flipped`` — a task type's route differs from the previous run's (:func:`flip_signals`);
- ``quality_below_floor`` — a route the previous run deployed, re-measured on tonight's evidence
  with the plan's own rule, no longer clears the quality floor; ``deployed_route_failing`` — it
  fails the rule for another reason: latency, device fit, no current evidence
  (:class:`RouteCheck`);
- ``relay_serving_changed`` — a relay's answers name another model than before (its provider
  moved the alias): its answers were replayed, and the route's evidence is new;
- ``drift`` — the task mix of the last window of traffic moved away from the window before it:
  total variation distance past ``[alerts] drift_threshold`` *and* a chi-square test of
  homogeneity at p < :data:`DRIFT_P` (a few dozen requests differ by chance; a real shift does
  not) (:class:`WindowDrift`);
- ``classifier_changed`` — a retrained classifier types the same requests differently (measured
  on the same requests, so it is never reported as traffic drift) (:class:`Relabel`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy.stats import chi2_contingency

from planner.runs.diff import (
    DRIFT_EPSILON,
    PRODUCTION_KIND,
    RouteChange,
    RunDiff,
    Signal,
    mix_drift,
)

DRIFT_P = 0.01  # a drift alert also needs the two windows to differ beyond chance
MOVED_SHOWN = 0.005  # task types whose share moved less than half a point are not named


def _pct(value: float) -> str:
    return f"{value * 100:.0f}%"


def _shares(counts: Mapping[str, int]) -> dict[str, float]:
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()} if total else {}


def _moved(a: Mapping[str, int], b: Mapping[str, int], shown: int = 3) -> str:
    sa, sb = _shares(a), _shares(b)
    types = sorted(set(sa) | set(sb), key=lambda t: (-abs(sb.get(t, 0) - sa.get(t, 0)), t))
    parts = [
        f"{t} {_pct(sa.get(t, 0.0))} → {_pct(sb.get(t, 0.0))}"
        for t in types
        if abs(sb.get(t, 0.0) - sa.get(t, 0.0)) >= MOVED_SHOWN
    ]
    return ", ".join(parts[:shown])


# ---------------------------------------------------------------- decisions


def _flip_message(change: RouteChange, previous_id: str) -> str:
    a, b = change.route_a, change.route_b
    qa, qb = change.quality.a, change.quality.b
    # Production's quality is 1.00 by definition: only a candidate's figure is worth showing.
    if change.kind_b == PRODUCTION_KIND:
        what = f"{change.task_type} goes back to production (was {a}"
        what += f", quality {qa:.2f} then)" if qa is not None else ")"
    elif change.kind_a == PRODUCTION_KIND:
        what = f"{change.task_type} now moves to {b} (was production)"
        what += f"; quality {qb:.2f}" if qb is not None else ""
    else:
        what = f"{change.task_type} moves from {a} to {b}"
        what += f"; quality {qa:.2f} → {qb:.2f}" if qa is not None and qb is not None else ""
    return f"Decision flipped since run {previous_id}: {what}."


def flip_signals(diff: RunDiff | None) -> list[Signal]:
    """One signal per task type whose route differs from the previous run's."""
    if diff is None:
        return []
    return [
        Signal("decision_flipped", c.task_type, _flip_message(c, diff.a_run_id))
        for c in diff.flipped
    ]


@dataclass(frozen=True)
class RouteCheck:
    """A route the previous run deployed, judged on tonight's evidence by the plan's rule."""

    task_type: str
    route: str
    deployed_by: str  # the run that deployed it
    reasons: tuple[str, ...]  # why tonight's evidence does not support it (empty: it holds)
    below_floor: bool  # the quality part of the rule fails
    quality: str | None = None  # tonight's quality figures as the rule saw them, for people

    @property
    def holds(self) -> bool:
        return not self.reasons


def deployed_signals(checks: Sequence[RouteCheck]) -> list[Signal]:
    """A signal for each deployed route tonight's evidence no longer supports."""
    out = []
    for check in checks:
        if check.holds:
            continue
        why = "; ".join(check.reasons)
        if check.below_floor:
            out.append(
                Signal(
                    "quality_below_floor",
                    check.task_type,
                    f"{check.task_type} is routed to {check.route} (deployed by run "
                    f"{check.deployed_by}), and tonight's replays put it below the quality "
                    f"floor: {check.quality or why}.",
                )
            )
        else:
            out.append(
                Signal(
                    "deployed_route_failing",
                    check.task_type,
                    f"{check.task_type} is routed to {check.route} (deployed by run "
                    f"{check.deployed_by}), and tonight's evidence no longer supports it: {why}.",
                )
            )
    return out


# ---------------------------------------------------------------- relays


@dataclass(frozen=True)
class ServingChange:
    """A relay whose answers tonight named another model (or build) than before."""

    candidate: str
    before: str
    after: str


def serving_signals(changes: Sequence[ServingChange]) -> list[Signal]:
    return [
        Signal(
            "relay_serving_changed",
            None,
            f"The relay {c.candidate} now serves another model: {c.after} (was {c.before}). "
            "Its answers were replayed; routes through it rest on the new model's evidence.",
        )
        for c in changes
    ]


# ---------------------------------------------------------------- traffic and classifier


@dataclass(frozen=True)
class WindowDrift:
    """The task mix (counts per type) of the last window of traffic and the window before."""

    last_label: str
    before_label: str
    last: dict[str, int]
    before: dict[str, int]

    @property
    def distance(self) -> float:
        """Total variation distance of the two mixes, 0..1."""
        return mix_drift(
            {k: float(v) for k, v in self.before.items()},
            {k: float(v) for k, v in self.last.items()},
        )

    @property
    def p_value(self) -> float:
        """Chi-square test of homogeneity of the two windows' counts (1.0: nothing to test)."""
        types = sorted(set(self.last) | set(self.before))
        table = [[self.before.get(t, 0) for t in types], [self.last.get(t, 0) for t in types]]
        if len(types) < 2 or not all(sum(row) for row in table):
            return 1.0
        return float(chi2_contingency(table).pvalue)

    def alerts(self, threshold: float) -> bool:
        return self.distance > threshold + DRIFT_EPSILON and self.p_value < DRIFT_P


def drift_signals(drift: WindowDrift | None, threshold: float) -> list[Signal]:
    """A drift signal when the last window's mix moved past ``threshold`` beyond chance."""
    if drift is None or not drift.alerts(threshold):
        return []
    detail = _moved(drift.before, drift.last)
    n_last, n_before = sum(drift.last.values()), sum(drift.before.values())
    return [
        Signal(
            "drift",
            None,
            f"The task mix drifted {_pct(drift.distance)} (threshold {_pct(threshold)}): "
            f"{drift.last_label} ({n_last:,}) against {drift.before_label} ({n_before:,})"
            + (f": {detail}" if detail else "")
            + f" (chi-square p = {drift.p_value:.2g}).",
        )
    ]


@dataclass(frozen=True)
class Relabel:
    """The same requests typed by the previous classifier and by the new one."""

    previous_version: str
    version: str
    before: dict[str, int]
    after: dict[str, int]
    why: str = ""

    @property
    def distance(self) -> float:
        return mix_drift(
            {k: float(v) for k, v in self.before.items()},
            {k: float(v) for k, v in self.after.items()},
        )


def classifier_signals(relabel: Relabel | None, threshold: float) -> list[Signal]:
    """A signal when a retrained classifier moves the mix of the same requests past
    ``threshold``: the classifier changed, not the traffic."""
    if relabel is None or relabel.distance <= threshold + DRIFT_EPSILON:
        return []
    why = f" ({relabel.why})" if relabel.why else ""
    detail = _moved(relabel.before, relabel.after)
    return [
        Signal(
            "classifier_changed",
            None,
            f"The classifier was retrained{why}: on the same {sum(relabel.after.values()):,} "
            f"requests it moves {_pct(relabel.distance)} of the task mix"
            + (f" ({detail})" if detail else "")
            + f", version {relabel.previous_version} → {relabel.version}. This is the "
            "classifier, not the traffic.",
        )
    ]


def attention_signals(
    diff: RunDiff | None,
    *,
    deployed: Sequence[RouteCheck] = (),
    serving: Sequence[ServingChange] = (),
    drift: WindowDrift | None = None,
    relabel: Relabel | None = None,
    drift_threshold: float,
) -> list[Signal]:
    """Everything that needs a person, most serious first."""
    return [
        *flip_signals(diff),
        *deployed_signals(deployed),
        *serving_signals(serving),
        *drift_signals(drift, drift_threshold),
        *classifier_signals(relabel, drift_threshold),
    ]
