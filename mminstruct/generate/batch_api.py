"""``--batch_api``: generation through the OpenAI Batch API (half the price of online calls).

A Batch API run is an ordinary run — same run folder, same append-only log, same resume, same
output writer and manifest — whose requests travel in files instead of one call each:

1. **Build.** The prompts still unrecorded are turned into request lines with the online engine's
   builder (the ``--dry_run`` lines: ``custom_id`` = prompt index, the same body), streamed into
   parts of at most ``batch_max_requests`` lines and ``batch_max_bytes`` bytes (the API's limits:
   50,000 requests, 200 MB). A prompt whose image is missing is recorded as failed, as online.
2. **Submit.** Each part is uploaded (``files.create(purpose="batch")``) and becomes one batch
   (``batches.create(…, completion_window="24h")``) before the next part is built: memory holds a
   window of 64 prompts and disk one part, whatever the number of prompts.
3. **Poll.** ``batches.retrieve`` every ``batch_poll_seconds``, growing ×1.5 while nothing
   changes up to ``batch_poll_max_seconds``; transient errors are retried at the next poll.
4. **Collect.** A finished batch's output and error files are downloaded (redacted, streamed to
   disk) and each line is read with the online engine's parser — format-fix calls, when an answer
   does not parse, are sent online — and recorded in the log like an online result: a success, or a
   final failure with its error class. Every class keeps its online rule: a line that failed for a
   transient reason (429, 5xx, a line the batch never ran because it **expired**) is left
   unrecorded and goes into a new batch, up to ``batch_max_submits`` submissions, then its failure
   is recorded; a line that failed for good (context length, content filter, …) is recorded at
   once; quota/auth/not-found stop the run, as online. New prompts are submitted at once;
   resubmissions wait until no batch is open (a capacity failure should not loop).
5. **Finish.** When every prompt has its record, the output and the manifest are written as
   online; the manifest says the run used the Batch API and prices its batch tokens at batch
   prices (format fixes, sent online, at standard prices).

**A batch that failed** as a whole (validation, capacity) has its prompts resubmitted under the
same budget and its errors kept in the state and the manifest. **A cancelled batch** (cancelled at
the provider) keeps the results it finished; its other prompts stay unrecorded and the run ends as
cancelled — ``--resume`` submits them again.

**Crash safety and resume.** Batch ids, file ids and each part's stage are kept in the run folder
(``batch_files``) and rewritten atomically after every step. A process killed at any point is
continued by ``--resume``: open batches are polled again, never resubmitted (a batch whose creation
may have happened just before the crash is first looked up by its input file); prompts already in
the log are never recorded twice. Ctrl-C (or the app's cancel) stops polling and leaves the batches
running at the provider; ``--resume`` picks them up. Pausing stops new submissions only.

Azure OpenAI works through the same client: files and batches go to the resource's ``/openai/``
routes, the lines carry the deployment name as their ``model`` and ``/chat/completions`` as URL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from mminstruct.errors import ConfigError
from mminstruct.data.formats import PromptEntry
from mminstruct.llm.errors import (BadPromptError, BadRequestError, ImageFileError, LLMError,
                          RequestTimeoutError, ServerError)
from mminstruct.llm.calls import CallStats, Stopped
from mminstruct.llm.requests import batch_line
from mminstruct.generate.batch_files import (TERMINAL, BatchState, LineResult, Part, PartWriter,
                          append_resubmitted, batch_failure, download_redacted, error_json,
                          load_prompts, load_resubmitted_errors, prompts_from_file, prompts_path,
                          read_result_line, remove_part_files, requests_path, result_path)
from mminstruct.generate.config import GenerationConfig
from mminstruct.generate.control import EarlyStop, RunControl, clear_flags
from mminstruct.generate.job import ProgressCallback, RunJob, RunResult, Shared
from mminstruct.generate.jsonstream import PromptStream
from mminstruct.generate.manifest import batch_api_cost, write_manifest
from mminstruct.generate.runlog import FINISHED, RunDir, RunLog

log = logging.getLogger(__name__)

T = TypeVar("T")

BUILD_WINDOW = 64  # prompts built concurrently (images encoded in worker threads)
RESULT_WORKERS = 32  # result lines handled concurrently (only format fixes wait on the network)
UPLOAD_TIMEOUT = 900.0  # seconds for one upload of up to 200 MB
FIND_SCAN_LIMIT = 1000  # recent batches searched for one created just before a crash


def batch_job(cfg: GenerationConfig, run: RunDir, stream: PromptStream, start: int, n: int,
              shared: Shared, control: RunControl,
              on_progress: ProgressCallback | None,
              cls: type[RunJob] | None = None) -> RunJob | None:
    """The job for a run that is, or was started as, a Batch API run; None when it may go on
    online (``cls``: a subclass of ``BatchJob`` for another kind of run). Resuming one without ``--batch_api`` is refused while its batches are open (their
    results would be paid for and lost); once every batch is recorded, the rest may be sent
    online."""
    if not cfg.batch_api:
        open_parts = BatchState.load(run.path).pending_at_provider()
        if open_parts:
            ids = ", ".join(p.batch_id or f"{p.name} (being created)" for p in open_parts[:5])
            raise ConfigError(
                f"run {run.path.name} was started with --batch_api and {len(open_parts)} of its "
                f"batches are still open at the provider ({ids}); resume it with --batch_api "
                "(nothing is resubmitted), or start a new run without --resume")
        return None
    return (cls or BatchJob)(cfg, run, stream, start, n, shared, control, on_progress)


class BatchJob(RunJob):
    """One run through the Batch API; reuses the online job's recording, parsing (with format
    fixes), status, finish and manifest."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        cfg = self.cfg
        self.early_stop = EarlyStop(0, 0)  # a batch's results arrive together: nothing to save
        self.state = BatchState.load(self.run.path)
        self.client = self.shared.clients[0]
        self.azure = cfg.endpoint.kind == "azure"
        # Azure batches name the deployment in each line's body.
        self.body_model = (cfg.endpoint.azure_deployment or cfg.generator_model) if self.azure \
            else cfg.generator_model
        self.url = "/chat/completions" if self.azure else "/v1/chat/completions"
        self.done = bytearray(self.n)  # 1: the prompt has its record
        self.attempts = bytearray(self.n)  # batches the prompt was submitted in (capped at 255)
        self.prior_errors: dict[int, Counter] = {}
        self.pending_stop: LLMError | None = None
        self._writer: PartWriter | None = None
        self._wave_parts = 0

    # ------------------------------------------------------------------ orchestration

    async def execute(self) -> RunResult:
        for idx in self.finished_before():
            self.done[idx - self.start] = 1
        for part in self.state.parts:
            if part.has_batch:
                self._count_attempts(part)
        self.prior_errors = load_resubmitted_errors(self.run.path)
        for stale in self.state.folder.glob(".*.tmp"):  # a part being written when killed
            stale.unlink(missing_ok=True)
        clear_flags(self.run.path)
        self.control.attach(self.run.path)
        self.run.update_meta(state="running", batch_api=True)
        if self.state.parts:
            log.info("Batch API state: %s", self.state.describe())
        self.runlog = RunLog(self.run.log_path, self.cfg.fsync_interval)
        ticker = asyncio.create_task(self.tick())
        try:
            await self._loop()
        finally:
            ticker.cancel()
            if self._writer is not None:
                self._writer.abort()
            self.runlog.close()
        result = self.finish()
        if result.state != FINISHED:
            open_parts = self.state.pending_at_provider()
            if open_parts:
                result.message += (f"; {len(open_parts)} batch(es) still open at the provider "
                                   "— --resume continues polling them, nothing is resubmitted")
                result.status.message = result.message
                self.publish()
        return result

    async def _loop(self) -> None:
        interval = self.cfg.batch_poll_seconds
        while True:
            if self.control.cancelled and not self.stopping:
                self.begin_stop()
            if self.stopping:
                return
            for part in [p for p in self.state.parts if p.stage in ("built", "uploaded")]:
                await self._submit_part(part)  # left half-submitted by a crash
                if self.stopping:
                    return
            open_parts = self.state.live()
            todo = self._todo(retry=not open_parts)
            if todo:
                await self._submit_wave(todo)
                continue
            if not open_parts:
                return  # every prompt of the range has its record
            changed, collected = await self._poll(open_parts)
            if collected:
                interval = self.cfg.batch_poll_seconds
                continue
            interval = self.cfg.batch_poll_seconds if changed else min(
                self.cfg.batch_poll_max_seconds, interval * 1.5)
            await self._sleep(interval)

    def _todo(self, retry: bool) -> list[int]:
        """Prompts to submit now: unrecorded, in no open batch, and never submitted — or, when
        ``retry`` (no batch is open), submitted before and not finished."""
        live = bytearray(self.n)
        for part in self.state.live():
            for a, b in part.ranges:
                live[a - self.start:b - self.start] = b"\x01" * (b - a)
        done, att, s = self.done, self.attempts, self.start
        return [s + i for i in range(self.n)
                if not done[i] and not live[i] and (retry or not att[i])]

    def _count_attempts(self, part: Part) -> None:
        for idx in part.indices():
            i = idx - self.start
            if 0 <= i < self.n and self.attempts[i] < 255:
                self.attempts[i] += 1

    async def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stopping and (left := end - time.monotonic()) > 0:
            if self.control.cancelled:
                self.begin_stop()
                return
            await asyncio.sleep(min(0.1, left))

    def _note(self) -> None:
        self.tracker.status.message = self.state.describe()

    # ------------------------------------------------------------------ building and submitting

    async def _submit_wave(self, todo: list[int]) -> None:
        self.state.waves += 1
        self.state.save()
        self._wave_parts = 0
        want = bytearray(self.n)
        for idx in todo:
            want[idx - self.start] = 1
        log.info("wave %d: building requests for %d prompt(s)", self.state.waves, len(todo))
        window: list[tuple[int, Any]] = []
        for idx, entry in self.stream.entries(todo[0], todo[-1] + 1):
            if not want[idx - self.start]:
                continue
            if self.control.cancelled and not self.stopping:
                self.begin_stop()
            if self.stopping:
                return
            window.append((idx, entry))
            if len(window) >= BUILD_WINDOW:
                await self._add_lines(window)
                window = []
        if window and not self.stopping:
            await self._add_lines(window)
        if self._writer is not None and not self.stopping:
            await self._close_part()

    async def _add_lines(self, window: list[tuple[int, Any]]) -> None:
        built = await asyncio.gather(*(self._build_line(i, e) for i, e in window))
        for idx, line, base, error in built:
            if self.stopping:
                return
            if error is None and line is not None \
                    and len(line.encode()) + 1 > self.cfg.batch_max_bytes:
                error = BadRequestError(f"the request is {len(line.encode()) + 1:,} bytes, more "
                                        f"than a batch file may hold ({self.cfg.batch_max_bytes:,})")
            if error is not None or line is None:
                self._keep(idx, self.failure(base, error, CallStats(), time.monotonic()))
                continue
            if self._writer is not None and not self._writer.fits(line):
                await self._close_part()
                if self.stopping:
                    return
            if self._writer is None:
                self._wave_parts += 1
                name = f"w{self.state.waves:02d}_p{self._wave_parts:03d}"
                self.state.folder.mkdir(parents=True, exist_ok=True)
                self._writer = PartWriter(self.state.folder, name, self.state.waves,
                                          self.cfg.batch_max_requests, self.cfg.batch_max_bytes)
            self._writer.add(idx, line, base)

    async def _build_line(self, idx: int, entry: PromptEntry | BadPromptError
                          ) -> tuple[int, str | None, dict[str, Any], LLMError | None]:
        """One request line, built exactly as the online engine builds its request."""
        base = self.base(idx, entry)
        try:
            body, _ = await self.request(entry, self.body_model)
        except (ImageFileError, BadPromptError) as e:
            return idx, None, base, e
        line = batch_line(idx, body)
        line["url"] = self.url
        return idx, json.dumps(line, ensure_ascii=False), base, None

    async def _close_part(self) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        part = writer.close()
        self.state.parts.append(part)
        self.state.save()
        await self._submit_part(part)

    async def _submit_part(self, part: Part) -> None:
        folder = self.state.folder
        if part.stage == "built":
            path = requests_path(folder, part.name)
            if not path.exists():  # lost with a crash before it was complete: built again
                log.warning("batch part %s has no request file; its prompts are built again",
                            part.name)
                self.state.parts.remove(part)
                remove_part_files(folder, part.name, "prompts")
                self.state.save()
                return
            await self.control.wait_while_paused()
            if self.stopping or self.control.cancelled:
                return
            upload_name = f"{self.run.path.name}_{part.name}.jsonl"

            async def upload() -> Any:
                with open(path, "rb") as fh:
                    return await self.client.files.create(
                        file=(upload_name, fh, "application/jsonl"), purpose="batch",
                        timeout=max(self.cfg.timeout, UPLOAD_TIMEOUT))

            uploaded = await self._api(f"upload {part.name}", upload)
            if uploaded is None:
                return
            part.file_id, part.stage = uploaded.id, "uploaded"
            self.state.save()
            path.unlink(missing_ok=True)
        if part.stage == "uploaded":
            batch = await self._find_batch(part.file_id) if part.creating else None
            if self.stopping:
                return
            if batch is None:
                if not part.creating:
                    part.creating, part.created_at = True, time.time()
                    self._count_attempts(part)
                    self.state.save()
                batch = await self._api(f"create the batch of {part.name}",
                                        lambda: self._create(part),
                                        before_retry=lambda: self._find_batch(part.file_id))
            if batch is None:
                return
            part.batch_id, part.creating, part.stage = batch.id, False, "submitted"
            log.info("batch %s created: part %s, %d request(s), %.1f MB", batch.id, part.name,
                     part.lines, part.bytes / 1e6)
            self._update(part, batch)
            self.state.save()
            self.tracker.status.requests += part.lines
            self._note()

    async def _create(self, part: Part) -> Any:
        return await self.client.batches.create(
            input_file_id=part.file_id, endpoint=self.url,
            completion_window=self.cfg.batch_completion_window,
            metadata={"mminstruct_run": self.run.path.name[:500], "part": part.name},
            timeout=self.cfg.timeout)

    async def _find_batch(self, file_id: str | None) -> Any:
        """A batch already made from ``file_id`` (its creation may have succeeded although the
        answer was lost), among the most recent batches."""
        if file_id is None:
            return None

        async def scan() -> Any:
            seen = 0
            async for batch in self.client.batches.list(limit=100, timeout=self.cfg.timeout):
                if batch.input_file_id == file_id:
                    return batch
                seen += 1
                if seen >= FIND_SCAN_LIMIT:
                    break
            return False

        found = await self._api("list batches", scan)
        return found or None

    async def _api(self, what: str, call: Callable[[], Awaitable[T]],
                   before_retry: Callable[[], Awaitable[Any]] | None = None) -> T | None:
        """A files/batches call through the engine's one retry loop (``Caller.retrying``: the
        same classes, retry rules and back-off as a chat call); None when the run stops (a class
        that stops runs, or a failure past ``max_retries``: the state is kept for ``--resume``)."""
        try:
            return await self.caller.retrying(call, CallStats(), what=f"Batch API: {what}",
                                              before_retry=before_retry, sleep=self._sleep)
        except Stopped:
            return None
        except LLMError as err:
            log.error("Batch API: cannot %s: %s", what, err)
            self.begin_stop(err)
            return None

    # ------------------------------------------------------------------ polling

    async def _poll(self, open_parts: list[Part]) -> tuple[bool, bool]:
        """Check every open batch once, then record those that finished: (changed, collected)."""
        sem = asyncio.Semaphore(8)

        async def check(part: Part) -> bool:
            async with sem:
                try:  # classified and counted by the one retry loop; retried at the next poll
                    batch = await self.caller.retrying(
                        lambda: self.client.batches.retrieve(part.batch_id,
                                                             timeout=self.cfg.timeout),
                        CallStats(), max_retries=0)
                except LLMError as err:
                    if err.stops_run:
                        self.begin_stop(err)
                    else:
                        log.warning("checking batch %s failed (%s); trying again at the next "
                                    "poll", part.batch_id, err)
                    return False
            return self._update(part, batch)

        waiting = [p for p in open_parts if p.stage == "submitted" and p.status not in TERMINAL]
        changed = any(await asyncio.gather(*(check(p) for p in waiting)))
        if changed:
            self.state.save()
        collected = False
        for part in open_parts:
            if self.stopping:
                break
            if part.stage == "submitted" and part.status in TERMINAL:
                await self._collect(part)
                collected = True
        self._note()
        return changed, collected

    def _update(self, part: Part, batch: Any) -> bool:
        counts = batch.request_counts.model_dump() if batch.request_counts is not None else {}
        counts = {k: int(v) for k, v in counts.items() if isinstance(v, int)}
        before = (part.status, part.request_counts, part.output_file_id, part.error_file_id)
        part.status, part.request_counts = batch.status, counts
        part.output_file_id, part.error_file_id = batch.output_file_id, batch.error_file_id
        if batch.status == "failed":
            part.errors = error_json(batch.errors)
        if before[0] != part.status:
            log.info("batch %s (%s): %s%s", part.batch_id, part.name, part.status,
                     f", {counts.get('completed', 0)} done and {counts.get('failed', 0)} failed "
                     f"of {counts['total']}" if counts.get("total") else "")
        return before != (part.status, part.request_counts, part.output_file_id,
                          part.error_file_id)

    # ------------------------------------------------------------------ collecting

    async def _collect(self, part: Part) -> None:
        """Record the results of a finished batch (a repeat after a crash records only what the
        log lacks)."""
        folder = self.state.folder
        files = []
        for kind, file_id in (("output", part.output_file_id), ("errors", part.error_file_id)):
            if not file_id:
                continue
            dest = result_path(folder, part.name, kind)
            got = await self._api(f"download the {kind} of batch {part.batch_id}",
                                  lambda f=file_id, d=dest: download_redacted(
                                      self.client, f, d, max(self.cfg.timeout, UPLOAD_TIMEOUT)))
            if got is None:
                return
            files.append(dest)
        sidecar = prompts_path(folder, part.name)
        bases = load_prompts(sidecar) if sidecar.exists() \
            else prompts_from_file(self.stream, part, self.mode)  # the sidecar is gone
        counts: Counter = Counter()
        n_workers = min(self.cfg.concurrency, RESULT_WORKERS)
        queue: asyncio.Queue = asyncio.Queue(maxsize=2 * n_workers)
        clients = self.shared.clients

        async def produce() -> None:
            seen: set[int] = set()
            try:
                for path in files:
                    with open(path, encoding="utf-8") as f:
                        for line in f:
                            res = read_result_line(line)
                            if res.idx is None or res.idx not in bases or res.idx in seen:
                                counts["unexpected_line"] += 1
                                log.warning("batch %s: ignoring a line for %s", part.batch_id,
                                            "an unknown prompt" if res.idx not in seen
                                            else f"prompt {res.idx} again")
                                continue
                            seen.add(res.idx)
                            await queue.put(res)
                for idx in part.indices():
                    if idx not in seen:
                        await queue.put(self._missing(part, idx))
            finally:
                for _ in range(n_workers):
                    await queue.put(None)

        async def work(client: Any) -> None:
            while (res := await queue.get()) is not None:
                if not self.stopping:
                    base = bases.get(res.idx) or {"prompt_idx": res.idx}
                    await self._handle(part, res, base, client, counts)

        await asyncio.gather(produce(), *(work(clients[k % len(clients)])
                                          for k in range(n_workers)))
        if self.stopping:
            return  # left uncollected: --resume records what the log lacks
        part.stage, part.collected = "collected", dict(counts)
        self.state.save()
        remove_part_files(folder, part.name, "prompts",
                          *(() if self.cfg.debug else ("output", "errors")))
        log.info("batch %s (%s) recorded: %s", part.batch_id, part.status,
                 ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "nothing")
        if self.pending_stop is not None:
            self.begin_stop(self.pending_stop)
        elif counts["cancelled"]:
            log.warning("batch %s was cancelled at the provider; its %d unfinished prompt(s) are "
                        "submitted again by --resume", part.batch_id, counts["cancelled"])
            self.begin_stop()

    def _missing(self, part: Part, idx: int) -> LineResult:
        """A prompt of the part that neither result file mentions."""
        if part.status == "failed":
            return LineResult(idx, error=batch_failure(part))
        if part.status == "expired":
            return LineResult(idx, error=RequestTimeoutError(
                f"batch {part.batch_id} expired before this request ran"), not_run="expired")
        if part.status == "cancelled":
            return LineResult(idx, not_run="cancelled")
        return LineResult(idx, error=ServerError(
            f"batch {part.batch_id} {part.status} without a result for this request"))

    async def _handle(self, part: Part, res: LineResult, base: dict[str, Any], client: Any,
                      counts: Counter) -> None:
        idx = res.idx
        i = idx - self.start
        if self.done[i]:
            counts["already_recorded"] += 1
            return
        t0 = time.monotonic()
        stats = CallStats()
        submissions = self.attempts[i]
        stats.requests, stats.retries = submissions, max(0, submissions - 1)
        stats.errors.update(self.prior_errors.get(idx, {}))
        via = {"via": "batch_api", "batch": part.batch_id}
        if res.completion is not None:
            usage = res.completion.get("usage") or {}
            used_in = int(usage.get("prompt_tokens") or 0)
            used_out = int(usage.get("completion_tokens") or 0)
            stats.input_tokens, stats.output_tokens = used_in, used_out
            self.tracker.status.input_tokens += used_in
            self.tracker.status.output_tokens += used_out
            via["batch_usage"] = {"input": used_in, "output": used_out}
            try:
                result, finish = await self.parse_answer(client, res.completion, stats)
            except Stopped:
                return
            except LLMError as e:
                if e.stops_run:  # a format-fix call met quota/auth: stop after this batch
                    self.pending_stop = self.pending_stop or e
                    counts["stopped"] += 1
                    return
                counts[f"failed:{e.kind}"] += 1
                self._keep(idx, {**self.failure(base, e, stats, t0), **via})
                return
            counts["ok"] += 1
            self._keep(idx, {**base, "outcome": "ok", "items": result.items,
                             "n_items": len(result.items), "n_expected": self.n_expected,
                             "dropped": result.dropped, "parse": result.how,
                             "finish_reason": finish, **self.stats_json(stats, t0), **via})
            return
        if res.not_run == "cancelled":
            counts["cancelled"] += 1
            return
        err = res.error or ServerError("a result line without a response or an error")
        self.tracker.errors_by_class[err.kind] += 1
        if err.stops_run:
            self.pending_stop = self.pending_stop or err
            counts["stopped"] += 1
            return
        if err.retryable and submissions < self.cfg.batch_max_submits:
            counts["expired" if res.not_run else f"resubmit:{err.kind}"] += 1
            self._note_resubmit(part, idx, err)
            return
        stats.errors[err.kind] += 1
        counts[f"failed:{err.kind}"] += 1
        self._keep(idx, {**self.failure(base, err, stats, t0), **via})

    def _keep(self, idx: int, rec: dict[str, Any]) -> None:
        self.done[idx - self.start] = 1
        self.record(rec)

    def _note_resubmit(self, part: Part, idx: int, err: LLMError) -> None:
        append_resubmitted(self.run.path, idx, err, part.batch_id)
        self.prior_errors.setdefault(idx, Counter())[err.kind] += 1

    # ------------------------------------------------------------------ the manifest

    def write_manifest(self, out: Any, len_samples: int, st: Any) -> Any:
        path = super().write_manifest(out, len_samples, st)
        manifest = json.loads(path.read_text())
        manifest["batch_api"] = self.state.manifest_section(self.cfg, self.url)
        manifest["cost"] = batch_api_cost(manifest["cost"], self.cfg.generator_model,
                                          self.run.log_path, self.start, self.n)
        return write_manifest(path, manifest)
