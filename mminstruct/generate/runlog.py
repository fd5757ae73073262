"""A run's folder and its append-only log: the only state a run needs to continue after a crash.

Layout, under ``OUTPUT/generated_data/runs/{file_prefix}_{YYYYmmdd_HHMMSS}/``:

* ``run.json``   — what the run is (its parameters and their identity key) and its state:
  ``running``, ``paused``, ``cancelled``, ``stopped`` (quota/auth) or ``finished`` (+ output path);
* ``log.jsonl``  — one JSON line per finished prompt (a success with its items, or a final failure
  with its class and message), appended in completion order;
* ``status.json`` — live counts for a watcher (the app), rewritten atomically every second;
* ``CANCEL`` / ``PAUSE`` — flag files another process may create to cancel or pause the run;
* ``lock``       — held (``flock``) while a process runs it, so two cannot append at once.

Durability: each record is written with a single ``os.write`` on an ``O_APPEND`` descriptor
before the next is recorded, so it is in the operating system the moment it is logged and a
``kill -9`` cannot lose it. ``fsync`` runs at most once per ``fsync_interval`` (1 s) and on close:
that protects against power loss too, losing at most the last second's records — which a resume
simply sends again — without paying a disk flush per response at hundreds of responses a second.
A line torn by a crash can only be the last one; readers skip it and the next writer truncates it.
When a prompt has several records (a failure retried on resume), the latest one counts.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mminstruct.cache import atomic_write_json
from mminstruct.errors import ConfigError, DataFileError
from mminstruct.data.formats import generated_dir
from mminstruct.llm.errors import RETRYABLE_ON_RESUME

if TYPE_CHECKING:
    from mminstruct.generate.config import GenerationConfig
    from mminstruct.generate.jsonstream import PromptStream

log = logging.getLogger(__name__)

RUNS_DIR = "runs"
STAMP_FORMAT = "%Y%m%d_%H%M%S"
FINISHED = "finished"

# Shard names. A shard's file_prefix is ``{prefix}_shard_{k}_of_{n}`` (k from 1, zero-padded), so
# its outputs ``{prefix}_shard_01_of_03_{stamp}.json`` are what MM-Gen's merge.py reads with
# ``--run_id {prefix}_shard``: its sort key, the integer after ``{run_id}_``, is the shard number.
# Before, shards were ``{prefix}_shard01of03`` (merge.py's int() fails on it); runs and outputs
# under that name are still found (resume, ``batch_data_generator merge``).
SHARD_NAME = re.compile(r"^(?P<prefix>.+)_shard(?:_(?P<k>\d+)_of_(?P<n>\d+)|(?P<k_old>\d+)of"
                        r"(?P<n_old>\d+))$")


def shard_prefix(prefix: str, k: int, parts: int) -> str:
    """The file_prefix of shard ``k`` (from 0) of ``parts``."""
    width = max(2, len(str(parts)))
    return f"{prefix}_shard_{k + 1:0{width}d}_of_{parts:0{width}d}"


def legacy_shard_prefix(file_prefix: str) -> str | None:
    """The name an earlier version gave the shard ``file_prefix`` (``P_shard01of03``); None when
    ``file_prefix`` is not a shard's."""
    m = SHARD_NAME.match(file_prefix)
    if not m or m.group("k") is None:
        return None
    return f"{m.group('prefix')}_shard{m.group('k')}of{m.group('n')}"


def new_stamp(now: datetime | None = None) -> str:
    return (now or datetime.now()).strftime(STAMP_FORMAT)


def unique_output_path(folder: Path, prefix: str, suffix: str = ".json") -> Path:
    """``folder/{prefix}_{YYYYmmdd_HHMMSS}{suffix}``, with ``_2``, ``_3``… if that name exists, so a
    new file never replaces an earlier one made in the same second."""
    stamp = new_stamp()
    path, n = folder / f"{prefix}_{stamp}{suffix}", 1
    while path.exists():
        n += 1
        path = folder / f"{prefix}_{stamp}_{n}{suffix}"
    return path


