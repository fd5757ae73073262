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
   run, leaving the rest unfinished for ``--resume``; so do ``EARLY_STOP_AFTER`` first requests
   (of all shards) failing for good alike (``control.EarlyStop``: a proxy's HTTP 400 for a wrong
   key, say), quoting the server; ``--resume`` sends those prompts again.
4. When every prompt of the range has a record, the MM-Gen output file and the manifest are
   written atomically and the run is marked finished.

Memory is bounded by the queue, the in-flight requests and the image cache — not by the number
of prompts. ``Shared`` holds what several runs (the shards of batch_data_generator) share: the
clients (a pool of ``openai`` clients of ~32 connections each, every worker bound to one), the
limiter, the image cache and a semaphore bounding requests in flight across them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..formats import PromptEntry
from ..llm.client import build_clients
from ..llm.errors import (RETRYABLE_ON_RESUME, BadJSONError, BadPromptError, ContentFilterError,
                          ImageFileError, LengthError, LLMError, RefusalError,
                          SchemaMismatchError, ServerError, classify, redact)
from ..llm.limiter import RateLimiter
from ..llm.parse import ParseResult, parse_items
from ..llm.requests import (BuiltRequest, ImageEncoder, build_messages, candidate_image,
                            fix_messages, generation_prompt, request_body, response_schema,
                            system_prompt)
from ..modes import Mode
from .config import GenerationConfig, resolved_range
from .control import EarlyStop, RunControl, RunStatus, StatusTracker, clear_flags
from .jsonstream import PromptStream
from .manifest import build_manifest, manifest_path_for, summarize_log, write_manifest
from .output import write_output
from .runlog import FINISHED, RunDir, RunLog, latest_records, open_or_create_run, output_path

log = logging.getLogger(__name__)

RAW_KEEP_CHARS = 4000
#: A run stops when its first this-many finished requests all failed for good the same way.
EARLY_STOP_AFTER = 8
ProgressCallback = Callable[[RunStatus], None]


@dataclass
class Shared:
    """Resources shared by every run in this process: the clients (one connection pool each),
    one limiter, one image cache, one bound on requests in flight, and one early stop (the first
    requests of all the shards together)."""

    clients: list[Any]
    limiter: RateLimiter
    encoder: ImageEncoder
    semaphore: asyncio.Semaphore
    executor: ThreadPoolExecutor
    early_stop: EarlyStop = field(default_factory=lambda: EarlyStop(EARLY_STOP_AFTER))

    @classmethod
    def build(cls, cfg: GenerationConfig, *, with_client: bool = True) -> Shared:
        executor = ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) + 2),
                                      thread_name_prefix="mminstruct-img")
        encoder = ImageEncoder(cfg.input_folder, max_side=cfg.max_image_side,
                               quality=cfg.jpeg_quality, cache_bytes=cfg.image_cache_mb << 20,
                               executor=executor, allow_outside=cfg.allow_outside_paths)
        clients = build_clients(cfg.endpoint, concurrency=cfg.concurrency,
                                timeout=cfg.timeout) if with_client else []
        limiter = RateLimiter(cfg.rpm, cfg.tpm) if with_client else RateLimiter()
        return cls(clients, limiter, encoder, asyncio.Semaphore(cfg.concurrency), executor)

    async def aclose(self) -> None:
        for client in self.clients:
            await client.close()
        self.executor.shutdown(wait=False, cancel_futures=True)


@dataclass
class RunResult:
    state: str  # finished | cancelled | stopped | dry_run
    run_dir: Path | None
    output: Path | None
    manifest: Path | None
    status: RunStatus
    message: str = ""
    batch_files: list[Path] = field(default_factory=list)


class _Stopped(Exception):
    """Internal: the run is stopping; abandon this prompt without recording it."""


@dataclass
class _Stats:
    requests: int = 0
    retries: int = 0
    fixes: int = 0
    errors: Counter = field(default_factory=Counter)
    input_tokens: int = 0
    output_tokens: int = 0


# ----------------------------------------------------------------------------------------------


