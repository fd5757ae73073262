"""One chat-completions call with retries: the HTTP seam of step 3.

``Caller.call(client, body, est_tokens, stats)`` waits while the run is paused, takes its share of
the RPM/TPM limiter, POSTs ``/chat/completions`` through the ``openai`` client and returns the
completion as a dict. Every failure is classified (``llm.errors.classify``); retryable classes are
retried within ``RetryPolicy.max_retries`` with exponential back-off and jitter, or the server's
Retry-After (which also cools the limiter down for every worker). A run that is stopping raises
``Stopped`` instead of sending. An HTTP 400 that names a parameter the model does not take
(``unsupported_parameter``: ``temperature`` for o-series models, say) is retried once without it,
with a warning, and the parameter is left out of this caller's later requests. ``CallStats`` counts one prompt's attempts, retries, format fixes,
errors and tokens; ``CallObserver`` sees the same events for a run's live totals.

``Caller.retrying`` is the one retry loop: the chat call runs in it, and so do the Batch API
path's file and batch calls (upload, create, list, download; ``generate.batch_api``), so a 429, a
5xx, a timeout or a wrong key is classified and retried (or not) by the same rules everywhere.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from mminstruct.llm.errors import LLMError, ServerError, classify
from mminstruct.llm.limiter import Limiter

log = logging.getLogger(__name__)

T = TypeVar("T")


class Stopped(Exception):
    """The run is stopping: abandon this prompt without recording it."""


@dataclass
class CallStats:
    """One prompt's requests (attempts), retries, format-fix calls, errors by class and tokens."""

    requests: int = 0
    retries: int = 0
    fixes: int = 0
    errors: Counter = field(default_factory=Counter)
    input_tokens: int = 0
    output_tokens: int = 0


class CallObserver:
    """Live run totals: the same events as ``CallStats``, across every prompt (no-ops here)."""

    def on_request(self) -> None:
        pass

    def on_usage(self, input_tokens: int, output_tokens: int) -> None:
        pass

    def on_error(self, kind: str) -> None:
        pass

    def on_retry(self) -> None:
        pass

    def on_success(self) -> None:
        pass

    def on_failure(self, error: Any) -> None:
        """Every failed attempt's ``LLMError`` (after ``on_error``), retried or not."""


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5
    base_delay: float = 1.0
    max_delay: float = 60.0

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        """Seconds before retry ``attempt + 1``: the server's Retry-After (capped at 10 minutes,
        plus up to 10 % jitter), else exponential back-off with full jitter in [cap/2, cap]."""
        if retry_after is not None:
            return min(retry_after, 600.0) * random.uniform(1.0, 1.1)
        cap = min(self.max_delay, self.base_delay * 2 ** attempt)
        return random.uniform(cap / 2, cap)


def without_params(body: dict[str, Any], dropped: set[str]) -> dict[str, Any]:
    """``body`` less the refused parameters; a refused ``max_tokens`` is sent as
    ``max_completion_tokens`` (its name for o-series and GPT-5 models) rather than lost."""
    out = {k: v for k, v in body.items() if k not in dropped}
    if "max_tokens" in dropped and "max_tokens" in body and "max_completion_tokens" not in dropped:
        out.setdefault("max_completion_tokens", body["max_tokens"])
    return out


async def _no_pause() -> None:
    return None