class RunLog:
    """Append-only JSONL; ``append`` is durable against process death when it returns."""

    def __init__(self, path: Path, fsync_interval: float = 1.0):
        self.path = path
        self.fsync_interval = fsync_interval
        _truncate_torn_tail(path)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._last_sync = time.monotonic()
        self._dirty = False
        self.appended = 0

    def append(self, record: dict[str, Any]) -> None:
        data = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self.appended += 1
        self._dirty = True
        if self.fsync_interval <= 0 or time.monotonic() - self._last_sync >= self.fsync_interval:
            self.sync()

    def sync(self) -> None:
        if self._dirty:
            os.fsync(self._fd)
            self._dirty = False
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if self._fd >= 0:
            self.sync()
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _truncate_torn_tail(path: Path) -> None:
    """Cut a last line that a crash left without its newline, so the next record starts clean."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        size = f.seek(0, os.SEEK_END)
        back = min(size, 1 << 20)
        while True:
            f.seek(size - back)
            tail = f.read(back)
            cut = tail.rfind(b"\n")
            if cut >= 0 or back == size:
                keep = size - back + cut + 1 if cut >= 0 else 0
                break
            back = min(size, back * 4)
        log.warning("%s: dropping a torn last line (%d bytes) left by an interrupted run",
                    path, size - keep)
        f.truncate(keep)


def iter_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(byte offset, record) for every complete, valid line; torn or corrupt lines are skipped."""
    if not path.exists():
        return
    with open(path, "rb") as f:
        offset = 0
        for line in f:
            start, offset = offset, offset + len(line)
            if not line.endswith(b"\n"):
                break  # torn last line
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                log.warning("%s: skipping a corrupt line at byte %d", path, start)
                continue
            if isinstance(rec, dict) and isinstance(rec.get("prompt_idx"), int):
                yield start, rec


def read_record_at(path: Path, offset: int) -> dict[str, Any]:
    with open(path, "rb") as f:
        f.seek(offset)
        return json.loads(f.readline())


@dataclass(slots=True)
class Latest:
    """The latest record of one prompt, without its items (kept small for 150,000 prompts)."""

    offset: int
    ok: bool
    error_class: str | None
    n_items: int


def latest_records(path: Path) -> dict[int, Latest]:
    out: dict[int, Latest] = {}
    for offset, rec in iter_records(path):
        ok = rec.get("outcome") == "ok"
        out[rec["prompt_idx"]] = Latest(offset, ok, None if ok else rec.get("error_class"),
                                        int(rec.get("n_items", 0)) if ok else 0)
    return out


# ----------------------------------------------------------------------------------------------
# Run folders


