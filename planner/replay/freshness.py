"""When a relay's stored answer stops being evidence, and which ones a nightly run sends again.

A local model's fingerprint covers every byte of its folder, so its answers stay true until the
folder changes. A relay is a name at an endpoint: the provider may move ``gpt-4o-mini`` or
``deepseek-chat`` to another model at any time, and only the answers show it (their ``model`` and
``system_fingerprint``). So a relay's answers expire after ``ttl_days``, and each night renews a
rotating slice of them — a replay is in tonight's slice when its key's hash modulo the number of
slices (whole days of the TTL) equals today's day number modulo the same — so the whole sample is
renewed within the TTL at about 1/TTL of it per night, instead of all of it on one night. An
answer stored less than :data:`RENEW_MIN_AGE` ago is never in the slice (a second run the same
evening sends nothing). An answer served by anything other than what the relay serves now is due
at once.

Times are naive UTC datetimes, as the warehouse stores them.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

RENEW_MIN_AGE = timedelta(hours=12)
_EPOCH = datetime(1970, 1, 1)

Identity = tuple[str | None, str | None]  # (served model, system fingerprint)


def utc_now() -> datetime:
    """Now, as the warehouse's naive UTC timestamps are compared with."""
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class Renewal:
    """The expiry rule of one run: ``ttl_days`` (0: never expire) seen from ``now``."""

    ttl_days: float
    now: datetime

    @property
    def slices(self) -> int:
        return max(1, int(self.ttl_days))

    def fresh_after(self) -> datetime | None:
        """The oldest stored answer that is still evidence (None: none expires)."""
        if self.ttl_days <= 0:
            return None
        return self.now - timedelta(days=self.ttl_days)

    def slice_of(self, key: str) -> int:
        return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) % self.slices

    def tonight(self) -> int:
        return (self.now - _EPOCH).days % self.slices

    def due(self, key: str, created_at: datetime) -> bool:
        """Send again: expired, or in tonight's slice and not stored within the last hours."""
        oldest = self.fresh_after()
        if oldest is None:
            return False
        if created_at < oldest:
            return True
        return self.slice_of(key) == self.tonight() and self.now - created_at >= RENEW_MIN_AGE


def served_by(
    served_model: str | None,
    system_fingerprint: str | None,
    current: Identity | None,
) -> bool:
    """Whether an answer is of what the relay serves now. No record yet: any answer is. An answer
    that named nothing (a failure, a server that does not say, a replay stored before answers
    were noted) says nothing about the model: it counts until it expires."""
    if current is None or (served_model is None and system_fingerprint is None):
        return True
    return (served_model, system_fingerprint) == current


def dominant_identity(seen: Iterable[Identity]) -> tuple[Identity, int] | None:
    """What most of a run's answers named (a provider may answer from a few backends at once;
    ties go to the one seen first), with how many named it."""
    counts = Counter(seen)
    if not counts:
        return None
    identity, n = counts.most_common(1)[0]
    return identity, n