@dataclass
class Caller:
    """Sends chat completions for one run: its limiter, retry policy, timeout and stop signals."""

    limiter: Limiter
    policy: RetryPolicy
    timeout: float
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    wait_while_paused: Callable[[], Awaitable[None]] = _no_pause
    observer: CallObserver = field(default_factory=CallObserver)
    before_attempt: Callable[[], None] = lambda: None  # may stop the run (another shard stopped)
    #: Parameters the endpoint refused as unsupported: left out of every later body.
    dropped_params: set[str] = field(default_factory=set)

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set()

    async def call(self, client: Any, body: dict[str, Any], est_tokens: int,
                   stats: CallStats) -> dict[str, Any]:
        """The completion for ``body`` (``est_tokens``: input + expected output, for the TPM
        limit), retried as the error classes allow; raises the last ``LLMError`` or ``Stopped``."""
        dropped_retry = False

        async def send() -> dict[str, Any]:
            nonlocal body
            if self.dropped_params:
                body = without_params(body, self.dropped_params)
            self.before_attempt()
            if self.stopping:
                raise Stopped
            await self.wait_while_paused()
            await self.limiter.acquire(est_tokens)
            if self.stopping:
                raise Stopped
            stats.requests += 1
            self.observer.on_request()
            try:
                completion = await self.post(client, body)
            except Exception as exc:
                response = getattr(exc, "response", None)
                if response is not None:
                    self.limiter.observe_headers(response.headers)
                raise
            usage = completion.get("usage") or {}
            used_in = int(usage.get("prompt_tokens") or 0)
            used_out = int(usage.get("completion_tokens") or 0)
            stats.input_tokens += used_in
            stats.output_tokens += used_out
            self.observer.on_usage(used_in, used_out)
            self.limiter.settle(est_tokens, used_in + used_out if usage else None)
            self.observer.on_success()
            return completion

        def drop_param(err: LLMError) -> bool:
            """An unsupported parameter: sent again without it, once per prompt, and not counted
            against max_retries (the body was wrong, not the server)."""
            nonlocal dropped_retry
            if not (err.param and err.param in body and not dropped_retry):
                return False
            dropped_retry = True
            if err.param not in self.dropped_params:
                log.warning("the endpoint refused the parameter %r for model %r (%s); "
                            "sending again without it", err.param, body.get("model"), err)
            self.dropped_params.add(err.param)
            return True

        return await self.retrying(send, stats, free_retry=drop_param)

    async def retrying(self, send: Callable[[], Awaitable[T]], stats: CallStats, *,
                       what: str | None = None,
                       before_retry: Callable[[], Awaitable[Any]] | None = None,
                       free_retry: Callable[[LLMError], bool] | None = None,
                       sleep: Callable[[float], Awaitable[None]] | None = None,
                       max_retries: int | None = None) -> T:
        """The one retry loop: ``send()`` until it returns. Every failure is classified once
        (``llm.errors.classify`` → its ``RULES`` entry), counted (``stats``, the observer) and
        retried if its class allows, within ``policy.max_retries``, after ``policy.backoff`` (a
        429's Retry-After also cools the limiter down); otherwise the ``LLMError`` is raised.
        A stop during the wait raises ``Stopped``.

        For the chat call and the Batch API's file and batch calls. ``what``: a name for a
        warning per retry (else a debug line); ``before_retry``: looked at before each retry —
        something truthy it returns is the result (a batch whose creation answer was lost);
        ``free_retry(err)``: True to send again at once, not counted as an attempt; ``sleep``:
        the wait between attempts (default: until the delay passes or the run stops);
        ``max_retries``: in place of the policy's (0 for a call whose caller retries later)."""
        limit = self.policy.max_retries if max_retries is None else max_retries
        attempt = -1
        while attempt < limit:
            attempt += 1
            try:
                return await send()
            except (asyncio.CancelledError, Stopped):
                raise
            except Exception as exc:  # every failure is classified; none escapes unnamed
                err = classify(exc)
            stats.errors[err.kind] += 1
            self.observer.on_error(err.kind)
            self.observer.on_failure(err)
            if free_retry is not None and free_retry(err):
                attempt -= 1
                stats.retries += 1
                self.observer.on_retry()
                continue
            if not err.retryable or attempt >= limit:
                raise err
            if err.kind == "rate_limit" and err.retry_after:
                self.limiter.cool_down(err.retry_after)
            delay = self.policy.backoff(attempt, err.retry_after)
            stats.retries += 1
            self.observer.on_retry()
            if what is None:
                log.debug("%s (attempt %d); retrying in %.2fs", err, attempt + 1, delay)
            else:
                log.warning("%s failed (%s); retrying in %.1fs", what, err, delay)
            await (sleep or self._stoppable_sleep)(delay)
            if self.stopping:
                raise Stopped
            if before_retry is not None:
                found = await before_retry()
                if found:
                    return found
                if self.stopping:
                    raise Stopped
        raise RuntimeError("unreachable: the retry loop returns or raises")  # pragma: no cover

    async def _stoppable_sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.stop_event.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass

    async def post(self, client: Any, body: dict[str, Any]) -> dict[str, Any]:
        """POST /chat/completions through the openai client (its auth, base URL, Azure routing,
        timeout and error classes), taking the raw HTTP response: the typed ``create`` walks
        every message part — megabytes of base64 images — through its parameter transformer,
        ~7 ms of CPU a request, which capped a 2-core machine near 50 requests/s."""
        import httpx2

        resp = await client.post("/chat/completions", cast_to=httpx2.Response, body=body,
                                 options={"timeout": self.timeout})
        self.limiter.observe_headers(resp.headers)
        try:
            data = resp.json()
        except ValueError as e:
            raise ServerError(f"HTTP {resp.status_code}: the body is not JSON: "
                              f"{resp.text[:200]!r}") from e
        if not isinstance(data, dict):
            raise ServerError(f"HTTP {resp.status_code}: the body is a "
                              f"{type(data).__name__}, not a chat completion")
        return data
