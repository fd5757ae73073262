"""A run's shared base: what the online engine and the Batch API path both do with a prompt.

* ``Shared``: resources every run of a process shares (clients, limiter, image cache, the bound on
  requests in flight); ``RunResult``: how a run ended.
* ``build_request`` — the one chat-completions body builder (online, Batch API and dry run).
* ``RunJob`` — one run over a range of a prompt file: which prompts the log already holds, the
  record each prompt ends as (``base``/``failure``/``record``), the answer's items with
  format-fix calls (``parse_answer``), the live status (``publish``/``tick``), stopping
  (``begin_stop``), and the end: the MM-Gen output and the manifest (``finish``). The online
  engine (``engine.OnlineJob``) and ``batch_api.BatchJob`` subclass it and add only how prompts are
  sent. HTTP calls with retries are ``llm.calls.Caller``'s.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mminstruct.data.formats import PromptEntry
from mminstruct.llm.calls import CallObserver, Caller, CallStats, RetryPolicy
from mminstruct.llm.client import build_clients
from mminstruct.llm.errors import (RETRYABLE_ON_RESUME, BadJSONError, BadPromptError, ContentFilterError,
                          LengthError, LLMError, RefusalError, SchemaMismatchError, redact)
from mminstruct.llm.limiter import Limiter, RateLimiter
from mminstruct.llm.parse import ParseResult, parse_items
from mminstruct.llm.requests import (BuiltRequest, ImageEncoder, build_messages, candidate_image,
                            fix_messages, generation_prompt, refused_params, request_body,
                            response_schema, system_prompt)
from mminstruct.data.modes import Mode
from mminstruct.generate.config import GenerationConfig
from mminstruct.generate.control import EarlyStop, RunControl, RunStatus, StatusTracker
from mminstruct.generate.jsonstream import PromptStream
from mminstruct.generate.manifest import build_manifest, manifest_path_for, summarize_log, write_manifest
from mminstruct.generate.output import write_output
from mminstruct.generate.runlog import FINISHED, RunDir, RunLog, latest_records, output_path

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
    limiter: Limiter  # RateLimiter, or a ClusterLimiter on a Ray worker
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


async def build_request(cfg: GenerationConfig, mode: Mode, system: str, generate: str,
                        entry: PromptEntry | BadPromptError, encoder: ImageEncoder,
                        response_format: dict[str, Any] | None, model: str | None = None,
                        ) -> tuple[dict[str, Any], BuiltRequest]:
    """The chat-completions body for one prompt — the one builder of the online, Batch API and
    dry-run paths. Raises BadPromptError / ImageFileError for a prompt that cannot be sent."""
    if isinstance(entry, BadPromptError):
        raise entry
    built = await build_messages(entry, mode, system, generate, encoder, model or cfg.generator_model)
    body = request_body(model or cfg.generator_model, built.messages, temperature=cfg.temperature,
                        max_tokens=cfg.max_tokens, seed=cfg.seed, response_format=response_format,
                        max_tokens_field=cfg.max_tokens_field)
    return body, built


class _StatusObserver(CallObserver):
    """Counts every call's events into the run's live status; each attempt's end goes to
    ``on_attempt`` (the early stop on transient failures)."""

    def __init__(self, tracker: StatusTracker,
                 on_attempt: Callable[[LLMError | None], None] = lambda e: None):
        self.tracker = tracker
        self.on_attempt = on_attempt

    def on_success(self) -> None:
        self.on_attempt(None)

    def on_failure(self, error: LLMError) -> None:
        self.on_attempt(error)

    def on_request(self) -> None:
        self.tracker.status.requests += 1

    def on_usage(self, input_tokens: int, output_tokens: int) -> None:
        self.tracker.status.input_tokens += input_tokens
        self.tracker.status.output_tokens += output_tokens

    def on_error(self, kind: str) -> None:
        self.tracker.errors_by_class[kind] += 1

    def on_retry(self) -> None:
        self.tracker.status.retries += 1


# ----------------------------------------------------------------------------------------------


class RunJob:
    """One run over ``[start, start + n)`` of a prompt file; subclasses define ``execute``."""

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
        self.tracker = StatusTracker(RunStatus(run_dir=str(run.path), model=cfg.generator_model,
                                               mode=self.mode.value, total=n))
        self.runlog: RunLog | None = None
        self.session_done = 0
        self.early_stop = shared.early_stop
        self.caller = Caller(shared.limiter,
                             RetryPolicy(cfg.max_retries, cfg.retry_base_delay, cfg.retry_max_delay),
                             cfg.timeout, self.stop_event, control.wait_while_paused,
                             _StatusObserver(self.tracker, self.attempt_ended),
                             self.follow_early_stop)
        refused = [p for p in refused_params(cfg.generator_model)
                   if getattr(cfg, p, None) is not None]
        if refused:
            log.warning("%s not sent: model %r does not take %s", ", ".join(
                f"--{p}" for p in refused), cfg.generator_model, " or ".join(refused))

    async def execute(self) -> RunResult:
        raise NotImplementedError

    # ------------------------------------------------------------------ status and stopping

    def finished_before(self) -> set[int]:
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

    def begin_stop(self, error: LLMError | None = None) -> None:
        if error is not None and self.stop_error is None:
            self.stop_error = error
            log.error("stopping the run: %s: %s", error.rule.what, error)
        self.stopping = True
        self.stop_event.set()
        self.tracker.status.state = "cancelling"

    async def tick(self) -> None:
        last_log = time.monotonic()
        while True:
            await asyncio.sleep(self.cfg.status_interval)
            st = self.publish()
            if time.monotonic() - last_log >= 10:
                last_log = time.monotonic()
                log.info("%s", st.line())

    def publish(self) -> RunStatus:
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

    def base(self, idx: int, entry: PromptEntry | BadPromptError) -> dict[str, Any]:
        """What every record of this prompt carries, whatever its outcome."""
        base: dict[str, Any] = {"prompt_idx": idx}
        if not isinstance(entry, BadPromptError):
            base.update(keyword=entry.keyword, icl_indices=entry.icl_indices,
                        image=candidate_image(entry, self.mode))
        return base

    async def request(self, entry: PromptEntry | BadPromptError, model: str | None = None
                      ) -> tuple[dict[str, Any], BuiltRequest]:
        """``build_request`` with this run's settings and image cache."""
        return await build_request(self.cfg, self.mode, self.system, self.generate, entry,
                                   self.shared.encoder, self.response_format, model)

    def estimate(self, input_tokens: int) -> int:
        """Tokens a request will use (for the TPM limit): its input plus the expected answer."""
        return input_tokens + (self.cfg.max_tokens or 300 * self.n_expected)

    def failure(self, base: dict, e: LLMError, stats: CallStats, t0: float) -> dict:
        rec = {**base, "outcome": "failed", "error_class": e.kind, "message": redact(e)[:1000],
               **({"status": e.status} if e.status is not None else {}),
               **self.stats_json(stats, t0)}
        if e.raw:
            rec["raw"] = redact(e.raw[:RAW_KEEP_CHARS])
        log.debug("prompt %d failed: %s: %s", base["prompt_idx"], e.kind, e)
        return rec

    def stats_json(self, stats: CallStats, t0: float) -> dict[str, Any]:
        return {"attempts": stats.requests, "retries": stats.retries, "fixes": stats.fixes,
                "errors": dict(stats.errors),
                "usage": {"input": stats.input_tokens, "output": stats.output_tokens},
                "seconds": round(time.monotonic() - t0, 3), "t": round(time.time(), 3)}

    def record(self, rec: dict) -> None:
        self.runlog.append(rec)  # type: ignore[union-attr]  # set before any worker starts
        self.session_done += 1
        ok = rec["outcome"] == "ok"
        self.tracker.finished(ok, rec.get("error_class"), rec.get("n_items", 0),
                              ok and rec["n_items"] != self.n_expected, rec.get("dropped", 0))
        error = self.early_stop.see(rec, stopping=self.stopping)
        if error is not None:
            self.begin_stop(error)
        self.follow_early_stop()

    def attempt_ended(self, error: LLMError | None) -> None:
        """One request's end: stops the run once the early stop's transient-failure bound is met."""
        stop = self.early_stop.attempt(error)
        if stop is not None:
            self.begin_stop(stop)

    def follow_early_stop(self) -> None:
        """Another shard's first requests all failed alike: stop this one too."""
        if self.early_stop.triggered and not self.stopping:
            self.begin_stop(self.early_stop.error)

    #: Answer tokens a format-fix call is expected to add to the TPM estimate.
    FIX_ANSWER_TOKENS = 400

    def parse_text(self, text: str, fixed: bool = False) -> ParseResult:
        """This run's items in an answer's text (``fixed``: the answer of a format-fix call);
        raises BadJSONError / SchemaMismatchError / RefusalError. A run kind (the judge) reads
        its own shape by overriding this and ``fix_request``."""
        return parse_items(text, self.mode)

    def fix_request(self, text: str) -> list[dict[str, Any]]:
        """The messages of a format-fix call for an answer that did not parse."""
        return fix_messages(self.mode, text)

    async def parse_answer(self, client: Any, completion: dict[str, Any],
                            stats: CallStats) -> tuple[ParseResult, str]:
        """The items of a chat completion, with format-fix calls when the answer does not parse:
        the one reader of model answers, for online runs, each line of a Batch API run's output,
        and the judge (through ``parse_text`` / ``fix_request``)."""
        text, finish = self.answer(completion)
        try:
            return self.parse_text(text), finish
        except (BadJSONError, SchemaMismatchError) as e:
            first: LLMError = e
        error = first
        if not text.strip():
            raise error  # nothing to repair
        for _ in range(self.cfg.format_fix_attempts):
            stats.fixes += 1
            fix_body = request_body(self.cfg.generator_model, self.fix_request(text),
                                    temperature=0 if self.cfg.temperature is not None else None,
                                    max_tokens=self.cfg.max_tokens,
                                    response_format=self.response_format,
                                    max_tokens_field=self.cfg.max_tokens_field)
            fixed = await self.caller.call(client, fix_body,
                                           self.estimate(len(text) // 3 + self.FIX_ANSWER_TOKENS),
                                           stats)
            try:
                fixed_text, _ = self.answer(fixed)
                return self.parse_text(fixed_text, fixed=True), finish
            except (BadJSONError, SchemaMismatchError, RefusalError, LengthError,
                    ContentFilterError) as e:
                error = type(first)(f"{first} (format fix failed: {e.kind}: {e})", raw=text)
        raise error

    def answer(self, completion: dict[str, Any]) -> tuple[str, str]:
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

    # ------------------------------------------------------------------ the end

    def finish(self) -> RunResult:
        st = self.publish()
        cfg, run = self.cfg, self.run
        if self.stop_error is not None or self.stopping or st.done < st.total:
            if self.stop_error is not None:
                state, reason = "stopped", f"{self.stop_error.rule.what}: {self.stop_error}"
            else:
                state, reason = "cancelled", "cancelled"
            resend = self.early_stop.resend(self.start, self.start + self.n)
            finished = st.done - len(resend)
            why = f" ({reason})" if reason != state else ""
            msg = (f"run {state}{why}; {finished} of {st.total} prompts finished — "
                   f"continue with --resume (run {run.path.name})")
            st.state, st.message = state, msg
            run.update_meta(state=state, reason=reason, **({"resend": resend} if resend else {}))
            self.publish()
            return RunResult(state, run.path, None, None, st, msg)
        out = output_path(cfg, run.stamp)
        summary = write_output(run.log_path, out, mode=self.mode,
                               dataset_description=self.description, start_idx=self.start,
                               num_prompts=self.n, extra={
                                   "mode": self.mode.value, "model": cfg.generator_model,
                                   "input_folder": str(cfg.input_folder.resolve()),
                                   "dataset_description": self.description,
                                   "prompt_file": str(cfg.prompt_path),
                                   "min_gen_per_candidate": self.n_expected,
                                   "run": run.path.name})
        manifest = self.write_manifest(out, summary.len_samples, st)
        run.update_meta(state=FINISHED, output=str(out), manifest=str(manifest))
        st.state, st.output, st.manifest = "finished", str(out), str(manifest)
        st.message = (f"{summary.prompts_ok} prompts ok, {summary.prompts_failed} failed; "
                      f"{summary.len_samples} samples")
        self.publish()
        return RunResult(FINISHED, run.path, out, manifest, st, st.message)

    def write_manifest(self, out: Path, len_samples: int, st: RunStatus) -> Path:
        pf = self.stream.header
        summary = summarize_log(self.run.log_path, self.start, self.n)
        manifest = build_manifest(
            output=out, run_dir=self.run.path, meta=self.run.read_meta(),
            parameters=self.cfg.public_json(), endpoint=self.cfg.endpoint.public_json(),
            model=self.cfg.generator_model,
            prompt_file={"path": str(self.cfg.prompt_path), "mode": pf.mode.value,
                         "min_gen_per_candidate": pf.min_gen_per_candidate,
                         "dataset_description": pf.dataset_description,
                         "prompts_in_file": self.stream.count},
            summary=summary, len_samples=len_samples, limits=self.shared.limiter.describe(),
            session={"elapsed_s": st.elapsed_s, "prompts": self.session_done,
                     "requests": st.requests, "retries": st.retries,
                     "errors_by_class": st.errors_by_class})
        return write_manifest(manifest_path_for(out), manifest)
