"""The files of an OpenAI Batch API run: its state, its request parts, and the results it downloads.

Everything lives in the run folder (``generated_data/runs/{prefix}_{stamp}/``) beside the log:

* ``batches.json`` — the state: one entry per *part* (one input file = one batch) with the prompts
  it holds (as ``[start, stop)`` runs), its stage (``built`` → ``uploaded`` → ``submitted`` →
  ``collected``), the file and batch ids, the provider's status and request counts. Rewritten
  atomically (temporary file, fsync, rename) after every step, so a process killed at any moment
  finds each part where it left it: a built part is uploaded, an uploaded part gets its batch (after
  looking for one already created from that file), a submitted batch is polled — never resubmitted.
* ``batches/{part}.jsonl`` — a part's requests, exactly the lines ``--dry_run`` writes; deleted once
  its batch exists. Only one is on disk at a time, so disk use is bounded by the 200 MB limit.
* ``batches/{part}.prompts.jsonl`` — each prompt's provenance (keyword, ICL indices, image) for its
  log record; deleted when the part's results are recorded.
* ``batches/{part}.output.jsonl`` / ``.errors.jsonl`` — the downloaded results, redacted line by
  line while streaming to disk (a server may echo a key in an error body); deleted once recorded.
* ``batch_errors.jsonl`` — append-only: each failed line that was resubmitted (prompt, class,
  batch), so a prompt's final record counts the attempts it took, as the online engine's records do.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mminstruct.cache import atomic_write_json, atomic_writer
from mminstruct.errors import DataFileError
from mminstruct.llm.errors import (BadPromptError, LLMError, RateLimitError, RequestTimeoutError,
                          ServerError, classify, redact)
from mminstruct.llm.requests import candidate_image
from mminstruct.data.modes import Mode

log = logging.getLogger(__name__)

STATE_FILE = "batches.json"
PARTS_DIR = "batches"
ERRORS_FILE = "batch_errors.jsonl"
STATE_VERSION = 1

#: Provider statuses after which a batch changes no more.
TERMINAL = frozenset({"completed", "expired", "failed", "cancelled"})
#: Line error codes that mean "not run" rather than "failed".
EXPIRED_CODE = "batch_expired"
CANCELLED_CODE = "batch_cancelled"
_SERVER_CODES = {"server_error", "internal_error", "internal_server_error", "timeout",
                 "service_unavailable", "overloaded"}
#: Batch-level error codes that are about capacity, not about the requests.
_CAPACITY_CODES = {"token_limit_exceeded", "rate_limit_exceeded", "request_limit_exceeded",
                   "enqueued_token_limit_exceeded", "too_many_requests"}


# ----------------------------------------------------------------------------------------------
# Prompt index runs


def to_ranges(indices: Iterable[int]) -> list[list[int]]:
    """Sorted indices → ``[[start, stop), …]`` runs (a 50,000-prompt part is usually one run)."""
    out: list[list[int]] = []
    for i in indices:
        if out and out[-1][1] == i:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    return out


# ----------------------------------------------------------------------------------------------
# State


@dataclass
class Part:
    """One input file and the batch made from it."""

    name: str
    wave: int
    ranges: list[list[int]]
    lines: int
    bytes: int
    stage: str = "built"  # built | uploaded | submitted | collected
    file_id: str | None = None
    creating: bool = False  # batches.create was called: look the batch up before creating again
    batch_id: str | None = None
    status: str | None = None  # the provider's status
    request_counts: dict[str, int] = field(default_factory=dict)
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)  # batch-level (failed batches)
    created_at: float | None = None
    collected: dict[str, int] = field(default_factory=dict)  # outcome counts when recorded

    def contains(self, idx: int) -> bool:
        k = bisect.bisect_right(self.ranges, [idx, float("inf")]) - 1
        return k >= 0 and self.ranges[k][0] <= idx < self.ranges[k][1]

    def indices(self) -> Iterator[int]:
        for a, b in self.ranges:
            yield from range(a, b)

    @property
    def has_batch(self) -> bool:
        return self.batch_id is not None or self.creating

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Part:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class BatchState:
    """``batches.json`` of a run folder."""

    def __init__(self, run_path: Path, parts: list[Part] | None = None, waves: int = 0):
        self.run_path = run_path
        self.parts: list[Part] = parts or []
        self.waves = waves

    @property
    def path(self) -> Path:
        return self.run_path / STATE_FILE

    @property
    def folder(self) -> Path:
        return self.run_path / PARTS_DIR

    @classmethod
    def load(cls, run_path: Path) -> BatchState:
        p = run_path / STATE_FILE
        if not p.exists():
            return cls(run_path)
        try:
            data = json.loads(p.read_text())
            parts = [Part.from_json(x) for x in data["parts"]]
            return cls(run_path, parts, int(data.get("waves", 0)))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataFileError(f"{p}: cannot read the run's Batch API state: {e}") from e

    def save(self) -> None:
        atomic_write_json(self.path, {"version": STATE_VERSION, "waves": self.waves,
                                      "parts": [p.to_json() for p in self.parts]})

    def live(self) -> list[Part]:
        return [p for p in self.parts if p.stage != "collected"]

    def pending_at_provider(self) -> list[Part]:
        """Batches that exist (or may exist) at the provider and are not recorded yet."""
        return [p for p in self.parts if p.stage != "collected" and p.has_batch]

    def summary(self) -> dict[str, Any]:
        statuses = Counter(p.status or p.stage for p in self.parts)
        done = sum(int(p.request_counts.get("completed", 0)) + int(p.request_counts.get(
            "failed", 0)) for p in self.live())
        total = sum(p.lines for p in self.live())
        return {"batches": len(self.parts), "by_status": dict(statuses), "waves": self.waves,
                "live_lines_done": done, "live_lines": total}

    def manifest_section(self, cfg: Any, url: str) -> dict[str, Any]:
        """What the manifest says about the run's batches."""
        return {
            "used": True, "endpoint": url, "completion_window": cfg.batch_completion_window,
            "max_submits": cfg.batch_max_submits, "max_requests_per_file": cfg.batch_max_requests,
            "max_bytes_per_file": cfg.batch_max_bytes, "waves": self.waves,
            "by_status": dict(Counter(p.status or p.stage for p in self.parts)),
            "batches": [{"part": p.name, "wave": p.wave, "batch_id": p.batch_id,
                         "status": p.status, "requests": p.lines, "bytes": p.bytes,
                         "input_file_id": p.file_id, "output_file_id": p.output_file_id,
                         "error_file_id": p.error_file_id, "request_counts": p.request_counts,
                         "recorded": p.collected, "errors": p.errors} for p in self.parts],
        }

    def describe(self) -> str:
        s = self.summary()
        states = ", ".join(f"{n} {k}" for k, n in sorted(s["by_status"].items()))
        live = (f"; {s['live_lines_done']:,}/{s['live_lines']:,} lines of the open batches"
                if s["live_lines"] else "")
        return f"{s['batches']} batch(es): {states or 'none yet'}{live}"


