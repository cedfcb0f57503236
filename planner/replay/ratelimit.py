"""Limits a relay candidate must never break: requests/tokens per window, consecutive failures,
and the run's money.

:class:`SlidingWindowLimiter` admits a send only if the sends admitted in the trailing window
(plus a small safety margin for network jitter) leave room for it, so *any* window of that length
holds at most ``rpm`` requests and ``tpm`` tokens — not just aligned minutes. Every attempt,
retries included, goes through it. :class:`CircuitBreaker` counts consecutive failed samples.
:class:`CostBudget` is shared by every candidate of one run and is thread-safe: candidates may
replay in parallel threads.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Admission:
    """One send counted in the window (its tokens are settled to the real count later)."""

    at: float
    tokens: int


class SlidingWindowLimiter:
    """Exact sliding-window limit on requests and tokens per ``window_s`` seconds.

    ``margin_s`` widens the window the limiter looks back over (default: 1% of the window, at
    least 0.25 s), so a request that travels a little faster than the one before it still lands
    outside the server's window. State survives across event loops (a backend may run several
    batches), so one limiter per candidate keeps the limit across the whole run.
    """

    def __init__(
        self,
        rpm: int | None = None,
        tpm: int | None = None,
        *,
        window_s: float = 60.0,
        margin_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rpm is not None and rpm <= 0:
            raise ValueError(f"rpm must be positive, got {rpm}")
        if tpm is not None and tpm <= 0:
            raise ValueError(f"tpm must be positive, got {tpm}")
        if window_s <= 0:
            raise ValueError(f"window_s must be positive, got {window_s}")
        self.rpm = rpm
        self.tpm = tpm
        self.window_s = window_s
        self.margin_s = max(0.01 * window_s, 0.25) if margin_s is None else margin_s
        self._clock = clock
        self._admitted: deque[Admission] = deque()
        self._tokens = 0
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    @property
    def limited(self) -> bool:
        return self.rpm is not None or self.tpm is not None

    def _loop_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock = asyncio.Lock()
            self._lock_loop = loop
        return self._lock

    def _prune(self, now: float) -> None:
        horizon = now - (self.window_s + self.margin_s)
        while self._admitted and self._admitted[0].at <= horizon:
            self._tokens -= self._admitted.popleft().tokens

    def wait_time(self, tokens: int = 0) -> float:
        """Seconds until a send of ``tokens`` tokens fits (0: now). Prunes old admissions."""
        now = self._clock()
        self._prune(now)
        span = self.window_s + self.margin_s
        wait = 0.0
        if self.rpm is not None and len(self._admitted) >= self.rpm:
            oldest_blocking = self._admitted[len(self._admitted) - self.rpm]
            wait = max(wait, oldest_blocking.at + span - now)
        if self.tpm is not None and self._admitted:
            # A send bigger than the whole budget waits for an empty window, then goes alone.
            need = min(tokens, self.tpm)
            excess = self._tokens + need - self.tpm
            if excess > 0:
                freed = 0
                for entry in self._admitted:
                    freed += entry.tokens
                    if freed >= excess:
                        wait = max(wait, entry.at + span - now)
                        break
        return max(wait, 0.0)

    async def acquire(self, tokens: int = 0) -> Admission:
        """Wait (first come, first served) until the send fits, then count it as sent now."""
        if not self.limited:
            return Admission(self._clock(), tokens)
        async with self._loop_lock():
            while (wait := self.wait_time(tokens)) > 0:
                await asyncio.sleep(wait)
            admission = Admission(self._clock(), tokens)
            self._admitted.append(admission)
            self._tokens += tokens
            return admission

    def settle(self, admission: Admission, actual_tokens: int) -> None:
        """Replace an admission's estimated tokens by the count the server reported."""
        if admission in self._admitted:
            self._tokens += actual_tokens - admission.tokens
        admission.tokens = actual_tokens


class CircuitBreaker:
    """Opens after ``threshold`` consecutive failed samples; any success closes the count."""

    def __init__(self, threshold: int = 5) -> None:
        if threshold <= 0:
            raise ValueError(f"breaker threshold must be positive, got {threshold}")
        self.threshold = threshold
        self.consecutive = 0

    @property
    def is_open(self) -> bool:
        return self.consecutive >= self.threshold

    def record(self, success: bool) -> None:
        self.consecutive = 0 if success else self.consecutive + 1


class CostBudget:
    """The run's spending cap in USD, shared (thread-safely) by every candidate.

    A send reserves its worst case (prompt + max_tokens at the candidate's prices) first; when
    the answer arrives the reservation is replaced by the real cost. A send whose worst case
    does not fit is refused, so the cap holds even with many requests in flight.
    """

    def __init__(self, max_cost_usd: float | None) -> None:
        if max_cost_usd is not None and max_cost_usd < 0:
            raise ValueError(f"max_cost_usd must be >= 0, got {max_cost_usd}")
        self.max_cost_usd = max_cost_usd
        self._spent = 0.0
        self._reserved = 0.0
        self._lock = threading.Lock()

    @property
    def spent_usd(self) -> float:
        with self._lock:
            return self._spent

    def reserve(self, worst_case_usd: float) -> bool:
        """Set aside ``worst_case_usd``; False (nothing reserved) when it would break the cap."""
        with self._lock:
            if (
                self.max_cost_usd is not None
                and self._spent + self._reserved + worst_case_usd > self.max_cost_usd + 1e-12
            ):
                return False
            self._reserved += worst_case_usd
            return True

    def settle(self, reserved_usd: float, actual_usd: float) -> None:
        """Release a reservation and book what the call really cost."""
        with self._lock:
            self._reserved = max(self._reserved - reserved_usd, 0.0)
            self._spent += actual_usd
