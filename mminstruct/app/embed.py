"""The workspace's embedding job: CLIP vectors of the reference set and the candidate pool, then
the 2-D projection, computed outside the app's script runs, and the command line that runs it.

``python -m mminstruct.app.embed WORKSPACE`` fills the workspace's cache ahead of time (locally,
or with the candidate pool on a Ray cluster with ``--ray_address``), so a team can embed on a GPU
box and open the app on a laptop. The app starts the same command as a detached child process
(``start_new_session=True``): it outlives page switches, reloads, closed tabs and a restart of
the app. It runs the command line's pipeline (``image_embed.embed_images`` with its default
decode workers and precision), so it embeds as fast as the command line does.

Files, under ``WS/cache/embed_job/``:

* ``job.lock``      — held (``fcntl.flock``) by the running job: a second start on the same
  workspace is refused, and the lock goes with the process however it ends (SIGKILL included);
* ``job.json``      — the job's record: pid, token, the settings key it embeds, its options;
* ``progress.json`` — state, stage, done / total, images per second, ETA (written atomically,
  about twice a second);
* ``exit.json``     — how it ended: finished / cancelled / failed (with the message);
* ``job.log``       — the child's output; ``CANCEL`` / ``PAUSE`` — flags the job obeys between
  batches (each finished batch is already in the vector cache).

A job that was killed resumes where it stopped: the vectors it wrote are in the cache and are not
computed again. When it finishes, ``curation.save_embeddings`` writes the result the pages read
(``curation.load_embeddings``, memory-mapped) and the projection is cached for Explore.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from mminstruct.cache import atomic_write_json
from mminstruct.embed.clip import PRECISIONS, check_precision
from mminstruct.errors import ConfigError, InputError, MMInstructError, choices_message
from mminstruct.app.runs import log_tail
from mminstruct.app.workspace import Workspace

log = logging.getLogger(__name__)

ENTRY_MODULE = "mminstruct.app.embed"
JOB_DIR = "embed_job"  # under the workspace's cache folder
ACTIVE = ("starting", "embedding", "paused", "projecting", "cancelling")
ENDED = ("finished", "cancelled", "failed", "interrupted")
#: The precision the app's job embeds in: the command line's default.
DEFAULT_PRECISION = "auto"
_PROGRESS_EVERY_S = 0.5
_LOCK_WAIT_S = 2.0
_CHILDREN: dict[int, subprocess.Popen] = {}  # started by this process: polled so none stays a zombie


class JobRunning(ConfigError):
    """A second start on a workspace whose job is running."""


class Cancelled(MMInstructError):
    """The job saw its CANCEL flag (or SIGTERM)."""


@dataclass(frozen=True)
class JobPaths:
    folder: Path

    @property
    def lock(self) -> Path:
        return self.folder / "job.lock"

    @property
    def record(self) -> Path:
        return self.folder / "job.json"

    @property
    def progress(self) -> Path:
        return self.folder / "progress.json"

    @property
    def exit(self) -> Path:
        return self.folder / "exit.json"

    @property
    def log(self) -> Path:
        return self.folder / "job.log"

    @property
    def cancel(self) -> Path:  # the flag names a generation run obeys (one owner: ``RunDir``)
        from mminstruct.generate.runlog import RunDir

        return RunDir.at(self.folder).cancel_flag

    @property
    def pause(self) -> Path:
        from mminstruct.generate.runlog import RunDir

        return RunDir.at(self.folder).pause_flag


def job_paths(ws: Workspace) -> JobPaths:
    return JobPaths(ws.cache_dir / JOB_DIR)


@dataclass(frozen=True)
class JobOptions:
    """How the job embeds: the command line's defaults (``num_workers`` None: its decode workers)."""

    num_workers: int | None = None
    batch_size: int = 64
    precision: str = DEFAULT_PRECISION
    ray_address: str | None = None
    project: bool = True

    def __post_init__(self) -> None:
        if self.num_workers is not None and (not isinstance(self.num_workers, int)
                                             or self.num_workers < 0):
            raise ConfigError(f"num_workers must be a whole number ≥ 0, got {self.num_workers!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive whole number, got {self.batch_size!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(choices_message("precision", self.precision, PRECISIONS))

    def argv(self) -> list[str]:
        out = ["--batch_size", str(self.batch_size), "--precision", self.precision]
        if self.num_workers is not None:
            out += ["--num_workers", str(self.num_workers)]
        if self.ray_address:
            out += ["--ray_address", self.ray_address]
        if not self.project:
            out.append("--no_projection")
        return out


# ----------------------------------------------------------------------------------------------
# Status


@dataclass
class JobStatus:
    state: str  # none, starting, embedding, paused, projecting, cancelling, or one of ENDED
    alive: bool = False
    pid: int | None = None
    token: str = ""
    key: str = ""  # the settings the job embeds (``curation.embedding_key``)
    stage: str = ""
    done: int = 0
    total: int = 0
    rate: float | None = None  # images per second computed (cached ones not counted)
    eta_s: float | None = None
    message: str = ""
    cause: str = ""
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.alive

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0

    def label(self) -> str:
        """One line: what it does, done/total, images per second, ETA."""
        if self.state == "projecting":
            return f"Projecting {self.total:,} images to 2-D" + (f": {self.stage}" if self.stage else "")
        what = {"starting": "Starting the embedding job", "paused": "Embedding paused",
                "cancelling": "Cancelling the embedding job"}.get(self.state, "Embedding")
        parts = [what + (f" ({self.stage})" if self.stage and self.state == "embedding" else "")]
        if self.total:
            parts.append(f"{self.done:,} / {self.total:,}")
        if self.rate:
            parts.append(f"{self.rate:,.0f} img/s")
        if self.eta_s is not None and self.state == "embedding":
            parts.append(f"ETA {_duration(self.eta_s)}")
        return " · ".join(parts)


def _duration(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 3600}h {s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m {s % 60:02d}s"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _lock_held(path: Path) -> bool:
    """Whether another open file (another process, or this one) holds the job's lock."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases the probe's lock, if it got it
    return False


def _reap() -> None:
    for pid, proc in list(_CHILDREN.items()):
        if proc.poll() is not None:
            del _CHILDREN[pid]


def _pid_runs_job(pid: Any, token: str) -> bool:
    """Whether ``pid`` is a live process of this job (its command line names the module and token)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    _reap()
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    state = stat_line.rsplit(")", 1)[-1].split()[0] if ")" in stat_line else "?"
    return state not in ("Z", "X") and ENTRY_MODULE in cmdline and (not token or token in cmdline)


def job_status(ws: Workspace) -> JobStatus:
    """The workspace's embedding job as its files and its lock say."""
    paths = job_paths(ws)
    record = _read_json(paths.record)
    if record is None:
        return JobStatus("none")
    token, pid = str(record.get("token", "")), record.get("pid")
    prog = _read_json(paths.progress) or {}
    if prog.get("token") != token:
        prog = {}
    alive = _lock_held(paths.lock) or (record.get("spawned", False) and _pid_runs_job(pid, token))
    st = JobStatus("starting", alive, pid if isinstance(pid, int) else None, token,
                   str(record.get("key", "")), str(prog.get("stage", "")), int(prog.get("done", 0)),
                   int(prog.get("total", 0)), prog.get("rate"), prog.get("eta_s"), record=record)
    ended = _read_json(paths.exit)
    if ended is not None and ended.get("token") != token:
        ended = None
    if alive:
        st.state = str(prog.get("state") or "starting")
        if st.state not in ACTIVE:
            st.state = "starting"
        if paths.cancel.exists():
            st.state = "cancelling"
    elif ended is not None:
        st.state, st.message = str(ended.get("state", "failed")), str(ended.get("message", ""))
        st.cause = str(ended.get("cause", ""))
        st.rate = ended.get("rate", st.rate)
    else:
        st.state = "interrupted"
        st.message = ("the embedding job ended without finishing (killed or crashed); starting it "
                      "again resumes from the vectors it cached")
        tail = log_tail(paths.log, 12)
        if tail and not prog:
            st.cause = tail
    return st


# ----------------------------------------------------------------------------------------------
# Control


def start_job(ws: Workspace, options: JobOptions | None = None, *,
              python: str | None = None) -> JobStatus:
    """Start the workspace's embedding job as a detached child; ``JobRunning`` when one runs."""
    from mminstruct.app.curation import embedding_key

    options = options or JobOptions(precision=DEFAULT_PRECISION,
                                    ray_address=ws.settings.partition.embed_ray_address or None)
    paths = job_paths(ws)
    now = job_status(ws)
    if now.alive:
        raise JobRunning(f"an embedding job is already running on workspace {ws.root} "
                         f"(pid {now.pid}); wait for it to finish or cancel it")
    paths.folder.mkdir(parents=True, exist_ok=True)
    paths.cancel.unlink(missing_ok=True)
    paths.pause.unlink(missing_ok=True)
    token = uuid.uuid4().hex
    record = {"token": token, "pid": None, "spawned": True, "key": embedding_key(ws),
              "options": asdict(options), "started": datetime.now().isoformat(timespec="seconds"),
              "workspace": str(ws.root)}
    atomic_write_json(paths.record, record)
    return _LAUNCH(ws, options, token, python)


def _spawn(ws: Workspace, options: JobOptions, token: str, python: str | None) -> JobStatus:
    paths = job_paths(ws)
    env = dict(os.environ)
    pkg_parent = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_parent, env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    with open(paths.log, "ab") as log_file:
        log_file.write(f"--- job {token} at {datetime.now().isoformat(timespec='seconds')}\n"
                       .encode())
        log_file.flush()
        proc = subprocess.Popen(
            [python or sys.executable, "-m", ENTRY_MODULE, str(ws.root), "--job", token,
             *options.argv()], env=env, cwd=str(ws.root), stdin=subprocess.DEVNULL,
            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    _CHILDREN[proc.pid] = proc
    record = _read_json(paths.record) or {}
    if record.get("token") == token and record.get("pid") is None:
        record["pid"] = proc.pid
        atomic_write_json(paths.record, record)
    return job_status(ws)


def _run_inline(ws: Workspace, options: JobOptions, token: str, python: str | None) -> JobStatus:
    """The job in this process, to its end (tests of the pages swap it in for ``_spawn``: the same
    ``run_job``, without a process start per test)."""
    try:
        run_job(ws, options, token=token, handle_signals=False)
    except MMInstructError:
        pass  # written to exit.json, which the status reports
    return job_status(ws)


_LAUNCH: Callable[[Workspace, JobOptions, str, str | None], JobStatus] = _spawn


def cancel_job(ws: Workspace) -> None:
    """Ask the running job to stop after the batch in flight (that batch is kept in the cache)."""
    paths = job_paths(ws)
    paths.folder.mkdir(parents=True, exist_ok=True)
    paths.cancel.touch()


def pause_job(ws: Workspace, paused: bool = True) -> None:
    """Pause (after the batch in flight) or continue the running job."""
    paths = job_paths(ws)
    paths.folder.mkdir(parents=True, exist_ok=True)
    if paused:
        paths.pause.touch()
    else:
        paths.pause.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------
# The job itself


class _Lock:
    """The job's ``flock``; released by close or by the process's end, however it ends."""

    def __init__(self, path: Path):
        self.path, self.fd = path, -1

    def acquire(self, wait_s: float = _LOCK_WAIT_S) -> bool:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_s  # the app's status probe holds it for microseconds
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(self.fd)
                    self.fd = -1
                    return False
                time.sleep(0.05)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _Reporter:
    """Progress to ``progress.json`` (throttled), images per second over the images computed in
    this run, and the CANCEL / PAUSE flags checked between batches."""

    def __init__(self, paths: JobPaths, token: str):
        self.paths, self.token = paths, token
        self.state, self.stage, self.done, self.total = "starting", "", 0, 0
        self.t_first: float | None = None  # when the first batch of this run landed
        self.d_first = 0
        self.stage_start: dict[str, int] = {}
        self.paused_s = 0.0
        self._last = 0.0

    @property
    def rate(self) -> float | None:
        if self.t_first is None:
            return None
        dt = time.monotonic() - self.t_first - self.paused_s
        return (self.done - self.d_first) / dt if dt > 0 and self.done > self.d_first else None

    def write(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < _PROGRESS_EVERY_S:
            return
        self._last = now
        rate = self.rate
        eta = (self.total - self.done) / rate if rate and self.state == "embedding" else None
        atomic_write_json(self.paths.progress, {
            "token": self.token, "state": self.state, "stage": self.stage, "done": self.done,
            "total": self.total, "rate": round(rate, 2) if rate else None,
            "eta_s": round(eta, 1) if eta is not None else None, "pid": os.getpid(),
            "updated": datetime.now().isoformat(timespec="seconds")}, indent=None)

    def check(self) -> None:
        if self.paths.cancel.exists():
            raise Cancelled("cancelled: the vectors embedded so far are kept in the cache")

    def embedding(self, stage: str, done: int, total: int) -> None:
        self.check()
        first_call = stage not in self.stage_start
        if first_call:
            self.stage_start[stage] = done
        if self.t_first is None and done > self.stage_start[stage]:
            self.t_first, self.d_first = time.monotonic(), self.done  # the first batch landed
        self.state, self.stage, self.done, self.total = "embedding", stage, done, total
        self.write(force=done >= total)
        if not first_call and done > self.stage_start[stage] and self.paths.pause.exists():
            self._pause()

    def _pause(self) -> None:
        t0 = time.monotonic()
        self.state = "paused"
        self.write(force=True)
        while self.paths.pause.exists():
            self.check()
            time.sleep(0.2)
        self.paused_s += time.monotonic() - t0
        self.state = "embedding"
        self.write(force=True)

    def projecting(self, fraction: float, message: str) -> None:
        self.check()
        self.state, self.stage = "projecting", message
        self.write()


def _embed_pool_on_ray(ws: Workspace, options: JobOptions, report: _Reporter) -> None:
    """The candidate images the cache lacks, embedded on the Ray cluster and imported into the
    workspace's vector cache (``distributed.embed``); the local pass then finds them cached."""
    from mminstruct.cache import file_fingerprint
    from mminstruct.embed.clip import open_cache, parse_model_spec
    from mminstruct.distributed.cluster import check_address
    from mminstruct.distributed.embed import embed_pool, import_to_cache
    from mminstruct.app.curation import candidate_files

    check_address(options.ray_address)
    cand_abs = candidate_files(ws)
    if not cand_abs:
        return
    spec = parse_model_spec(ws.settings.partition.clip_model)
    identity = spec.identity(ws.cache_dir)
    ec = open_cache(ws.cache_dir, identity)
    keys = {}
    for p in cand_abs:
        try:
            keys[p] = ec.image_key(file_fingerprint(p))  # type: ignore[union-attr]
        except OSError:
            continue  # the local pass reports it
    found = set(ec.vectors.get_many(list(keys.values())))  # type: ignore[union-attr]
    found |= set(ec.get_failures([k for k in keys.values() if k not in found]))  # type: ignore[union-attr]
    missing = [p for p, k in keys.items() if k not in found]
    if missing:
        report.state, report.stage, report.total = "embedding", "candidate images on Ray", len(cand_abs)
        report.done = len(cand_abs) - len(missing)
        report.write(force=True)
        result = embed_pool(missing, model=spec, cache_dir=ws.cache_dir,
                            batch_size=options.batch_size, ray_address=options.ray_address,
                            precision=options.precision)
        import_to_cache(result.output_dir, ws.cache_dir, identity)


def run_job(ws: Workspace, options: JobOptions | None = None, *, token: str | None = None,
            handle_signals: bool = True, echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Embed the workspace (then project it) under its lock; → what ``exit.json`` holds.
    ``JobRunning`` when another job holds the lock; ``Cancelled`` / ``MMInstructError`` after
    writing ``exit.json`` with the state and the message."""
    from mminstruct.app.curation import (embed_workspace, embedding_key, load_embeddings, projection,
                           projection_ready, save_embeddings)

    options = options or JobOptions()
    check_precision(options.precision)
    paths = job_paths(ws)
    lock = _Lock(paths.lock)
    if not lock.acquire():
        rec = _read_json(paths.record) or {}
        raise JobRunning(f"an embedding job is already running on workspace {ws.root} "
                         f"(pid {rec.get('pid', '?')}); wait for it to finish or cancel it")
    try:
        key = embedding_key(ws)
        if token is None:  # started from the command line: the app sees it through its record
            paths.cancel.unlink(missing_ok=True)
            paths.pause.unlink(missing_ok=True)
            token = uuid.uuid4().hex
        record = _read_json(paths.record) or {}
        if record.get("token") != token:
            record = {"token": token, "spawned": False, "options": asdict(options),
                      "started": datetime.now().isoformat(timespec="seconds"),
                      "workspace": str(ws.root)}
        record.update(pid=os.getpid(), key=key)
        atomic_write_json(paths.record, record)
        report = _Reporter(paths, token)
        report.write(force=True)
        if handle_signals:
            import signal

            signal.signal(signal.SIGTERM, lambda *_: paths.cancel.touch())
        t0 = time.monotonic()
        result: dict[str, Any] = {"token": token, "key": key}
        try:
            emb = load_embeddings(ws, key=key)
            if emb is None:
                if options.ray_address:
                    _embed_pool_on_ray(ws, options, report)
                emb = embed_workspace(ws, report.embedding, num_workers=options.num_workers,
                                      precision=options.precision, batch_size=options.batch_size)
                report.check()
                save_embeddings(ws, emb, key, token)
                result.update(n_computed=emb.n_computed, n_cached=emb.n_cached)
                if echo:
                    echo(f"embedded {emb.n:,} images ({emb.n_computed:,} computed, "
                         f"{emb.n_cached:,} from the cache)"
                         + (f" at {report.rate:,.1f} img/s" if report.rate else ""))
            else:
                result.update(n_computed=0, n_cached=emb.n)
                if echo:
                    echo(f"{emb.n:,} images already embedded for these settings")
            result["rate"] = round(report.rate, 2) if report.rate else None
            result["n"] = emb.n
            if options.project and emb.n and not projection_ready(ws, emb):
                report.state, report.done, report.total = "projecting", emb.n, emb.n
                report.write(force=True)
                t_proj = time.monotonic()
                projection(ws, emb, progress=report.projecting)
                result["projection_s"] = round(time.monotonic() - t_proj, 2)
                if echo:
                    echo(f"projected with {ws.settings.partition.projection}")
            result.update(state="finished", message="")
        except Cancelled as e:
            result.update(state="cancelled", message=str(e))
            raise
        except MMInstructError as e:
            cause = e.__cause__
            result.update(state="failed", message=str(e),
                          cause=f"{type(cause).__name__}: {cause}" if cause is not None else "")
            raise
        except Exception as e:  # a crash: said in exit.json (and in full in the log), then raised
            result.update(state="failed", message=f"{type(e).__name__}: {e}")
            raise
        finally:
            result["seconds"] = round(time.monotonic() - t0, 2)
            result["ended"] = datetime.now().isoformat(timespec="seconds")
            if "state" in result:
                atomic_write_json(paths.exit, result)
            paths.cancel.unlink(missing_ok=True)
            paths.pause.unlink(missing_ok=True)
        return result
    finally:
        lock.release()


def main(argv: list[str] | None = None) -> int:
    from mminstruct.cli import setup_logging

    p = argparse.ArgumentParser(
        prog=f"python -m {ENTRY_MODULE}",
        description="Embed a workspace's reference images and candidate pool into its cache (and "
                    "project them for the map), as the app's Explore page would: run it on a "
                    "machine with cores or a GPU, then open the app anywhere.")
    p.add_argument("workspace", help="the workspace folder (it holds workspace.json)")
    p.add_argument("--num_workers", type=int, default=None,
                   help="image decoding workers (default: the command line's, by core count)")
    p.add_argument("--batch_size", type=int, default=64, help="images per batch (default 64)")
    p.add_argument("--precision", default=DEFAULT_PRECISION, type=str.lower,
                   help=f"fp32, bf16, int8 or auto (default {DEFAULT_PRECISION})")
    p.add_argument("--ray_address", default=None, metavar="ADDRESS|auto|local",
                   help="embed the candidate pool on Ray: 'local', 'auto' or HOST:PORT")
    p.add_argument("--no_projection", action="store_true", help="embed only; skip the 2-D map")
    p.add_argument("--debug", action="store_true")
    p.add_argument("--job", default=None, help=argparse.SUPPRESS)  # the app's token
    args = p.parse_args(argv)
    setup_logging(args.debug)
    try:
        ws = Workspace.open(args.workspace)
        if not ws.has_data:
            raise InputError(f"workspace {ws.root} has no data file yet; open or upload one in "
                             "the app first")
        options = JobOptions(args.num_workers, args.batch_size, args.precision,
                             args.ray_address, not args.no_projection)
        run_job(ws, options, token=args.job,
                echo=lambda s: print(s, file=sys.stderr if args.job else sys.stdout))
    except JobRunning as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except Cancelled as e:
        print(str(e), file=sys.stderr)
        return 130
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except MMInstructError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
