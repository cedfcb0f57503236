"""The attention signals: their order and messages, and the drift rule checked where the truth is
known (windows drawn from one mix must not alert, beyond chance; a shifted mix must)."""

from __future__ import annotations

import numpy as np

from planner.runs.alerts import (
    DRIFT_P,
    Relabel,
    RouteCheck,
    ServingChange,
    WindowDrift,
    attention_signals,
    classifier_signals,
    drift_signals,
)
from planner.runs.diff import RouteFigures, RunFigures, diff_runs

TYPES = ("classification", "extraction", "summarization", "chatbot", "code")


def figures(route: str, kind: str, quality: float) -> RunFigures:
    return RunFigures(
        headline={"requests": 1000},
        task_mix={"classification": 0.6, "chatbot": 0.4},
        routes=(
            RouteFigures("chatbot", "production", "production", 1.0, 800.0, 0.2, 0.4),
            RouteFigures("classification", route, kind, quality, 5.0, 0.0, 0.6),
        ),
        quality_floor=0.9,
    )


def test_signals_most_serious_first_with_their_messages() -> None:
    diff = diff_runs(
        "run-a",
        figures("edge-small-int4", "local", 0.97),
        "run-b",
        figures("production", "production", 1.0),
    )
    signals = attention_signals(
        diff,
        deployed=[
            RouteCheck(
                "classification",
                "edge-small-int4",
                "run-a",
                ("quality lower bound 0.812 below the floor 0.900",),
                below_floor=True,
                quality="quality 0.86, lower bound 0.81 against the floor 0.90, over 40 replays",
            ),
            RouteCheck("extraction", "relay-x", "run-a", (), below_floor=False),  # holds
            RouteCheck(
                "summarization",
                "relay-x",
                "run-a",
                ("p95 latency 3100 ms over the SLO 2000 ms",),
                below_floor=False,
            ),
        ],
        serving=[ServingChange("relay-x", "deepseek-v3.1", "deepseek-v3.2 (fp_9)")],
        drift=WindowDrift(
            "this run's 400 new requests",
            "the 1 day before",
            {"code": 400},
            {"classification": 300, "code": 100},
        ),
        relabel=Relabel("v1", "v2", {"classification": 100}, {"extraction": 100}, "7 days old"),
        drift_threshold=0.15,
    )
    assert [(s.kind, s.task_type) for s in signals] == [
        ("decision_flipped", "classification"),
        ("quality_below_floor", "classification"),
        ("deployed_route_failing", "summarization"),
        ("relay_serving_changed", None),
        ("drift", None),
        ("classifier_changed", None),
    ]
    assert signals[0].message == (
        "Decision flipped since run run-a: classification goes back to production "
        "(was edge-small-int4, quality 0.97 then)."
    )
    assert signals[1].message == (
        "classification is routed to edge-small-int4 (deployed by run run-a), and tonight's "
        "replays put it below the quality floor: quality 0.86, lower bound 0.81 against the "
        "floor 0.90, over 40 replays."
    )
    assert "no longer supports it: p95 latency 3100 ms" in signals[2].message
    assert signals[3].message.startswith(
        "The relay relay-x now serves another model: deepseek-v3.2 (fp_9) (was deepseek-v3.1)."
    )
    assert signals[4].message == (
        "The task mix drifted 75% (threshold 15%): this run's 400 new requests (400) against "
        "the 1 day before (400): classification 75% → 0%, code 25% → 100% (chi-square p = 1.1e-105)."
    )
    assert "7 days old" in signals[5].message and "not the traffic" in signals[5].message


def test_drift_rule_against_simulated_windows() -> None:
    """Windows from one mix: the distance alone passes the threshold often on small windows, the
    rule (distance and chi-square) alerts at most about DRIFT_P of the time. A mix that moved by
    0.3 alerts nearly always."""
    rng = np.random.default_rng(7)
    mix = np.array([0.35, 0.25, 0.2, 0.15, 0.05])
    moved = np.array([0.05, 0.25, 0.2, 0.15, 0.35])  # 30% of the traffic changed type

    def window(p: np.ndarray, n: int) -> dict[str, int]:
        return {t: int(c) for t, c in zip(TYPES, rng.multinomial(n, p), strict=True) if c}

    runs = 1000
    same = [WindowDrift("last", "before", window(mix, 40), window(mix, 40)) for _ in range(runs)]
    by_distance = sum(d.distance > 0.15 for d in same) / runs
    by_rule = sum(d.alerts(0.15) for d in same) / runs
    assert by_distance > 0.3  # the old rule (distance only) would cry wolf on small windows
    assert by_rule <= 2 * DRIFT_P
    shifted = [WindowDrift("l", "b", window(moved, 200), window(mix, 200)) for _ in range(200)]
    assert sum(d.alerts(0.15) for d in shifted) / 200 >= 0.99


def test_drift_and_relabel_at_their_thresholds() -> None:
    even = WindowDrift("l", "b", {"a": 50, "b": 50}, {"a": 50, "b": 50})
    assert even.distance == 0 and even.p_value == 1.0 and drift_signals(even, 0.15) == []
    one_type = WindowDrift("l", "b", {"a": 10}, {"a": 900})
    assert one_type.p_value == 1.0 and not one_type.alerts(0.0)  # nothing moved between types
    assert drift_signals(None, 0.15) == []
    relabel = Relabel("v1", "v2", {"a": 80, "b": 20}, {"a": 60, "b": 40})
    assert abs(relabel.distance - 0.2) < 1e-12
    assert classifier_signals(relabel, 0.2) == []  # at the threshold is not past it
    assert classifier_signals(relabel, 0.15)[0].kind == "classifier_changed"