@dataclass
class RunDir:
    """A run folder ``{prefix}_{stamp}``: the one place the names of its files are spelled."""

    path: Path
    file_prefix: str = ""
    stamp: str = ""

    @classmethod
    def at(cls, path: str | os.PathLike) -> RunDir:
        """The run folder at ``path`` (prefix and stamp read from its name where they fit)."""
        p = Path(path)
        m = _RUN_NAME.match(p.name)
        return cls(p, m.group("prefix"), m.group("stamp")) if m else cls(p)

    @property
    def log_path(self) -> Path:
        return self.path / "log.jsonl"

    @property
    def meta_path(self) -> Path:
        return self.path / "run.json"

    @property
    def status_path(self) -> Path:
        return self.path / "status.json"

    @property
    def cancel_flag(self) -> Path:
        return self.path / "CANCEL"

    @property
    def pause_flag(self) -> Path:
        return self.path / "PAUSE"

    @property
    def lock_path(self) -> Path:
        return self.path / "lock"

    def is_run(self) -> bool:
        return self.meta_path.exists()

    def read_meta(self) -> dict[str, Any]:
        try:
            return json.loads(self.meta_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataFileError(f"{self.meta_path}: cannot read the run's description: {e}") from e

    def write_meta(self, meta: dict[str, Any]) -> None:
        atomic_write_json(self.meta_path, meta)

    def update_meta(self, **changes: Any) -> dict[str, Any]:
        meta = self.read_meta()
        meta.update(changes)
        self.write_meta(meta)
        return meta

    def lock(self) -> int:
        """Hold the run's lock for this process (released by the OS when it dies)."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            os.close(fd)
            raise ConfigError(f"run {self.path} is being run by another process") from e
        return fd


_RUN_NAME = re.compile(r"^(?P<prefix>.+)_(?P<stamp>\d{8}_\d{6}(?:_\d+)?)$")


def runs_root(output_folder: Path) -> Path:
    return generated_dir(output_folder) / RUNS_DIR


def create_run(output_folder: Path, file_prefix: str, meta: dict[str, Any],
               now: datetime | None = None) -> RunDir:
    root = runs_root(output_folder)
    root.mkdir(parents=True, exist_ok=True)
    stamp = new_stamp(now)
    base, n = stamp, 1
    while True:
        path = root / f"{file_prefix}_{stamp}"
        try:
            path.mkdir()
            break
        except FileExistsError:
            n += 1
            stamp = f"{base}_{n}"
    run = RunDir(path, file_prefix, stamp)
    run.write_meta({**meta, "file_prefix": file_prefix, "stamp": stamp, "state": "running",
                    "created": datetime.now().isoformat(timespec="seconds")})
    run.log_path.touch()
    return run


def list_runs(output_folder: Path, file_prefix: str) -> list[RunDir]:
    """Runs of ``file_prefix`` in ``output_folder``, oldest first."""
    root = runs_root(output_folder)
    if not root.is_dir():
        return []
    out = []
    names = {file_prefix, legacy_shard_prefix(file_prefix)}  # a shard's runs under the old name too
    for child in root.iterdir():
        m = _RUN_NAME.match(child.name)
        if m and m.group("prefix") in names and RunDir.at(child).is_run():
            out.append(RunDir(child, file_prefix, m.group("stamp")))
    return sorted(out, key=lambda r: _stamp_key(r.stamp))


def _stamp_key(stamp: str) -> tuple[str, int]:
    parts = stamp.split("_")
    return ("_".join(parts[:2]), int(parts[2]) if len(parts) > 2 else 1)


def latest_unfinished(output_folder: Path, file_prefix: str) -> RunDir | None:
    for run in reversed(list_runs(output_folder, file_prefix)):
        try:
            state = run.read_meta().get("state")
        except DataFileError:
            continue
        if state != FINISHED:
            return run
    return None


def open_run(path: str | os.PathLike) -> RunDir:
    run = RunDir.at(path)
    if not run.stamp or not run.is_run():
        raise DataFileError(f"{run.path}: not a generation run folder (no {run.meta_path.name})")
    return run


# ----------------------------------------------------------------------------------------------
# Which run a command continues


def output_path(cfg: GenerationConfig, stamp: str) -> Path:
    return generated_dir(cfg.output_folder) / f"{cfg.file_prefix}_{stamp}.json"


def open_or_create_run(cfg: GenerationConfig, stream: PromptStream, start: int, n: int) -> RunDir:
    identity = cfg.identity(stream.count)
    content = cfg.content_params()
    content["num_prompts"] = n
    if cfg.resume:
        run = latest_unfinished(cfg.output_folder, cfg.file_prefix)
        runs = list_runs(cfg.output_folder, cfg.file_prefix)
        if run is None and cfg.retry_failed and runs and _has_retryable(runs[-1]):
            run = runs[-1]  # a finished run with transient failures: re-send those
        if run is None:
            hint = f" (its latest run {runs[-1].path.name} is finished)" if runs else ""
            raise ConfigError(f"--resume: no unfinished run with file_prefix "
                              f"{cfg.file_prefix!r} in {cfg.output_folder}{hint}; run without "
                              "--resume to start one"
                              + ("" if cfg.retry_failed or not runs else
                                 ", or add --retry_failed to re-send its transient failures"))
        meta = run.read_meta()
        if meta.get("identity") != identity:
            old = meta.get("content", {})
            diffs = [f"{k} was {old.get(k)!r}, now {content.get(k)!r}"
                     for k in content if old.get(k) != content.get(k)]
            what = "; ".join(diffs) or "the prompt file changed since the run started"
            raise ConfigError(f"cannot resume {run.path.name}: {what}. Resume with the same "
                              "values, or start a new run without --resume")
        log.info("resuming run %s", run.path)
        return run
    pending = latest_unfinished(cfg.output_folder, cfg.file_prefix)
    if pending is not None:
        log.info("note: unfinished run %s exists; pass --resume to continue it instead",
                 pending.path.name)
    return create_run(cfg.output_folder, cfg.file_prefix, {
        "identity": identity, "content": content, "range": [start, n],
        "parameters": cfg.public_json()})


def _has_retryable(run: RunDir) -> bool:
    return any(not r.ok and r.error_class in RETRYABLE_ON_RESUME
               for r in latest_records(run.log_path).values())