class _Job:
    def __init__(self, cfg: GenerationConfig, run: RunDir, stream: PromptStream, start: int,
                 n: int, shared: Shared, control: RunControl,
                 on_progress: ProgressCallback | None):
        self.cfg, self.run, self.stream, self.start, self.n = cfg, run, stream, start, n
        self.shared, self.control, self.on_progress = shared, control, on_progress
        pf = stream.header
        self.mode: Mode = pf.mode
        self.n_expected = pf.min_gen_per_candidate
        self.description = pf.dataset_description
        self.system = system_prompt(self.mode, self.description)
        self.generate = generation_prompt(self.mode, self.n_expected)
        self.response_format = response_schema(self.mode) if cfg.structured_outputs else None
        self.stop_error: LLMError | None = None
        self.stopping = False
        self.stop_event = asyncio.Event()
        self.in_flight = 0
        self.tracker = StatusTracker(RunStatus(run_dir=str(run.path), model=cfg.model_name,
                                               mode=self.mode.value, total=n))
        self.runlog: RunLog | None = None
        self.session_done = 0
        self.early_stop = shared.early_stop

    # ------------------------------------------------------------------ orchestration

    def _finished_before(self) -> set[int]:
        """The prompts of the range that the log already holds as finished (counted into the
        status); with ``retry_failed``, transient failures are left out so they are sent again."""
        latest = latest_records(self.run.log_path)
        resend = set(self.run.read_meta().get("resend") or ())  # an early stop's failures
        done: set[int] = set()
        st = self.tracker.status
        for idx, rec in latest.items():
            if not self.start <= idx < self.start + self.n:
                continue
            if self.cfg.retry_failed and not rec.ok and rec.error_class in RETRYABLE_ON_RESUME:
                continue
            if idx in resend and not rec.ok:
                continue
            done.add(idx)
            st.done += 1
            if rec.ok:
                st.ok += 1
                st.items += rec.n_items
            else:
                st.failed += 1
                self.tracker.failed_by_class[rec.error_class or "unknown"] += 1
        if done:
            log.info("%d of %d prompts already finished; sending the other %d",
                     len(done), self.n, self.n - len(done))
        return done

    async def execute(self) -> RunResult:
        cfg = self.cfg
        done = self._finished_before()
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
        ticker = asyncio.create_task(self._tick())
        tasks = [producer, *workers]
        everything = asyncio.gather(*tasks)
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
        return self._finish()

    async def _supervise(self, everything: asyncio.Future, tasks: list[asyncio.Task]) -> None:
        while True:
            done, _ = await asyncio.wait({everything}, timeout=0.2)
            if done:
                everything.result()
                return
            self._follow_early_stop()
            if not self.stopping and self.control.cancelled:
                log.warning("cancel requested: no new requests; waiting up to %.0fs for the %d "
                            "in flight", self.cfg.cancel_grace, self.in_flight)
                self._begin_stop()
            if self.stopping:  # requests in flight may still succeed: give them the grace
                done, _ = await asyncio.wait({everything}, timeout=self.cfg.cancel_grace)
                if not done:
                    for t in tasks:
                        t.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                else:
                    everything.result()
                return

    def _begin_stop(self, error: LLMError | None = None) -> None:
        if error is not None and self.stop_error is None:
            self.stop_error = error
            log.error("stopping the run: %s: %s", error.rule.what, error)
        self.stopping = True
        self.stop_event.set()
        self.tracker.status.state = "cancelling"

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
                self._record(rec)

    async def _tick(self) -> None:
        last_log = time.monotonic()
        while True:
            await asyncio.sleep(self.cfg.status_interval)
            st = self._publish()
            if time.monotonic() - last_log >= 10:
                last_log = time.monotonic()
                log.info("%s", st.line())

    def _publish(self) -> RunStatus:
        st = self.tracker.snapshot()
        st.in_flight = self.in_flight
        st.limits = self.shared.limiter.describe()
        if st.state in ("starting", "running", "paused"):
            st.state = "paused" if self.control.paused else "running"
        try:  # renamed into place, not fsynced: a status is rewritten every second anyway
            tmp = self.run.status_path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(st.to_json()))
            os.replace(tmp, self.run.status_path)
        except OSError as e:
            log.warning("cannot write %s: %s", self.run.status_path, e)
        if self.on_progress is not None:
            try:
                self.on_progress(st)
            except Exception as e:  # a watcher's bug must not stop the run
                log.warning("progress callback failed: %s", e)
        return st

    # ------------------------------------------------------------------ one prompt

    def _base(self, idx: int, entry: PromptEntry | BadPromptError) -> dict[str, Any]:
        """What every record of this prompt carries, whatever its outcome."""
        base: dict[str, Any] = {"prompt_idx": idx}
        if not isinstance(entry, BadPromptError):
            base.update(keyword=entry.keyword, icl_indices=entry.icl_indices,
                        image=candidate_image(entry, self.mode))
        return base

    async def _request(self, entry: PromptEntry | BadPromptError, model: str | None = None
                       ) -> tuple[dict[str, Any], BuiltRequest]:
        """The chat-completions body for one prompt — the one builder of the online and the
        Batch API paths. Raises BadPromptError / ImageFileError for a prompt that cannot be sent."""
        if isinstance(entry, BadPromptError):
            raise entry
        built = await build_messages(entry, self.mode, self.system, self.generate,
                                     self.shared.encoder)
        body = request_body(model or self.cfg.model_name, built.messages,
                            temperature=self.cfg.temperature, max_tokens=self.cfg.max_tokens,
                            seed=self.cfg.seed, response_format=self.response_format,
                            max_tokens_field=self.cfg.max_tokens_field)
        return body, built

    async def _process(self, idx: int, entry: PromptEntry | BadPromptError,
                       client: Any) -> dict | None:
        base = self._base(idx, entry)
        stats = _Stats()
        t0 = time.monotonic()
        try:
            body, built = await self._request(entry)
        except (ImageFileError, BadPromptError) as e:
            return self._failure(base, e, stats, t0)
        try:
            result, finish = await self._generate(client, body, built.token_estimate, stats)
        except _Stopped:
            return None
        except LLMError as e:
            if e.stops_run:
                self._begin_stop(e)
                return None
            return self._failure(base, e, stats, t0)
        return {**base, "outcome": "ok", "items": result.items, "n_items": len(result.items),
                "n_expected": self.n_expected, "dropped": result.dropped, "parse": result.how,
                "finish_reason": finish, **self._stats_json(stats, t0)}

    def _failure(self, base: dict, e: LLMError, stats: _Stats, t0: float) -> dict:
        rec = {**base, "outcome": "failed", "error_class": e.kind, "message": redact(e)[:1000],
               **({"status": e.status} if e.status is not None else {}),
               **self._stats_json(stats, t0)}
        if e.raw:
            rec["raw"] = redact(e.raw[:RAW_KEEP_CHARS])
        log.debug("prompt %d failed: %s: %s", base["prompt_idx"], e.kind, e)
        return rec

    def _stats_json(self, stats: _Stats, t0: float) -> dict[str, Any]:
        return {"attempts": stats.requests, "retries": stats.retries, "fixes": stats.fixes,
                "errors": dict(stats.errors),
                "usage": {"input": stats.input_tokens, "output": stats.output_tokens},
                "seconds": round(time.monotonic() - t0, 3), "t": round(time.time(), 3)}

    def _record(self, rec: dict) -> None:
        self.runlog.append(rec)  # type: ignore[union-attr]  # set before any worker starts
        self.session_done += 1
        ok = rec["outcome"] == "ok"
        self.tracker.finished(ok, rec.get("error_class"), rec.get("n_items", 0),
                              ok and rec["n_items"] != self.n_expected, rec.get("dropped", 0))
        error = self.early_stop.see(rec, stopping=self.stopping)
        if error is not None:
            self._begin_stop(error)
        self._follow_early_stop()

    def _follow_early_stop(self) -> None:
        """Another shard's first requests all failed alike: stop this one too."""
        if self.early_stop.triggered and not self.stopping:
            self._begin_stop(self.early_stop.error)

    async def _generate(self, client: Any, body: dict, est: int,
                        stats: _Stats) -> tuple[ParseResult, str]:
        completion = await self._call(client, body, est, stats)
        return await self._parse_answer(client, completion, stats)

    async def _parse_answer(self, client: Any, completion: dict[str, Any],
                            stats: _Stats) -> tuple[ParseResult, str]:
        """The items of a chat completion, with format-fix calls when the answer does not parse
        (also how the Batch API path reads each line of a batch's output)."""
        text, finish = self._answer(completion)
        try:
            return parse_items(text, self.mode), finish
        except (BadJSONError, SchemaMismatchError) as e:
            first: LLMError = e
        error = first
        if not text.strip():
            raise error  # nothing to repair
        for _ in range(self.cfg.format_fix_attempts):
            stats.fixes += 1
            fix_body = request_body(self.cfg.model_name, fix_messages(self.mode, text),
                                    temperature=0 if self.cfg.temperature is not None else None,
                                    max_tokens=self.cfg.max_tokens,
                                    response_format=self.response_format,
                                    max_tokens_field=self.cfg.max_tokens_field)
            fixed = await self._call(client, fix_body, len(text) // 3 + 400, stats)
            try:
                fixed_text, _ = self._answer(fixed)
                return parse_items(fixed_text, self.mode), finish
            except (BadJSONError, SchemaMismatchError, RefusalError, LengthError,
                    ContentFilterError) as e:
                error = type(first)(f"{first} (format fix failed: {e.kind}: {e})", raw=text)
        raise error

    def _answer(self, completion: dict[str, Any]) -> tuple[str, str]:
        """(text, finish_reason) of a chat completion; refusals, filtered and cut-off answers
        raise their classes."""
        choices = completion.get("choices") if isinstance(completion, dict) else None
        if not choices or not isinstance(choices[0], dict):
            raise BadJSONError("the response has no choices")
        choice = choices[0]
        msg = choice.get("message") or {}
        finish = choice.get("finish_reason") or ""
        text = msg.get("content") or ""
        if not isinstance(text, str):  # content parts (some servers)
            text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
        refusal = msg.get("refusal")
        if refusal:
            raise RefusalError(f"the model refused: {str(refusal)[:300]}", raw=text or refusal)
        if finish == "content_filter":
            raise ContentFilterError("the answer was blocked (finish_reason content_filter)",
                                     raw=text)
        if finish == "length":
            raise LengthError(f"the answer was cut off by the token limit after {len(text)} "
                              "characters (finish_reason length); raise --max_tokens", raw=text)
        return text, finish

    async def _call(self, client: Any, body: dict, est_input: int, stats: _Stats) -> Any:
        cfg = self.cfg
        est = est_input + (cfg.max_tokens or 300 * self.n_expected)
        for attempt in range(cfg.max_retries + 1):
            self._follow_early_stop()
            if self.stopping:
                raise _Stopped
            await self.control.wait_while_paused()
            await self.shared.limiter.acquire(est)
            if self.stopping:
                raise _Stopped
            stats.requests += 1
            self.tracker.status.requests += 1
            try:
                completion = await self._post(client, body)
                usage = completion.get("usage") or {}
                used_in = int(usage.get("prompt_tokens") or 0)
                used_out = int(usage.get("completion_tokens") or 0)
                stats.input_tokens += used_in
                stats.output_tokens += used_out
                self.tracker.status.input_tokens += used_in
                self.tracker.status.output_tokens += used_out
                self.shared.limiter.settle(est, used_in + used_out if usage else None)
                return completion
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every failure is classified; none escapes unnamed
                err = classify(exc)
                response = getattr(exc, "response", None)
                if response is not None:
                    self.shared.limiter.observe_headers(response.headers)
            stats.errors[err.kind] += 1
            self.tracker.errors_by_class[err.kind] += 1
            if not err.retryable or attempt >= cfg.max_retries:
                raise err
            if err.kind == "rate_limit" and err.retry_after:
                self.shared.limiter.cool_down(err.retry_after)
            delay = self._backoff(attempt, err.retry_after)
            stats.retries += 1
            self.tracker.status.retries += 1
            log.debug("%s (attempt %d); retrying in %.2fs", err, attempt + 1, delay)
            try:
                await asyncio.wait_for(self.stop_event.wait(), timeout=delay)
                raise _Stopped
            except asyncio.TimeoutError:
                pass
        raise AssertionError("unreachable")  # the loop returns or raises

    async def _post(self, client: Any, body: dict[str, Any]) -> dict[str, Any]:
        """POST /chat/completions through the openai client (its auth, base URL, Azure routing,
        timeout and error classes), taking the raw HTTP response: the typed ``create`` walks
        every message part — megabytes of base64 images — through its parameter transformer,
        ~7 ms of CPU a request, which capped a 2-core machine near 50 requests/s."""
        import httpx2

        resp = await client.post("/chat/completions", cast_to=httpx2.Response, body=body,
                                 options={"timeout": self.cfg.timeout})
        self.shared.limiter.observe_headers(resp.headers)
        try:
            data = resp.json()
        except ValueError as e:
            raise ServerError(f"HTTP {resp.status_code}: the body is not JSON: "
                              f"{resp.text[:200]!r}") from e
        if not isinstance(data, dict):
            raise ServerError(f"HTTP {resp.status_code}: the body is a "
                              f"{type(data).__name__}, not a chat completion")
        return data

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, 600.0) * random.uniform(1.0, 1.1)
        cap = min(self.cfg.retry_max_delay, self.cfg.retry_base_delay * 2 ** attempt)
        return random.uniform(cap / 2, cap)

    # ------------------------------------------------------------------ the end

    def _finish(self) -> RunResult:
        st = self._publish()
        cfg, run = self.cfg, self.run
        if self.stop_error is not None or self.stopping or st.done < st.total:
            if self.stop_error is not None:
                state, reason = "stopped", f"{self.stop_error.rule.what}: {self.stop_error}"
            else:
                state, reason = "cancelled", "cancelled"
            resend = self.early_stop.resend(self.start, self.start + self.n)
            finished = st.done - len(resend)
            msg = (f"run {state} ({reason}); {finished} of {st.total} prompts finished — "
                   f"continue with --resume (run {run.path.name})")
            st.state, st.message = state, msg
            run.update_meta(state=state, reason=reason, **({"resend": resend} if resend else {}))
            self._publish()
            return RunResult(state, run.path, None, None, st, msg)
        out = output_path(cfg, run.stamp)
        summary = write_output(run.log_path, out, mode=self.mode,
                               dataset_description=self.description, start_idx=self.start,
                               num_prompts=self.n, extra={
                                   "mode": self.mode.value, "model": cfg.model_name,
                                   "input_folder": str(cfg.input_folder.resolve()),
                                   "dataset_description": self.description,
                                   "prompt_file": str(cfg.prompt_path),
                                   "min_gen_per_candidate": self.n_expected,
                                   "run": run.path.name})
        manifest = self._write_manifest(out, summary.len_samples, st)
        run.update_meta(state=FINISHED, output=str(out), manifest=str(manifest))
        st.state, st.output, st.manifest = "finished", str(out), str(manifest)
        st.message = (f"{summary.prompts_ok} prompts ok, {summary.prompts_failed} failed; "
                      f"{summary.len_samples} samples")
        self._publish()
        return RunResult(FINISHED, run.path, out, manifest, st, st.message)

    def _write_manifest(self, out: Path, len_samples: int, st: RunStatus) -> Path:
        pf = self.stream.header
        summary = summarize_log(self.run.log_path, self.start, self.n)
        manifest = build_manifest(
            output=out, run_dir=self.run.path, meta=self.run.read_meta(),
            parameters=self.cfg.public_json(), endpoint=self.cfg.endpoint.public_json(),
            model=self.cfg.model_name,
            prompt_file={"path": str(self.cfg.prompt_path), "mode": pf.mode.value,
                         "min_gen_per_candidate": pf.min_gen_per_candidate,
                         "dataset_description": pf.dataset_description,
                         "prompts_in_file": self.stream.count},
            summary=summary, len_samples=len_samples, limits=self.shared.limiter.describe(),
            session={"elapsed_s": st.elapsed_s, "prompts": self.session_done,
                     "requests": st.requests, "retries": st.retries,
                     "errors_by_class": st.errors_by_class})
        return write_manifest(manifest_path_for(out), manifest)


# ----------------------------------------------------------------------------------------------
# Entry points


async def run_async(cfg: GenerationConfig, *, control: RunControl | None = None,
                    on_progress: ProgressCallback | None = None,
                    shared: Shared | None = None) -> RunResult:
    """Run (or resume) one generation run; see the module docstring."""
    stream = PromptStream.open(cfg.prompt_path)
    start, n = resolved_range(cfg.start_idx, cfg.num_prompts, stream.count)
    control = control or RunControl()
    if cfg.dry_run:
        from .dryrun import dry_run

        return await dry_run(cfg, stream, start, n, shared)
    own = shared is None
    if shared is None:
        shared = Shared.build(cfg)  # first: a missing key fails before a run folder exists
    lock_fd = -1
    try:
        run = open_or_create_run(cfg, stream, start, n)
        lock_fd = run.lock()
        shared.limiter.announce()
        if cfg.batch_api or run.read_meta().get("batch_api"):
            from .batch_api import batch_job  # OpenAI Batch API runs (and their resumes)

            job = batch_job(cfg, run, stream, start, n, shared, control, on_progress)
        else:
            job = _Job(cfg, run, stream, start, n, shared, control, on_progress)
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
