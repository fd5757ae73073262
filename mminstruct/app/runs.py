"""Background generation runs for the app: start, watch, pause, continue, cancel, resume.

A run the app starts is a detached child process (``start_new_session=True``) running
``python -m mminstruct.app.runs run --launch WS/launches/NAME.json``, so it outlives page reloads,
closed tabs and a restart of the app itself. The run's name is its ``file_prefix``; the engine
keeps its durable state in ``generated_data/runs/NAME_{stamp}/`` (run log, ``run.json``,
``status.json``, the ``PAUSE`` / ``CANCEL`` flags), so everything here is read back from files:

* ``launches/NAME.json``      — written by the app: the run's parameters (``public_json``, never
  the key), the child's pid and a token that identifies this start;
* ``launches/NAME.exit.json`` — written by the child when it ends: state, message, output;
* ``launches/NAME.log``       — the child's stderr (log lines pass through the key redaction).

The API key reaches the child only through its environment (the variable the endpoint reads,
``OPENAI_API_KEY`` by default): never argv, never a file.

``run_info`` combines the files with a liveness check of the pid (``/proc``: the process exists,
is not a zombie, and its command line is this launch's) into one state: ``starting``, ``running``,
``paused``, ``cancelling``, ``finished``, ``cancelled``, ``stopped`` (quota, auth, unknown model),
``interrupted`` (the process died mid-run: resume it) or ``failed`` (it never got going: the log
says why).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from mminstruct.cache import atomic_write_json
from mminstruct.errors import ConfigError, DataFileError, InputError, MMInstructError
from mminstruct.data.formats import FILE_PREFIX_MAX, check_file_prefix
from mminstruct.generate.config import GenerationConfig, config_from_dict
from mminstruct.generate.control import read_status, request_cancel, request_pause
from mminstruct.generate.manifest import CostEstimate, estimate_cost
from mminstruct.generate.runlog import RunDir, list_runs
from mminstruct.llm.client import EndpointConfig, effective_base_url

log = logging.getLogger(__name__)

LAUNCHES = "launches"
ENTRY_MODULE = "mminstruct.app.runs"
ACTIVE = ("starting", "running", "paused", "cancelling", "finishing")
_CHILDREN: dict[int, subprocess.Popen] = {}  # started by this process: polled so none stays a zombie


def new_run_name(prefix: str = "gen", ws_root: str | os.PathLike | None = None) -> str:
    """A name for a new run: ``prefix`` itself, or ``prefix-2``, ``prefix-3``… when the
    workspace already has a run of that name. No timestamp: the run's folder and output file add
    their own (``{name}_{YYYYmmdd_HHMMSS}.json``)."""
    base = check_name(prefix[:FILE_PREFIX_MAX].rstrip("._-") or "gen")
    if ws_root is None:
        return base
    n, name = 1, base
    while _paths(Path(ws_root), name)[0].exists():
        n += 1
        suffix = f"-{n}"
        name = check_name(base[:FILE_PREFIX_MAX - len(suffix)].rstrip("._-") + suffix)
    return name


def check_name(name: str) -> str:
    """A run's name: the file-name rule of ``formats.check_file_prefix`` (the same one the
    Prompts page's prefix field and the command lines' ``--file_prefix`` follow)."""
    return check_file_prefix(name, "run name")


def _paths(ws_root: Path, name: str) -> tuple[Path, Path, Path]:
    base = Path(ws_root) / LAUNCHES
    return base / f"{name}.json", base / f"{name}.exit.json", base / f"{name}.log"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ----------------------------------------------------------------------------------------------
# Configs


def endpoint_config(base_url: str = "", api_key_env: str = "") -> EndpointConfig:
    return EndpointConfig(base_url=base_url or None, api_key_env=api_key_env or None)


def judge_config(ws: Any, generated: str | os.PathLike, name: str, *, generator_model: str = "",
                 sample: float | None = None, max_cost: float | None = None) -> Any:
    """A judge run (``mminstruct.quality.judge``) of the generated file ``generated`` with the
    workspace's endpoint settings; ``generator_model`` (the judge's model; default: the generation's) may differ from
    the generator. Its scores go to ``manifests/RUN.scores.jsonl`` (where Review looks)."""
    from mminstruct.quality.judge import JudgeConfig, default_scores_path

    e = ws.settings.endpoint
    values = e.generation_values()
    if generator_model.strip():
        values["generator_model"] = generator_model.strip()
    from mminstruct.generate.output import output_header

    src = Path(generated)
    header = output_header(src)
    return JudgeConfig(
        input_folder=header.get("input_folder") or ws.input_root or ".", output_folder=ws.root,
        prompt_file=str(src.resolve()), file_prefix=check_name(name),
        endpoint=endpoint_config(e.base_url, e.api_key_env),
        allow_outside_paths=ws.settings.data.allow_outside_paths,
        output=str(default_scores_path(src)), sample=sample, max_cost=max_cost, **values)


def workspace_config(ws: Any, name: str, prompt_file: str | os.PathLike, *,
                     dry_run: bool = False) -> GenerationConfig:
    """A ``GenerationConfig`` from a ``workspace.Workspace``'s endpoint settings."""
    e = ws.settings.endpoint
    if ws.input_root is None:
        raise ConfigError("no data in this workspace yet: load a data file first")
    return GenerationConfig(
        input_folder=ws.input_root, output_folder=ws.root, prompt_file=str(prompt_file),
        file_prefix=check_name(name), endpoint=endpoint_config(e.base_url, e.api_key_env),
        dry_run=dry_run, allow_outside_paths=ws.settings.data.allow_outside_paths,
        **e.generation_values())