def load_resubmitted_errors(run_path: Path) -> dict[int, Counter]:
    """prompt → Counter of the error classes of its failed lines that were resubmitted (one count
    per (batch, prompt), so a collection repeated after a crash does not count twice)."""
    path = run_path / ERRORS_FILE
    out: dict[int, Counter] = {}
    if not path.exists():
        return out
    seen: set[tuple[str, int]] = set()
    with open(path, "rb") as f:
        for line in f:
            try:
                rec = json.loads(line)
                key = (str(rec["batch"]), int(rec["prompt_idx"]))
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line
            if key in seen:
                continue
            seen.add(key)
            out.setdefault(key[1], Counter())[str(rec.get("error_class"))] += 1
    return out


def append_resubmitted(run_path: Path, idx: int, err: LLMError, batch_id: str | None) -> None:
    """Note a failed line that goes into a new batch (one write on an O_APPEND descriptor)."""
    line = json.dumps({"prompt_idx": idx, "error_class": err.kind, "batch": batch_id,
                       "message": redact(err)[:300]}, ensure_ascii=False) + "\n"
    fd = os.open(run_path / ERRORS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------
# Building a part


def line_fits(lines: int, nbytes: int, line: str, max_requests: int, max_bytes: int) -> bool:
    """Whether one more request line stays within a Batch API input file's limits (a file of
    ``lines`` lines and ``nbytes`` bytes so far); the first line always fits."""
    return lines == 0 or (lines < max_requests and nbytes + len(line.encode()) + 1 <= max_bytes)


class PartWriter:
    """A part's request file and prompts sidecar, written through temporary files; ``fits`` says
    whether one more line stays within the limits (the first line always fits)."""

    def __init__(self, folder: Path, name: str, wave: int, max_requests: int, max_bytes: int):
        self.folder, self.name, self.wave = folder, name, wave
        self.max_requests, self.max_bytes = max_requests, max_bytes
        self.lines = 0
        self.bytes = 0
        self.indices: list[int] = []
        self._cms = [atomic_writer(self.requests_path, "w"), atomic_writer(self.prompts_path, "w")]
        self._req = self._cms[0].__enter__()
        self._prm = self._cms[1].__enter__()

    @property
    def requests_path(self) -> Path:
        return requests_path(self.folder, self.name)

    @property
    def prompts_path(self) -> Path:
        return prompts_path(self.folder, self.name)

    def fits(self, line: str) -> bool:
        return line_fits(self.lines, self.bytes, line, self.max_requests, self.max_bytes)

    def add(self, idx: int, line: str, base: dict[str, Any]) -> None:
        self._req.write(line + "\n")
        self._prm.write(json.dumps(base, ensure_ascii=False) + "\n")
        self.lines += 1
        self.bytes += len(line.encode()) + 1
        self.indices.append(idx)

    def close(self) -> Part:
        for cm in self._cms:
            cm.__exit__(None, None, None)
        return Part(self.name, self.wave, to_ranges(self.indices), self.lines, self.bytes)

    def abort(self, exc: BaseException | None = None) -> None:
        for cm in self._cms:
            try:
                cm.__exit__(type(exc) if exc else RuntimeError,
                            exc or RuntimeError("part abandoned"), None)
            except BaseException:  # the writer re-raises what it was given; we only clean up
                pass


def requests_path(folder: Path, name: str) -> Path:
    return folder / f"{name}.jsonl"


def prompts_path(folder: Path, name: str) -> Path:
    return folder / f"{name}.prompts.jsonl"


def result_path(folder: Path, name: str, kind: str) -> Path:
    return folder / f"{name}.{kind}.jsonl"


def load_prompts(path: Path) -> dict[int, dict[str, Any]]:
    """A part's sidecar: prompt index → its record's provenance fields."""
    out: dict[int, dict[str, Any]] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                base = json.loads(line)
                out[int(base["prompt_idx"])] = base
    except (OSError, ValueError, KeyError) as e:
        raise DataFileError(f"{path}: cannot read a batch part's prompts: {e}") from e
    return out


def prompts_from_file(stream: Any, part: Part, mode: Mode) -> dict[int, dict[str, Any]]:
    """A part's provenance read again from the prompt file (when its sidecar is gone)."""
    out: dict[int, dict[str, Any]] = {}
    for idx, entry in stream.entries(part.ranges[0][0], part.ranges[-1][1]):
        if part.contains(idx):
            out[idx] = {"prompt_idx": idx} if isinstance(entry, BadPromptError) else {
                "prompt_idx": idx, "keyword": entry.keyword, "icl_indices": entry.icl_indices,
                "image": candidate_image(entry, mode)}
    return out


def remove_part_files(folder: Path, name: str, *kinds: str) -> None:
    for kind in kinds:
        path = {"requests": requests_path(folder, name),
                "prompts": prompts_path(folder, name)}.get(kind) or result_path(folder, name, kind)
        path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------
# Downloading results


async def download_redacted(client: Any, file_id: str, dest: Path, timeout: float) -> int:
    """Stream a file's content to ``dest`` (atomically), each line through ``redact``; returns
    the number of lines. Memory: one chunk and one line."""
    n = 0
    async with client.files.with_streaming_response.content(file_id, timeout=timeout) as resp:
        with atomic_writer(dest, "w") as f:
            rest = b""
            async for chunk in resp.iter_bytes():
                rest += chunk
                *lines, rest = rest.split(b"\n")
                for line in lines:
                    if line.strip():
                        f.write(redact(line.decode("utf-8", "replace")) + "\n")
                        n += 1
            if rest.strip():
                f.write(redact(rest.decode("utf-8", "replace")) + "\n")
                n += 1
    return n


# ----------------------------------------------------------------------------------------------
# Reading result lines


@dataclass
class LineResult:
    """One line of a batch's output or error file."""

    idx: int | None
    completion: dict[str, Any] | None = None
    error: LLMError | None = None
    not_run: str | None = None  # "expired" | "cancelled": the request never ran


def read_result_line(line: str) -> LineResult:
    """Interpret ``{"custom_id", "response": {"status_code", "body"}, "error"}``."""
    try:
        rec = json.loads(line)
        idx = int(rec["custom_id"])
    except (ValueError, KeyError, TypeError):
        return LineResult(None, error=ServerError(f"unreadable result line: {line[:200]!r}"))
    response = rec.get("response") or {}
    error = rec.get("error")
    status = response.get("status_code") if isinstance(response, dict) else None
    body = response.get("body") if isinstance(response, dict) else None
    if isinstance(error, dict) and error:
        code = str(error.get("code") or "")
        message = str(error.get("message") or code)
        if code == EXPIRED_CODE:
            return LineResult(idx, error=RequestTimeoutError(
                f"the batch expired before this request ran: {message}"), not_run="expired")
        if code == CANCELLED_CODE:
            return LineResult(idx, not_run="cancelled")
        if code in _SERVER_CODES:
            return LineResult(idx, error=ServerError(f"batch line error {code}: {message}"))
        if code in _CAPACITY_CODES:
            return LineResult(idx, error=RateLimitError(f"batch line error {code}: {message}"))
        return LineResult(idx, error=status_error(400, {"error": error}))
    if status == 200 and isinstance(body, dict):
        return LineResult(idx, completion=body)
    if isinstance(status, int):
        return LineResult(idx, error=status_error(status, body))
    return LineResult(idx, error=ServerError(f"result line without a response: {line[:200]!r}"))


def status_error(status: int, body: Any) -> LLMError:
    """The error class of a line's HTTP status and body — through ``errors.classify``, the rules
    the online engine applies to the same response."""
    import httpx2
    import openai

    request = httpx2.Request("POST", "https://batch.invalid/v1/chat/completions")
    response = httpx2.Response(status, json=body if body is not None else {}, request=request)
    err = body.get("error") if isinstance(body, dict) else None
    message = str(err.get("message") if isinstance(err, dict) else body)[:500]
    return classify(openai.APIStatusError(message, response=response, body=body))


def batch_failure(part: Part) -> LLMError:
    """The error of a batch that failed as a whole (validation, capacity), for its prompts."""
    errors = part.errors or [{"code": "unknown", "message": "the batch failed without errors"}]
    codes = {str(e.get("code") or "") for e in errors}
    text = "; ".join(f"{e.get('code')}: {e.get('message')}"
                     + (f" (line {e['line']})" if e.get("line") else "") for e in errors[:5])
    message = f"batch {part.batch_id} failed: {text}"
    if codes & _CAPACITY_CODES:
        return RateLimitError(message)
    if codes & {"model_not_found", "invalid_model", "deployment_not_found"}:
        return status_error(404, {"error": {"message": message, "code": "model_not_found"}})
    return status_error(400, {"error": {"message": message, "code": sorted(codes)[0]}})


def error_json(errors: Any) -> list[dict[str, Any]]:
    """A batch's ``errors.data`` as plain, redacted dicts."""
    data = getattr(errors, "data", None) if errors is not None else None
    out = []
    for e in data or []:
        d = e.model_dump() if hasattr(e, "model_dump") else dict(e)
        out.append({k: redact(v) if isinstance(v, str) else v for k, v in d.items()})
    return out
