"""Which replays are evidence now, and what the plan says about the rest.

A local candidate's current fingerprint covers every byte of its folder (hashed only when it
changed, :func:`planner.models.folder.fingerprint`); a relay's is its endpoint and model name,
and its answers are evidence while fresh (``[replay] relay_ttl_days``) and served by what the
relay serves now (the warehouse's ``relay_serving`` record, applied where replays are read).
Replays of anything else count as not replayed, and the plan says how many and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from planner.errors import PlannerError
from planner.models.folder import fingerprint as folder_fingerprint
from planner.replay.freshness import Renewal, utc_now
from planner.replay.relay import RelayBackend
from planner.settings import PlannerSettings


@dataclass(frozen=True)
class CurrentEvidence:
    """Which replays are evidence now: each candidate's current fingerprint, and for relays the
    oldest answer still fresh. Candidates whose fingerprint cannot be read (a missing folder)
    are in ``unreadable`` with the reason, and have no evidence."""

    fingerprints: dict[str, str]
    fresh_after: dict[str, datetime]
    unreadable: dict[str, str]


def current_evidence(settings: PlannerSettings) -> CurrentEvidence:
    """What the plan may read: replays of the candidates' current fingerprints (every byte of a
    local folder, hashed only when it changed; a relay's endpoint and model), relays' answers
    not older than ``[replay] relay_ttl_days``. What a relay serves now is the warehouse's
    record (``relay_serving``), applied where the replays are read."""
    fingerprints: dict[str, str] = {}
    unreadable: dict[str, str] = {}
    fresh = Renewal(settings.replay.relay_ttl_days, utc_now()).fresh_after()
    fresh_after: dict[str, datetime] = {}
    for c in settings.candidates:
        if c.kind == "local" and c.path is not None:
            try:
                fingerprints[c.name] = "local-" + folder_fingerprint(Path(c.path))
            except PlannerError as exc:
                unreadable[c.name] = str(exc)
        elif c.kind == "relay" and c.base_url and c.model:
            fingerprints[c.name] = RelayBackend(c.name, c.base_url, c.model).fingerprint()
            if fresh is not None:
                fresh_after[c.name] = fresh
    return CurrentEvidence(fingerprints, fresh_after, unreadable)


STALE_WHY = {
    "fingerprint": "only replays of an older model folder or endpoint (another fingerprint)",
    "expired": "only relay answers older than [replay] relay_ttl_days",
    "served_model": "only answers of a model the relay no longer serves",
}


def stale_notes(stale: dict[str, dict[str, int]], unreadable: dict[str, str]) -> list[str]:
    """The plan's lines about replays that are not evidence (they count as not replayed)."""
    notes = [f"{name} has no evidence: its fingerprint cannot be read ({why})." for name, why in
             sorted(unreadable.items())]  # fmt: skip
    for name, reasons in sorted(stale.items()):
        for why, n in sorted(reasons.items()):
            notes.append(
                f"{name}: {n} sampled request(s) have {STALE_WHY.get(why, why)}; they count as "
                "not replayed until the next replay."
            )
    return notes
