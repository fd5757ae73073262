"""Requests-per-minute and tokens-per-minute limits for the async engine.

Two token buckets (requests, tokens) refilled continuously at limit/60 per second. A bucket holds
at most one second of its rate (and at least one request, or one request's tokens), so a fresh
run does not fire a whole minute's budget in the first second — providers enforce their per-minute
limits over short windows. A request larger than a bucket may run it into debt, which later
requests wait out, so nothing is starved.

Where a limit comes from, in order (as Bespoke Curator does it): the caller's value (``--rpm`` /
``--tpm``), else the provider's ``x-ratelimit-limit-requests`` / ``x-ratelimit-limit-tokens``
response headers, else none (only ``--concurrency`` bounds the load). Each change is logged with its
source. After a 429 every request waits out the server's Retry-After (``cool_down``), so a burst of
workers does not keep hammering a limited endpoint.

Token use is estimated before a request and settled with the real ``usage`` after it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

SOURCE_FLAG = "flag"
SOURCE_HEADER = "header"
SOURCE_NONE = "none"


class TokenBucket:
    """``rate`` units per second, holding at most ``capacity``; ``level`` may go negative (debt)."""

    def __init__(self, per_minute: float, now: float, burst_seconds: float = 1.0,
                 min_capacity: float = 1.0):
        self.per_minute = float(per_minute)
        self.rate = self.per_minute / 60.0
        self.capacity = max(min_capacity, self.rate * burst_seconds)
        self.level = self.capacity
        self.stamp = now

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def wait_time(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` (capped at the capacity) is available."""
        self.refill(now)
        need = min(amount, self.capacity)
        if self.level >= need:
            return 0.0
        return (need - self.level) / self.rate

    def take(self, amount: float) -> None:
        self.level -= amount

    def give_back(self, amount: float) -> None:
        self.level = min(self.capacity, self.level + amount)


@dataclass
class LimitInfo:
    value: float | None
    source: str  # flag | header | none

    def describe(self, unit: str, header: str) -> str:
        if self.value is None:
            return f"no {unit} limit (none given, no {header} header seen)"
        where = {"flag": "given", "header": f"from the {header} response header"}[self.source]
        return f"{unit} limit {self.value:,.0f} ({where})"


class RateLimiter:
    """Await ``acquire(tokens)`` before each request; call ``settle`` with the real usage after."""

    def __init__(self, rpm: float | None = None, tpm: float | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep):
        self._clock = clock
        self._sleep = sleep
        now = clock()
        self.rpm = LimitInfo(rpm, SOURCE_FLAG if rpm else SOURCE_NONE)
        self.tpm = LimitInfo(tpm, SOURCE_FLAG if tpm else SOURCE_NONE)
        self._req = TokenBucket(rpm, now) if rpm else None
        self._tok = TokenBucket(tpm, now) if tpm else None
        self._lock = asyncio.Lock()
        self._paused_until = 0.0
        self.waited_s = 0.0

    def announce(self) -> None:
        """Log which limits are in force and where they came from (once a run really starts)."""
        for info, unit, header in ((self.rpm, "RPM", "x-ratelimit-limit-requests"),
                                   (self.tpm, "TPM", "x-ratelimit-limit-tokens")):
            log.info("%s", info.describe(unit, header))

    async def acquire(self, tokens: int = 0) -> None:
        """Wait until a request of ``tokens`` estimated tokens fits both limits, then take it.
        Waiters are served in arrival order."""
        async with self._lock:
            while True:
                now = self._clock()
                wait = max(0.0, self._paused_until - now)
                if self._req is not None:
                    wait = max(wait, self._req.wait_time(1, now))
                if self._tok is not None and tokens:
                    wait = max(wait, self._tok.wait_time(tokens, now))
                if wait <= 0:
                    break
                self.waited_s += wait
                await self._sleep(wait)
            if self._req is not None:
                self._req.take(1)
            if self._tok is not None and tokens:
                self._tok.take(tokens)

    def settle(self, estimated: int, actual: int | None) -> None:
        """Correct the token bucket once the response's ``usage`` is known."""
        if self._tok is None or actual is None:
            return
        diff = actual - estimated
        if diff > 0:
            self._tok.take(diff)
        elif diff < 0:
            self._tok.give_back(-diff)

    def cool_down(self, seconds: float) -> None:
        """Hold every request for ``seconds`` (after a 429 with Retry-After)."""
        if seconds > 0:
            self._paused_until = max(self._paused_until, self._clock() + seconds)

    def observe_headers(self, headers: Any) -> None:
        """Adopt the provider's advertised limits for any limit the caller did not set."""
        if headers is None:
            return
        for attr, header, unit in (("rpm", "x-ratelimit-limit-requests", "RPM"),
                                   ("tpm", "x-ratelimit-limit-tokens", "TPM")):
            info: LimitInfo = getattr(self, attr)
            if info.source == SOURCE_FLAG:
                continue
            raw = headers.get(header)
            if raw is None:
                continue
            try:
                value = float(raw)
            except ValueError:
                continue
            if value <= 0 or value == info.value:
                continue
            setattr(self, attr, LimitInfo(value, SOURCE_HEADER))
            bucket = TokenBucket(value, self._clock())
            if attr == "rpm":
                self._req = bucket
            else:
                self._tok = bucket
            log.info("%s", getattr(self, attr).describe(unit, header))

    def describe(self) -> dict[str, Any]:
        return {"rpm": self.rpm.value, "rpm_source": self.rpm.source,
                "tpm": self.tpm.value, "tpm_source": self.tpm.source,
                "waited_s": round(self.waited_s, 3)}
