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

One interface, two places the buckets live: ``Limiter`` is what the engine calls (``acquire``,
``settle``, ``cool_down``, ``observe_headers``, ``announce``, ``describe``). ``RateLimiter`` keeps
the ``Buckets`` in this process; ``distributed.limiter.ClusterLimiter`` asks a Ray actor that holds
the same ``Buckets`` (``LimiterState``), so the refill, grant and debt arithmetic exists once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

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

    @classmethod
    def given(cls, value: float | None) -> LimitInfo:
        """A limit the caller set (``--rpm``/``--tpm``), or none."""
        return cls(value, SOURCE_FLAG if value else SOURCE_NONE)

    def describe(self, unit: str, header: str) -> str:
        if self.value is None:
            return f"no {unit} limit (none given, no {header} header seen)"
        where = {"flag": "given", "header": f"from the {header} response header"}[self.source]
        return f"{unit} limit {self.value:,.0f} ({where})"


#: (attribute, response header) of each limit.
HEADERS = (("rpm", "x-ratelimit-limit-requests"), ("tpm", "x-ratelimit-limit-tokens"))


def header_limits(headers: Any) -> list[tuple[str, str, float]]:
    """(``rpm``|``tpm``, header, value) for each positive limit a response advertises."""
    if headers is None:
        return []
    out = []
    for which, header in HEADERS:
        raw = headers.get(header)
        if raw is None:
            continue
        try:
            value = float(raw)
        except ValueError:
            continue
        if value > 0:
            out.append((which, header, value))
    return out


class Buckets:
    """The RPM and TPM buckets, a 429's pause and where each limit came from: the arithmetic of
    both limiters (``RateLimiter`` here, ``distributed.limiter.LimiterState`` as a Ray actor)."""

    def __init__(self, rpm: float | None = None, tpm: float | None = None, *,
                 clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        now = clock()
        self.rpm = LimitInfo.given(rpm)
        self.tpm = LimitInfo.given(tpm)
        self.req = TokenBucket(rpm, now) if rpm else None
        self.tok = TokenBucket(tpm, now) if tpm else None
        self.paused_until = 0.0

    def grant(self, want_requests: int, want_tokens: float) -> tuple[int, float, float]:
        """(requests, tokens, wait): up to ``want_requests`` request permits (as many as the
        bucket holds now) together with all of ``want_tokens`` — or nothing, and the seconds until
        what was asked for is there (for requests: the whole batch, up to a bucket's worth, so a
        caller at the limit comes back once per batch). A request larger than the token bucket
        may run it into debt, which later requests wait out."""
        now = self.clock()
        pause = self.paused_until - now
        if pause > 0:
            return 0, 0.0, pause
        n_req = max(0, int(want_requests))
        n_tok = max(0.0, float(want_tokens))
        wait = 0.0
        if self.req is not None and n_req:
            self.req.refill(now)
            fit = min(n_req, max(0, math.floor(self.req.level + 1e-9)))
            if fit:
                n_req = fit
            else:
                wait = self.req.wait_time(n_req, now)
        if self.tok is not None and n_tok:
            wait = max(wait, self.tok.wait_time(n_tok, now))
        if wait > 0:
            return 0, 0.0, wait
        if self.req is not None and n_req:
            self.req.take(n_req)
        if self.tok is not None and n_tok:
            self.tok.take(n_tok)
        return n_req, n_tok, 0.0

    def settle(self, extra_tokens: float) -> None:
        """Tokens used beyond (or, negative, below) what was taken for them."""
        if self.tok is None or not extra_tokens:
            return
        if extra_tokens > 0:
            self.tok.take(extra_tokens)
        else:
            self.tok.give_back(-extra_tokens)

    def cool_down(self, seconds: float) -> None:
        if seconds > 0:
            self.paused_until = max(self.paused_until, self.clock() + float(seconds))

    def adopt(self, which: str, value: float) -> bool:
        """A limit read from the provider's headers, adopted (a fresh bucket) unless the caller
        set that limit or it is unchanged; True when adopted."""
        info: LimitInfo = getattr(self, which)
        if info.source == SOURCE_FLAG or value <= 0 or value == info.value:
            return False
        setattr(self, which, LimitInfo(float(value), SOURCE_HEADER))
        bucket = TokenBucket(float(value), self.clock())
        if which == "rpm":
            self.req = bucket
        else:
            self.tok = bucket
        return True

    def describe(self) -> dict[str, Any]:
        return {"rpm": self.rpm.value, "rpm_source": self.rpm.source,
                "tpm": self.tpm.value, "tpm_source": self.tpm.source}


@runtime_checkable
class Limiter(Protocol):
    """What the engine (``llm.calls.Caller``, ``generate.job``) calls on a rate limiter."""

    async def acquire(self, tokens: int = 0) -> None:
        """Wait until a request of ``tokens`` estimated tokens fits, then take it."""

    def settle(self, estimated: int, actual: int | None) -> None:
        """Correct the token budget once the response's ``usage`` is known."""

    def cool_down(self, seconds: float) -> None:
        """Hold every request for ``seconds`` (a 429's Retry-After)."""

    def observe_headers(self, headers: Any) -> None:
        """Adopt the provider's advertised limits for any limit the caller did not set."""

    def announce(self) -> None:
        """Log the limits in force and where they came from."""

    def describe(self) -> dict[str, Any]:
        """The limits, their sources and the time waited (for the status and manifest)."""


class RateLimiter:
    """The ``Limiter`` of one process: await ``acquire(tokens)`` before each request; call
    ``settle`` with the real usage after."""

    def __init__(self, rpm: float | None = None, tpm: float | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep):
        self._sleep = sleep
        self.buckets = Buckets(rpm, tpm, clock=clock)
        self._lock = asyncio.Lock()
        self.waited_s = 0.0

    @property
    def rpm(self) -> LimitInfo:
        return self.buckets.rpm

    @property
    def tpm(self) -> LimitInfo:
        return self.buckets.tpm

    def announce(self) -> None:
        """Log which limits are in force and where they came from (once a run really starts)."""
        for which, header in HEADERS:
            log.info("%s", getattr(self, which).describe(which.upper(), header))

    async def acquire(self, tokens: int = 0) -> None:
        """Wait until a request of ``tokens`` estimated tokens fits both limits, then take it.
        Waiters are served in arrival order."""
        async with self._lock:
            while True:
                _, _, wait = self.buckets.grant(1, tokens)
                if wait <= 0:
                    return
                self.waited_s += wait
                await self._sleep(wait)

    def settle(self, estimated: int, actual: int | None) -> None:
        """Correct the token bucket once the response's ``usage`` is known."""
        if actual is not None:
            self.buckets.settle(actual - estimated)

    def cool_down(self, seconds: float) -> None:
        """Hold every request for ``seconds`` (after a 429 with Retry-After)."""
        self.buckets.cool_down(seconds)

    def observe_headers(self, headers: Any) -> None:
        """Adopt the provider's advertised limits for any limit the caller did not set."""
        for which, header, value in header_limits(headers):
            if self.buckets.adopt(which, value):
                log.info("%s", getattr(self, which).describe(which.upper(), header))

    def describe(self) -> dict[str, Any]:
        return {**self.buckets.describe(), "waited_s": round(self.waited_s, 3)}