# ----------------------------------------------------------------------------------------------
# Starting


def start_run(ws_root: str | os.PathLike, cfg: GenerationConfig, api_key: str | None = None, *,
              python: str | None = None) -> RunInfo:
    """Start ``cfg`` as a detached child process; returns its first ``RunInfo``."""
    root = Path(ws_root).resolve()
    name = check_name(cfg.file_prefix)
    if cfg.dry_run:
        raise ConfigError("a dry run is not a background run: use dry_run()")
    record_path, exit_path, log_path = _paths(root, name)
    old = _read_json(record_path)
    if old is not None and _alive(old.get("pid"), record_path):
        raise ConfigError(f"run {name!r} is already running (pid {old['pid']})")
    cfg.prompt_path  # noqa: B018 — a missing prompt file fails here, before any process starts
    token = uuid.uuid4().hex
    from mminstruct.quality.judge import JudgeConfig

    record = {"name": name, "token": token, "config": cfg.public_json(),
              "kind": "judge" if isinstance(cfg, JudgeConfig) else "generation",
              "created": (old or {}).get("created") or datetime.now().isoformat(timespec="seconds"),
              "started": datetime.now().isoformat(timespec="seconds"),
              "starts": int((old or {}).get("starts", 0)) + 1, "pid": None, "log": str(log_path)}
    exit_path.unlink(missing_ok=True)
    atomic_write_json(record_path, record)
    env = dict(os.environ)
    if api_key:
        env[cfg.endpoint.key_env_name()] = api_key
    pkg_parent = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_parent, env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        log_file.write(f"--- start {record['starts']} at {record['started']}\n".encode())
        log_file.flush()
        proc = subprocess.Popen(
            [python or sys.executable, "-m", ENTRY_MODULE, "run", "--launch", str(record_path)],
            env=env, cwd=str(root), stdin=subprocess.DEVNULL, stdout=log_file,
            stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    _CHILDREN[proc.pid] = proc
    record["pid"] = proc.pid
    atomic_write_json(record_path, record)
    return run_info(root, name)


def resume_run(ws_root: str | os.PathLike, name: str, api_key: str | None = None, *,
               retry_failed: bool = False, python: str | None = None) -> RunInfo:
    """Start the run again with ``resume``: the prompts its log holds are not sent again."""
    record = _read_json(_paths(Path(ws_root), check_name(name))[0])
    if record is None:
        raise ConfigError(f"no run named {name!r} in {ws_root}")
    conf = dict(record["config"])
    conf.update(resume=True, retry_failed=retry_failed, dry_run=False)
    if record.get("kind") == "judge":
        from mminstruct.quality.judge import judge_config_from_dict

        return start_run(ws_root, judge_config_from_dict(conf), api_key, python=python)
    return start_run(ws_root, config_from_dict(conf), api_key, python=python)


def dry_run(cfg: GenerationConfig) -> Any:
    """Write the OpenAI Batch API JSONL for ``cfg`` in this process (nothing is sent; no key is
    needed). Returns the engine's ``RunResult`` (``batch_files``, ``manifest``, ``message``)."""
    from mminstruct.generate.engine import run_generation

    return run_generation(replace(cfg, dry_run=True, resume=False))


# ----------------------------------------------------------------------------------------------
# Watching


@dataclass
class RunInfo:
    name: str
    state: str
    alive: bool
    pid: int | None
    run_dir: Path | None
    status: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)
    output: Path | None = None
    manifest: Path | None = None
    message: str = ""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def can_pause(self) -> bool:
        return self.alive and self.state == "running" and self.run_dir is not None

    @property
    def can_continue(self) -> bool:
        return self.alive and self.state == "paused"

    @property
    def can_cancel(self) -> bool:
        return self.alive and self.state in ("starting", "running", "paused")

    @property
    def can_resume(self) -> bool:
        return not self.alive and self.state in ("interrupted", "cancelled", "stopped") \
            and self.run_dir is not None

    @property
    def model(self) -> str:
        config = self.record.get("config", {})  # a run written before the rename: model_name
        return str(config.get("generator_model", config.get("model_name", "")))

    @property
    def base_url(self) -> str:
        """The base URL the run sends to ("" for the default)."""
        ep = self.record.get("config", {}).get("endpoint") or {}
        return str(ep.get("base_url") or "") if isinstance(ep, dict) else ""

    @property
    def prompt_file(self) -> str:
        return str(self.record.get("config", {}).get("prompt_file_resolved", ""))


