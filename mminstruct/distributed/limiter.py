"""One RPM/TPM budget for a whole Ray cluster: a limiter actor and the proxy each worker uses.

The local engine's ``llm.limiter.RateLimiter`` keeps two token buckets in one process. With shards
on several machines the provider's limit is still one limit, so the buckets move into one Ray
actor (``LimiterState``, which holds an ``llm.limiter.Buckets``: the local limiter's own grant,
refill and debt arithmetic) and every worker's engine gets a ``ClusterLimiter`` in place of its
own limiter: the same ``llm.limiter.Limiter`` interface the engine calls (``acquire``,
``settle``, ``cool_down``, ``observe_headers``, ``announce``, ``describe``).

Round trips are kept few: a worker asks for permits for as many of its requests as are waiting
(up to ``batch``) in one call, keeps the spare ones for a short ``lease_seconds`` (then drops them,
so a permit cannot be saved up for a later burst), and sends the token corrections of finished
requests (``settle``) along with its next call. ``cool_down`` (a 429's Retry-After) and limits
learned from response headers are sent without waiting for an answer. Whatever the batching,
every permit comes out of the actor's buckets, so the cluster as a whole never sends more than a
bucket's capacity (one second of the rate) plus the rate times the elapsed time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from mminstruct.llm.limiter import (HEADERS, SOURCE_FLAG, SOURCE_HEADER, Buckets, LimitInfo,
                                    header_limits)

log = logging.getLogger(__name__)

#: (requests granted, tokens granted, seconds to wait before asking again, the actor's describe())
Grant = tuple[int, float, float, dict[str, Any]]


class LimiterState:
    """The cluster's buckets: ``llm.limiter.Buckets`` (the local limiter's arithmetic) behind the
    batched ``take`` a worker calls. Runs as a Ray actor (``start_limiter_actor``); a plain class,
    so it can also be driven in-process (``LocalBackend``), e.g. by tests with a fake clock."""

    def __init__(self, rpm: float | None = None, tpm: float | None = None, *,
                 clock: Callable[[], float] = time.monotonic):
        self.buckets = Buckets(rpm, tpm, clock=clock)
        self.calls = 0
        self.granted_requests = 0

    def take(self, want_requests: int, want_tokens: float, settle: float = 0.0) -> Grant:
        """``settle`` (tokens used beyond, or negative, below earlier estimates), then
        ``Buckets.grant``: up to ``want_requests`` request permits with all of ``want_tokens``, or
        nothing and how long to wait before asking again."""
        self.calls += 1
        self.buckets.settle(settle)
        granted_req, granted_tok, wait = self.buckets.grant(want_requests, want_tokens)
        self.granted_requests += granted_req
        return granted_req, granted_tok, wait, self.describe()

    def cool_down(self, seconds: float) -> None:
        self.buckets.cool_down(seconds)

    def observe(self, which: str, value: float) -> None:
        """A limit a worker read from the provider's headers; adopted unless the user set it."""
        self.buckets.adopt(which, value)

    def describe(self) -> dict[str, Any]:
        return {**self.buckets.describe(), "calls": self.calls,
                "granted_requests": self.granted_requests}


class LocalBackend:
    """``LimiterState`` in this process, behind the interface ``ClusterLimiter`` talks to."""

    def __init__(self, state: LimiterState):
        self.state = state

    async def take(self, want_requests: int, want_tokens: float, settle: float) -> Grant:
        return self.state.take(want_requests, want_tokens, settle)

    def cool_down(self, seconds: float) -> None:
        self.state.cool_down(seconds)

    def observe(self, which: str, value: float) -> None:
        self.state.observe(which, value)


class RayBackend:
    """The limiter actor, called from a worker's event loop (Ray object refs are awaitable)."""

    def __init__(self, handle: Any):
        self.handle = handle

    async def take(self, want_requests: int, want_tokens: float, settle: float) -> Grant:
        return await self.handle.take.remote(want_requests, want_tokens, settle)

    def cool_down(self, seconds: float) -> None:
        self.handle.cool_down.remote(seconds)  # no answer needed

    def observe(self, which: str, value: float) -> None:
        self.handle.observe.remote(which, value)


def start_limiter_actor(rpm: float | None, tpm: float | None) -> Any:
    """Start the cluster's limiter actor (no CPU reserved: it only does arithmetic)."""
    from mminstruct.distributed.cluster import require_ray

    ray = require_ray()
    actor = ray.remote(num_cpus=0, max_restarts=3, max_task_retries=3)(LimiterState)
    return actor.remote(rpm, tpm)


