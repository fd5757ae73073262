"""The generation engine: prompts in, one run-log line per finished prompt out, then the output.

Flow of one run (``run_async``):

1. The prompt file is opened as a stream (header + count; prompts are read one at a time).
2. A run folder is created — or, with ``resume``, the latest unfinished run of the same
   ``file_prefix`` is reopened after checking that everything deciding the content (prompt file,
   range, model, image size, …) is unchanged; the prompts its log already holds are skipped.
3. A producer feeds a bounded queue; ``concurrency`` workers take prompts, build the request
   (images encoded once, cached), wait on the RPM/TPM limiter, call the endpoint, parse the
   answer (with a format-fix call if needed) and append the outcome to the log. Retries use
   exponential back-off with jitter, or the server's Retry-After on 429/5xx, within
   ``max_retries``. A class that would fail every prompt (quota, auth, unknown model) stops the
   run, leaving the rest unfinished for ``--resume``; so do ``job.EARLY_STOP_AFTER`` first requests
   (of all shards) failing for good alike (``control.EarlyStop``: a proxy's HTTP 400 for a wrong
   key, say), quoting the server, and ``control.TRANSIENT_STOP_AFTER`` attempts failing with 5xx /
   timeouts / connection errors before any success; ``--resume`` sends those prompts again. On
   a wrong key, an unknown model or an early stop, dispatch stops at once and the requests in
   flight are cancelled (at most ``concurrency`` more are spent); a user's cancel gives them
   ``cancel_grace`` seconds.
4. When every prompt of the range has a record, the MM-Gen output file and the manifest are
   written atomically and the run is marked finished.

Memory is bounded by the queue, the in-flight requests and the image cache — not by the number
of prompts. The per-prompt work shared with the Batch API path (request building, records,
answer parsing with format fixes, status, the output) is ``job.RunJob``'s; the HTTP call with
retries is ``llm.calls.Caller``'s; this module adds the queue and the workers. ``Shared`` holds
what several runs (the shards of batch_data_generator) share: the
clients (a pool of ``openai`` clients of ~32 connections each, every worker bound to one), the
limiter, the image cache and a semaphore bounding requests in flight across them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from mminstruct.data.formats import PromptEntry
from mminstruct.llm.calls import CallStats, Stopped
from mminstruct.llm.errors import BadPromptError, ImageFileError, LLMError
from mminstruct.generate.config import GenerationConfig, resolved_range
from mminstruct.generate.control import RunControl, clear_flags
from mminstruct.generate.job import ProgressCallback, RunJob, RunResult, Shared
from mminstruct.generate.jsonstream import PromptStream
from mminstruct.generate.runlog import RunLog, open_or_create_run

__all__ = ["JobKind", "OnlineJob", "ProgressCallback", "RunResult", "Shared", "run_async", "run_generation"]

log = logging.getLogger(__name__)


class OnlineJob(RunJob):
    """A run through the online chat-completions API: a producer, ``concurrency`` workers."""

    async def execute(self) -> RunResult:
        cfg = self.cfg
        done = self.finished_before()
        clear_flags(self.run.path)
        self.control.attach(self.run.path)
        self.run.update_meta(state="running")
        self.runlog = RunLog(self.run.log_path, cfg.fsync_interval)
        queue: asyncio.Queue = asyncio.Queue(maxsize=max(16, min(cfg.concurrency, 4096)))
        n_workers = min(cfg.concurrency, max(1, self.n - len(done)))
        producer = asyncio.create_task(self._produce(queue, done, n_workers))
        clients = self.shared.clients
        workers = [asyncio.create_task(self._work(queue, clients[k % len(clients)]))
                   for k in range(n_workers)]
        ticker = asyncio.create_task(self.tick())
        tasks = [producer, *workers]
        everything = asyncio.gather(*tasks)
        # Cancelled workers leave their CancelledError on the gathering future; read it, or asyncio
        # logs "_GatheringFuture exception was never retrieved" at exit.
        everything.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            await self._supervise(everything, tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            ticker.cancel()
            self.runlog.close()
        return self.finish()

    async def _supervise(self, everything: asyncio.Future, tasks: list[asyncio.Task]) -> None:
        while True:
            done, _ = await asyncio.wait({everything}, timeout=0.2)
            if done:
                everything.result()
                return
            self.follow_early_stop()
            if not self.stopping and self.control.cancelled:
                log.warning("cancel requested: no new requests; waiting up to %.0fs for the %d "
                            "in flight", self.cfg.cancel_grace, self.in_flight)
                self.begin_stop()
            if self.stopping:  # requests in flight may still succeed: give them the grace
                grace = 0.0 if self.doomed() else self.cfg.cancel_grace
                done, _ = await asyncio.wait({everything}, timeout=grace) if grace else (set(), None)
                if not done:
                    for t in tasks:
                        t.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                else:
                    everything.result()
                return

    def doomed(self) -> bool:
        """Whether the requests in flight will fail like the one that stopped the run (a wrong key,
        an unknown model, the early stop): they are cancelled at once, not given the grace."""
        err = self.stop_error
        return err is not None and (err.kind in ("auth", "not_found") or self.early_stop.triggered)

    async def _produce(self, queue: asyncio.Queue, done: set[int], n_workers: int) -> None:
        try:
            skipped = 0
            for idx, entry in self.stream.entries(self.start, self.start + self.n):
                if idx in done:
                    skipped += 1
                    if skipped % 2000 == 0:
                        await asyncio.sleep(0)
                    continue
                if self.stopping:
                    break
                await self.control.wait_while_paused()
                await queue.put((idx, entry))
        finally:
            for _ in range(n_workers):
                await queue.put(None)

    async def _work(self, queue: asyncio.Queue, client: Any) -> None:
        while True:
            item = await queue.get()
            if item is None:
                return
            if self.stopping:
                continue
            idx, entry = item
            async with self.shared.semaphore:
                if self.stopping:
                    continue
                self.in_flight += 1
                try:
                    rec = await self._process(idx, entry, client)
                finally:
                    self.in_flight -= 1
            if rec is not None:
                self.record(rec)

    async def _process(self, idx: int, entry: PromptEntry | BadPromptError,
                       client: Any) -> dict | None:
        base = self.base(idx, entry)
        stats = CallStats()
        t0 = time.monotonic()
        try:
            body, built = await self.request(entry)
        except (ImageFileError, BadPromptError) as e:
            return self.failure(base, e, stats, t0)
        try:
            completion = await self.caller.call(client, body, self.estimate(built.token_estimate), stats)
            result, finish = await self.parse_answer(client, completion, stats)
        except Stopped:
            return None
        except LLMError as e:
            if e.stops_run:
                self.begin_stop(e)
                return None
            return self.failure(base, e, stats, t0)
        return {**base, "outcome": "ok", "items": result.items, "n_items": len(result.items),
                "n_expected": self.n_expected, "dropped": result.dropped, "parse": result.how,
                "finish_reason": finish, **self.stats_json(stats, t0)}


# ----------------------------------------------------------------------------------------------
# Entry points


@dataclass(frozen=True)
class JobKind:
    """Another kind of run on this engine: a stream of items (``header``, ``count``,
    ``entries(start, stop)`` like ``PromptStream``), its online and Batch API job classes (each a
    ``RunJob`` subclass overriding ``base``/``request``/``parse_answer``/``finish``) and the body
    builder its dry run writes (``await dry_build(entry, encoder)`` → body)."""

    stream: Any
    online: type[RunJob]
    batch: type[RunJob] | None = None
    dry_build: Callable[[Any, Any], Awaitable[dict[str, Any]]] | None = None


async def run_async(cfg: GenerationConfig, *, control: RunControl | None = None,
                    on_progress: ProgressCallback | None = None,
                    shared: Shared | None = None, kind: JobKind | None = None) -> RunResult:
    """Run (or resume) one generation run; see the module docstring. ``kind`` makes it another
    kind of run on the same engine (the judge: ``mminstruct.quality.judge``): its own stream of items,
    job classes and request builder; None is generation from ``cfg``'s prompt file."""
    stream: Any = kind.stream if kind is not None else PromptStream.open(cfg.prompt_path)
    start, n = resolved_range(cfg.start_idx, cfg.num_prompts, stream.count)
    control = control or RunControl()
    if cfg.dry_run:
        from mminstruct.generate.dryrun import dry_run

        return await dry_run(cfg, stream, start, n, shared,
                             body_of=kind.dry_build if kind is not None else None)
    own = shared is None
    if shared is None:
        shared = Shared.build(cfg)  # first: a missing key fails before a run folder exists
    lock_fd = -1
    try:
        run = open_or_create_run(cfg, stream, start, n)
        lock_fd = run.lock()
        shared.limiter.announce()
        job: RunJob | None = None
        if cfg.batch_api or run.read_meta().get("batch_api"):
            from mminstruct.generate.batch_api import batch_job  # OpenAI Batch API runs (and their resumes)

            job = batch_job(cfg, run, stream, start, n, shared, control, on_progress,
                            cls=kind.batch if kind is not None else None)
        if job is None:
            online = kind.online if kind is not None else OnlineJob
            job = online(cfg, run, stream, start, n, shared, control, on_progress)
        return await job.execute()
    finally:
        if own:
            await shared.aclose()
        if lock_fd >= 0:
            os.close(lock_fd)


def run_generation(cfg: GenerationConfig, *, control: RunControl | None = None,
                   on_progress: ProgressCallback | None = None) -> RunResult:
    """Blocking form of ``run_async`` (what the CLI and a background process call)."""
    return asyncio.run(run_async(cfg, control=control, on_progress=on_progress))