def _reap() -> None:
    for pid, proc in list(_CHILDREN.items()):
        if proc.poll() is not None:
            del _CHILDREN[pid]


def _alive(pid: Any, launch: Path) -> bool:
    """Whether ``pid`` is a live (not zombie) process running this launch: its command line is
    ``-m mminstruct.runs run --launch <launch>`` (so a reused pid is not mistaken for it)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    _reap()
    proc_dir = Path(f"/proc/{pid}")
    if Path("/proc/self").exists():
        try:
            stat_line = (proc_dir / "stat").read_text()
            cmdline = (proc_dir / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return False
        state = stat_line.rsplit(")", 1)[-1].split()[0] if ")" in stat_line else "?"
        return state not in ("Z", "X") and ENTRY_MODULE in cmdline and str(launch) in cmdline
    try:  # no /proc (macOS): existence only
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def log_tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a background process's log (its last 8 KiB read), or ""."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def run_info(ws_root: str | os.PathLike, name: str) -> RunInfo:
    root = Path(ws_root).resolve()
    record_path, exit_path, log_path = _paths(root, name)
    record = _read_json(record_path)
    if record is None:
        raise DataFileError(f"{record_path}: no such run (or its record is unreadable)")
    pid = record.get("pid")
    alive = _alive(pid, record_path)
    runs = list_runs(root, name)
    run_dir = runs[-1].path if runs else None
    status: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    if run_dir is not None:
        try:
            status = read_status(run_dir)
        except DataFileError:
            status = {}
        meta = _read_json(RunDir.at(run_dir).meta_path) or {}
    ended = _read_json(exit_path)
    if ended is not None and ended.get("token") != record.get("token"):
        ended = None
    message = ""
    if alive:
        state = status.get("state") or "starting"
        if state not in ACTIVE:  # the engine is done; the process is writing its last files
            state = "finishing" if state in ("finished", "cancelled", "stopped") else "starting"
        if state == "running" and run_dir is not None and RunDir.at(run_dir).pause_flag.exists():
            message = "pausing: the requests in flight finish first"
    elif ended is not None:
        state, message = ended.get("state", "failed"), ended.get("message", "")
    elif meta.get("state") in ("finished", "cancelled", "stopped"):
        state, message = meta["state"], status.get("message", "")
    elif run_dir is not None:
        state = "interrupted"
        message = "the run's process ended without finishing (killed or crashed); resume it"
    else:
        state, message = "failed", log_tail(log_path) or "the run's process ended before it began"
    output = ended.get("output") if ended else meta.get("output")
    manifest = ended.get("manifest") if ended else meta.get("manifest")
    return RunInfo(name, state, alive, pid if isinstance(pid, int) else None, run_dir, status,
                   record, Path(output) if output else None, Path(manifest) if manifest else None,
                   message)


def list_app_runs(ws_root: str | os.PathLike) -> list[RunInfo]:
    """Every run the app started in this workspace, newest first."""
    base = Path(ws_root) / LAUNCHES
    if not base.is_dir():
        return []
    infos = []
    for p in base.glob("*.json"):
        if p.name.endswith(".exit.json"):
            continue
        try:
            infos.append(run_info(ws_root, p.stem))
        except DataFileError:
            continue
    return sorted(infos, key=lambda i: str(i.record.get("created", "")), reverse=True)


def runs_table(infos: list[RunInfo]) -> list[dict[str, Any]]:
    """The app's Runs table: one row per run, from the same reads as each run's status."""
    return [{"run": i.name, "state": i.state,
             "prompts": f"{int(i.status.get('done') or 0):,} / {int(i.status.get('total') or 0):,}",
             "model": i.model, "started": str(i.record.get("started", ""))} for i in infos]


def cost_so_far(info: RunInfo, model: str) -> CostEstimate:
    """The run's tokens so far at the price of its model (``model`` when the run names none)."""
    s = info.status
    return estimate_cost(info.model or model, int(s.get("input_tokens") or 0),
                         int(s.get("output_tokens") or 0))


