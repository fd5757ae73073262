"""Steering and watching a run from outside: cancel, pause, and the live status.

* ``RunControl``: ``cancel()`` / ``pause()`` / ``unpause()`` from any thread (``threading.Event``),
  or — from another process, such as the app's background-run manager — the flag files
  ``CANCEL`` and ``PAUSE`` in the run folder (``request_cancel`` / ``request_pause``). The engine
  checks them between requests: a pause stops new requests (those in flight finish and are
  recorded); a cancel stops new requests, lets those in flight finish for ``cancel_grace``
  seconds, then abandons the rest — unrecorded, so ``--resume`` sends them again.
* ``EarlyStop``: watches the first finished prompts of a session and says when they all failed for
  good the same way (a wrong key behind a proxy answering HTTP 400, say), so the run stops early;
  and watches every attempt: ``TRANSIENT_STOP_AFTER`` failed attempts (5xx, timeouts, dropped
  connections) before the session's first success stop the run too, rather than each prompt
  spending its retries (an endpoint answering 500 to everything spent 400 requests before).
* ``RunStatus``: counts, tokens, rate and limits; the engine rewrites ``status.json`` in the run
  folder atomically every ``status_interval`` seconds and passes the same object to the
  ``on_progress`` callback. ``read_status(run_dir)`` reads it back.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mminstruct.errors import DataFileError
from mminstruct.generate.runlog import RunDir

FLAG_CHECK_INTERVAL = 0.25

#: Failures of the request itself (what the server answered, or no answer after the retries) —
#: not of the model's text or of our own files — that count towards an early stop.
EARLY_STOP_CLASSES = frozenset({"bad_request", "content_filter", "context_length", "image_rejected",
                                "server", "connection", "timeout"})


#: Failed attempts (of ``TRANSIENT_CLASSES``, retried or not) before any success of the session
#: after which the run stops: a run against an endpoint that fails everything spends at most this
#: many requests plus those already in flight (≤ ``concurrency``) when it stops.
TRANSIENT_STOP_AFTER = 24
TRANSIENT_CLASSES = frozenset({"server", "connection", "timeout"})


class EarlyStop:
    """The early stop of a run: when the first ``after`` finished prompts of a session all failed
    for good with the same error class and HTTP status, ``see`` returns the error to stop with,
    quoting what the server answered. Those prompts — and any that fail the same way while the
    run stops — are ``resend()``: the engine leaves them for ``--resume`` to send again."""

    def __init__(self, after: int, transient_after: int = TRANSIENT_STOP_AFTER):
        self.after = after  # 0: off (disabled, or the run's start was not all alike failures)
        self.first: list[dict[str, Any]] = []
        self.triggered = False
        self.error: Any = None  # the LLMError the run stops with, once triggered
        self.transient_after = transient_after  # 0: off
        self.transient_failures = 0
        self.succeeded = False

    def attempt(self, error: Any | None) -> Exception | None:
        """One request's end (``error`` None: a success): the error to stop the run with once
        ``transient_after`` attempts failed transiently before any success, else None."""
        if error is None:
            self.succeeded = True
            return None
        if self.triggered or self.succeeded or not self.transient_after \
                or error.kind not in TRANSIENT_CLASSES:
            return None
        self.transient_failures += 1
        if self.transient_failures < self.transient_after:
            return None
        from mminstruct.llm.errors import BY_KIND

        self.triggered = True
        self.error = BY_KIND[error.kind](
            f"{self.transient_failures} requests failed and none succeeded; the server "
            f"answered: {error}", status=error.status)
        return self.error

    def _same(self, rec: dict[str, Any]) -> bool:
        if rec.get("outcome") != "failed" or rec.get("error_class") not in EARLY_STOP_CLASSES:
            return False
        head = self.first[0] if self.first else rec
        return (rec["error_class"], rec.get("status")) == (head["error_class"], head.get("status"))

    def see(self, rec: dict[str, Any], *, stopping: bool = False) -> Exception | None:
        if self.triggered:
            if self._same(rec):
                self.first.append(rec)
            return None
        if not self.after or stopping:
            return None
        if not self._same(rec):
            self.after = 0
            return None
        self.first.append(rec)
        if len(self.first) < self.after:
            return None
        from mminstruct.llm.errors import BY_KIND

        self.triggered = True
        head = self.first[0]
        said = "; the server answered: " if head.get("status") is not None else ": "
        self.error = BY_KIND[head["error_class"]](
            f"the first {len(self.first)} requests all failed the same way{said}"
            f"{head.get('message', '')}", status=head.get("status"))
        return self.error

    def resend(self, start: int = 0, end: int | None = None) -> list[int]:
        """The prompts (of ``[start, end)``) to send again on --resume."""
        if not self.triggered:
            return []
        return sorted(i for i in (r["prompt_idx"] for r in self.first)
                      if start <= i and (end is None or i < end))


class RunControl:
    """Cancel/pause hooks for a run; safe to call from other threads."""

    def __init__(self) -> None:
        self._cancel = threading.Event()
        self._pause = threading.Event()
        self._dirs: list[Path] = []
        self._checked = 0.0
        self._flag_cancel = False
        self._flag_pause = False

    def cancel(self) -> None:
        self._cancel.set()

    def pause(self) -> None:
        self._pause.set()

    def unpause(self) -> None:
        self._pause.clear()
        for d in self._dirs:
            try:
                RunDir.at(d).pause_flag.unlink()
            except FileNotFoundError:
                pass
        self._flag_pause = False

    def attach(self, run_dir: Path) -> None:
        """Also obey the flag files in ``run_dir``."""
        if run_dir not in self._dirs:
            self._dirs.append(run_dir)

    def _poll_flags(self) -> None:
        now = time.monotonic()
        if now - self._checked < FLAG_CHECK_INTERVAL:
            return
        self._checked = now
        self._flag_cancel = any(RunDir.at(d).cancel_flag.exists() for d in self._dirs)
        self._flag_pause = any(RunDir.at(d).pause_flag.exists() for d in self._dirs)

    @property
    def cancelled(self) -> bool:
        if self._cancel.is_set():
            return True
        self._poll_flags()
        return self._flag_cancel

    @property
    def paused(self) -> bool:
        if self._pause.is_set():
            return True
        self._poll_flags()
        return self._flag_pause

    async def wait_while_paused(self) -> None:
        while self.paused and not self.cancelled:
            await asyncio.sleep(0.1)


def request_cancel(run_dir: str | os.PathLike) -> None:
    """Ask the process running ``run_dir`` to cancel (it checks within a quarter second)."""
    RunDir.at(run_dir).cancel_flag.touch()


def request_pause(run_dir: str | os.PathLike, paused: bool = True) -> None:
    flag = RunDir.at(run_dir).pause_flag
    if paused:
        flag.touch()
    else:
        try:
            flag.unlink()
        except FileNotFoundError:
            pass


def clear_flags(run_dir: Path) -> None:
    run = RunDir.at(run_dir)
    for flag in (run.cancel_flag, run.pause_flag):
        try:
            flag.unlink()
        except FileNotFoundError:
            pass


@dataclass
class RunStatus:
    """A run's progress. ``done``/``ok``/``failed`` include prompts finished by earlier sessions
    of a resumed run; the rest counts this session."""

    run_dir: str = ""
    state: str = "starting"  # running | paused | cancelling | finished | cancelled | stopped
    model: str = ""
    mode: str = ""
    total: int = 0
    done: int = 0
    ok: int = 0
    failed: int = 0
    failed_by_class: dict[str, int] = field(default_factory=dict)
    errors_by_class: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    retries: int = 0
    format_fixes: int = 0
    items: int = 0
    wrong_item_count: int = 0
    dropped_items: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    in_flight: int = 0
    rate_per_s: float = 0.0
    elapsed_s: float = 0.0
    eta_s: float | None = None
    limits: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    output: str | None = None
    manifest: str | None = None
    updated: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        fails = ", ".join(f"{n} {k}" for k, n in sorted(self.failed_by_class.items()))
        eta = f", ETA {self.eta_s:.0f}s" if self.eta_s is not None else ""
        return (f"{self.done}/{self.total} prompts ({self.ok} ok, {self.failed} failed"
                f"{': ' + fails if fails else ''}), {self.rate_per_s:.1f}/s{eta}, "
                f"{self.input_tokens + self.output_tokens:,} tokens")


class StatusTracker:
    """Live counters behind ``RunStatus``; ``rate_per_s`` is over the last ``window`` seconds."""

    def __init__(self, status: RunStatus, window: float = 30.0):
        self.status = status
        self.window = window
        self.started = time.monotonic()
        self._finish_times: deque[float] = deque()
        self.failed_by_class: Counter[str] = Counter(status.failed_by_class)
        self.errors_by_class: Counter[str] = Counter()

    def finished(self, ok: bool, error_class: str | None, n_items: int = 0,
                 wrong_count: bool = False, dropped: int = 0) -> None:
        s = self.status
        s.done += 1
        if ok:
            s.ok += 1
            s.items += n_items
            s.wrong_item_count += int(wrong_count)
            s.dropped_items += dropped
        else:
            s.failed += 1
            self.failed_by_class[error_class or "unknown"] += 1
        self._finish_times.append(time.monotonic())

    def snapshot(self) -> RunStatus:
        s = self.status
        now = time.monotonic()
        cutoff = now - self.window
        while self._finish_times and self._finish_times[0] < cutoff:
            self._finish_times.popleft()
        s.elapsed_s = round(now - self.started, 3)
        span = min(self.window, now - self.started)
        s.rate_per_s = round(len(self._finish_times) / span, 3) if span > 0 else 0.0
        left = s.total - s.done
        s.eta_s = round(left / s.rate_per_s, 1) if s.rate_per_s > 0 else None
        s.failed_by_class = dict(self.failed_by_class)
        s.errors_by_class = dict(self.errors_by_class)
        s.updated = time.time()
        return s


def read_status(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The last status a run wrote (for a watcher in another process)."""
    p = RunDir.at(run_dir).status_path
    try:
        return json.loads(p.read_text())
    except FileNotFoundError as e:
        raise DataFileError(f"{p}: no status yet (the run has not started)") from e
    except (OSError, json.JSONDecodeError) as e:
        raise DataFileError(f"{p}: cannot be read: {e}") from e
