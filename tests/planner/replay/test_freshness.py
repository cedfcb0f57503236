"""The relay renewal rule, simulated over nights where the truth is known: every answer is renewed
before it expires, each night renews about 1/TTL of the sample, and a second run the same evening
renews nothing."""

from __future__ import annotations

from datetime import datetime, timedelta

from planner.replay.freshness import Renewal, dominant_identity, served_by

KEYS = [f"rp-{i:032x}" for i in range(2000)]
DAY0 = datetime(2026, 11, 1, 2, 0)


def test_nightly_runs_renew_everything_within_the_ttl_at_an_even_pace() -> None:
    ttl = 14
    stored = dict.fromkeys(KEYS, DAY0)
    per_night = []
    for night in range(1, 60):
        now = DAY0 + timedelta(days=night, minutes=(night * 37) % 90)  # runs start at varying times
        renewal = Renewal(ttl, now)
        due = [k for k, at in stored.items() if renewal.due(k, at)]
        for key in due:
            stored[key] = now
        per_night.append(len(due))
        oldest = min(stored.values())
        assert now - oldest <= timedelta(days=ttl)  # nothing is older than the TTL after a run
        again = Renewal(ttl, now + timedelta(minutes=20))  # a second run the same evening
        assert not [k for k, at in stored.items() if again.due(k, at)]
    steady = per_night[ttl:]
    expected = len(KEYS) / ttl
    assert all(0.7 * expected < n < 1.3 * expected for n in steady), steady


def test_expiry_and_what_counts_as_served_by_the_relay() -> None:
    now = datetime(2026, 11, 20, 2, 0)
    renewal = Renewal(14, now)
    assert renewal.fresh_after() == now - timedelta(days=14)
    assert renewal.due(KEYS[0], now - timedelta(days=15))
    assert not renewal.due(KEYS[0], now - timedelta(hours=3))
    never = Renewal(0, now)
    assert never.fresh_after() is None and not never.due(KEYS[0], datetime(2000, 1, 1))

    current = ("deepseek-v3.2", "fp_1")
    assert served_by("deepseek-v3.2", "fp_1", current)
    assert not served_by("deepseek-v3.1", "fp_1", current)
    assert not served_by("deepseek-v3.2", "fp_2", current)  # another build of the model
    assert served_by(None, None, current)  # named nothing: says nothing about the model
    assert served_by("anything", None, None)  # nothing recorded yet

    assert dominant_identity([]) is None
    seen = [("a", None), ("b", "x"), ("b", "x"), ("a", None), ("b", "x")]
    assert dominant_identity(seen) == (("b", "x"), 3)