def eta_label(info: RunInfo) -> str:
    """The ETA shown for a run: only while it is running; a paused run is not counting down
    (the engine's estimate grows with the pause), a finished one has none."""
    if info.state == "paused":
        return "paused"
    eta = info.status.get("eta_s")
    if info.state == "running" and isinstance(eta, (int, float)) and not isinstance(eta, bool):
        return f"{eta:,.0f} s"
    return "—"


def pause_run(info: RunInfo) -> None:
    if info.run_dir is None:
        raise ConfigError(f"run {info.name!r} has not started yet; nothing to pause")
    request_pause(info.run_dir)


def continue_run(info: RunInfo) -> None:
    if info.run_dir is not None:
        request_pause(info.run_dir, False)


def cancel_run(info: RunInfo) -> None:
    """Stop sending; the requests in flight finish (up to the grace period) and are recorded."""
    if info.run_dir is not None:
        request_cancel(info.run_dir)
    elif info.alive and info.pid:
        os.killpg(info.pid, signal.SIGTERM)  # still starting: its own session, its own group


def recent_records(run_dir: str | os.PathLike, n: int = 6, tail_bytes: int = 1 << 19
                   ) -> list[dict[str, Any]]:
    """The last ``n`` finished prompts of a run's log (newest first), read from its end (what the
    Generate page shows; ``generate.runlog.latest_records`` is each prompt's latest record)."""
    path = RunDir.at(run_dir).log_path
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - tail_bytes))
            data = f.read()
    except OSError:
        return []
    lines = data.split(b"\n")
    if size > tail_bytes:
        lines = lines[1:]  # the first is probably cut
    out: list[dict[str, Any]] = []
    for line in reversed(lines):
        if len(out) >= n:
            break
        try:
            rec = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(rec, dict) and "prompt_idx" in rec:
            out.append(rec)
    return out