class ClusterLimiter:
    """The ``llm.limiter.Limiter`` of a worker on a Ray cluster (in place of ``RateLimiter``);
    see the module docstring."""

    def __init__(self, backend: Any, rpm: float | None = None, tpm: float | None = None, *,
                 batch: int = 8, lease_seconds: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep):
        self._backend = backend
        self.batch = max(1, int(batch))
        self.lease_seconds = float(lease_seconds)
        self._clock, self._sleep = clock, sleep
        self.rpm = LimitInfo.given(rpm)
        self.tpm = LimitInfo.given(tpm)
        self._permits = 0
        self._credit = 0.0
        self._lease_at = 0.0
        self._settle = 0.0
        self._waiting = 0
        self._paused_until = 0.0
        self._lock: asyncio.Lock | None = None
        self._info: dict[str, Any] = {}
        self.waited_s = 0.0
        self.round_trips = 0

    async def acquire(self, tokens: int = 0) -> None:
        """Wait until a request of ``tokens`` estimated tokens fits the cluster's limits."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        self._waiting += 1
        try:
            async with self._lock:
                await self._fill(tokens)
                if self.rpm.value:
                    self._permits -= 1
                if self.tpm.value and tokens:
                    self._credit -= tokens
        finally:
            self._waiting -= 1

    async def _fill(self, tokens: int) -> None:
        while True:
            now = self._clock()
            if now - self._lease_at > self.lease_seconds:
                self._expire()
            if self._paused_until > now:
                await self._wait(self._paused_until - now)
                continue
            need_req = bool(self.rpm.value) and self._permits < 1
            need_tok = bool(self.tpm.value) and tokens > 0 and self._credit < tokens
            if not (need_req or need_tok):
                return
            n = max(1, min(self.batch, self._waiting))
            want_req = n - self._permits if need_req else 0
            want_tok = 0.0
            if need_tok:  # tokens for as many requests as one second's budget holds
                n_tok = max(1, min(n, int((self.tpm.value or 0) / 60 // max(tokens, 1))))
                want_tok = tokens * n_tok - self._credit
            settle, self._settle = self._settle, 0.0
            g_req, g_tok, wait, info = await self._backend.take(want_req, want_tok, settle)
            self.round_trips += 1
            self._info = info
            if g_req or g_tok:
                self._lease_at = self._clock()
            self._permits += g_req
            self._credit += g_tok
            short = (bool(self.rpm.value) and self._permits < 1) or \
                (need_tok and self._credit < tokens)
            if short:
                await self._wait(wait if wait > 0 else 0.01)

    async def _wait(self, seconds: float) -> None:
        self.waited_s += seconds
        await self._sleep(seconds)

    def _expire(self) -> None:
        """Spare permits older than the lease are dropped (never saved up for a burst); spare
        tokens go back to the cluster with the next call."""
        self._permits = 0
        if self._credit > 0:
            self._settle -= self._credit
        self._credit = 0.0

    def settle(self, estimated: int, actual: int | None) -> None:
        if self.tpm.value and actual is not None:
            self._settle += actual - estimated

    def cool_down(self, seconds: float) -> None:
        if seconds > 0:
            self._paused_until = max(self._paused_until, self._clock() + seconds)
            self._backend.cool_down(seconds)

    def observe_headers(self, headers: Any) -> None:
        for which, header, value in header_limits(headers):
            info: LimitInfo = getattr(self, which)
            if info.source == SOURCE_FLAG or value == info.value:
                continue
            setattr(self, which, LimitInfo(value, SOURCE_HEADER))
            self._backend.observe(which, value)
            log.info("%s", getattr(self, which).describe(which.upper(), header))

    def announce(self) -> None:
        """Log the limits this worker starts with (the cluster actor holds the buckets)."""
        for which, header in HEADERS:
            log.info("%s (shared by the cluster)",
                     getattr(self, which).describe(which.upper(), header))

    def describe(self) -> dict[str, Any]:
        info = self._info
        return {"rpm": info.get("rpm", self.rpm.value),
                "rpm_source": info.get("rpm_source", self.rpm.source),
                "tpm": info.get("tpm", self.tpm.value),
                "tpm_source": info.get("tpm_source", self.tpm.source),
                "waited_s": round(self.waited_s, 3), "scope": "cluster",
                "round_trips": self.round_trips}


__all__ = ["LimiterState", "ClusterLimiter", "LocalBackend", "RayBackend", "start_limiter_actor",
           "Grant"]
