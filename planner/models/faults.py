"""Faults the model server can inject, for tests and the demo: a share of 429s (with or without
``Retry-After``), 503s, hangs, extra latency, malformed server-sent events, missing usage —
decided per request in arrival order by a seeded generator, so the same seed gives the same
sequence (:mod:`planner.models.server` documents what a client sees).
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class FaultConfig:
    """What fraction of chat requests misbehave, and how (see the module docstring)."""

    rate_429: float = 0.0  # fraction of requests answered 429
    retry_after_s: float | None = 1.0  # Retry-After header on those 429s (None: no header)
    rate_503: float = 0.0
    extra_latency_ms: float = 0.0  # added before answering (asyncio.sleep, not blocking)
    hang_rate: float = 0.0  # fraction that never answer (until the client gives up)
    malformed_sse_rate: float = 0.0  # fraction of streams with a broken `data:` line
    omit_usage: bool = False  # never send usage
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("rate_429", "rate_503", "hang_rate", "malformed_sse_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"FaultConfig.{name} must be within [0, 1], got {value}")
        if self.rate_429 + self.rate_503 + self.hang_rate > 1.0 + 1e-9:
            raise ValueError("FaultConfig: rate_429 + rate_503 + hang_rate must not exceed 1")
        if self.extra_latency_ms < 0:
            raise ValueError("FaultConfig.extra_latency_ms must be >= 0")


class FaultDice:
    """Seeded fault decisions in arrival order (thread-safe)."""

    def __init__(self, faults: FaultConfig) -> None:
        self.faults = faults
        self._rng = random.Random(faults.seed)
        self._sse_rng = random.Random(faults.seed + 1)
        self._lock = threading.Lock()

    def roll(self) -> str | None:
        f = self.faults
        with self._lock:
            u = self._rng.random()
        if u < f.rate_429:
            return "429"
        if u < f.rate_429 + f.rate_503:
            return "503"
        if u < f.rate_429 + f.rate_503 + f.hang_rate:
            return "hang"
        return None

    def roll_malformed(self) -> bool:
        with self._lock:
            return self._sse_rng.random() < self.faults.malformed_sse_rate