# ----------------------------------------------------------------------------------------------
# Endpoint check


@dataclass(frozen=True)
class EndpointCheck:
    ok: bool
    message: str
    models: tuple[str, ...] = ()


def check_endpoint(base_url: str | None, api_key: str | None, timeout: float = 2.0) -> EndpointCheck:
    """``GET {base}/models``: reachable, key accepted, and which models it lists. The message
    never contains the key."""
    base = effective_base_url(base_url)[0].rstrip("/")
    req = urllib.request.Request(base + "/models", method="GET")
    if api_key:
        req.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (http(s) only)
            body = json.loads(resp.read(1 << 20) or b"{}")
    except urllib.error.HTTPError as e:
        what = {401: "key refused (401)", 403: "forbidden (403)", 404: "no /models route (404)"}
        return EndpointCheck(False, f"{base}: {what.get(e.code, f'HTTP {e.code}')}")
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return EndpointCheck(False, f"{base}: unreachable ({reason})")
    models = tuple(str(m.get("id")) for m in body.get("data", []) if isinstance(m, dict))[:50]
    return EndpointCheck(True, f"{base}: reachable, {len(models)} model(s) listed", models)


# ----------------------------------------------------------------------------------------------
# The child process


def _child(launch: Path) -> int:
    from mminstruct.cli import setup_logging
    from mminstruct.commands.generate import run_exit_code
    from mminstruct.generate.control import RunControl
    from mminstruct.generate.engine import run_generation
    from mminstruct.llm.client import install_log_redaction

    record = _read_json(launch)
    if record is None:
        print(f"error: launch record {launch} is unreadable", file=sys.stderr)
        return 2
    name = record.get("name", launch.stem)
    exit_path = launch.with_name(f"{name}.exit.json")
    setup_logging(bool(record.get("config", {}).get("debug")))
    install_log_redaction()
    control = RunControl()
    signal.signal(signal.SIGTERM, lambda *_: control.cancel())
    signal.signal(signal.SIGINT, lambda *_: control.cancel())
    result: dict[str, Any] = {"token": record.get("token"), "pid": os.getpid()}
    code = 0
    try:
        if record.get("kind") == "judge":  # a judge run (mminstruct.quality.judge) on the same engine
            from mminstruct.quality.judge import judge_config_from_dict, run_judge

            res = run_judge(judge_config_from_dict(record["config"]), control=control)
        else:
            res = run_generation(config_from_dict(record["config"]), control=control)
        if res.state == "finished" and record.get("quality", True) \
                and record.get("kind") != "judge":
            from mminstruct.quality.report import quality_after_run

            quality_after_run(res.output, res.manifest)
        result.update(state=res.state, message=res.message,
                      output=str(res.output) if res.output else None,
                      manifest=str(res.manifest) if res.manifest else None,
                      run_dir=str(res.run_dir) if res.run_dir else None)
        code = run_exit_code(res.state, res.status.failed)
    except InputError as e:
        result.update(state="failed", message=str(e))
        code = 2
    except MMInstructError as e:
        result.update(state="failed", message=str(e))
        code = 1
    result["ended"] = datetime.now().isoformat(timespec="seconds")
    result["exit_code"] = code
    atomic_write_json(exit_path, result)
    print(f"run {name}: {result['state']}: {result.get('message', '')}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=f"python -m {ENTRY_MODULE}",
                                description="Run one generation run the app launched.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the launch record's configuration")
    r.add_argument("--launch", required=True, help="WS/launches/NAME.json")
    args = p.parse_args(argv)
    return _child(Path(args.launch))


if __name__ == "__main__":
    sys.exit(main())
