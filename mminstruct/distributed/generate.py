"""Generation shards as Ray tasks, under one cluster-wide rate limit.

``run_on_ray(cfg, num_parallel)`` is ``generate.shards.run_shards`` on a Ray cluster:

* the prompt range is split as locally (``split_range``; shard ``k`` is the run
  ``{prefix}_shardKKofNN``; with ``num_parallel`` 1 the single run keeps ``{prefix}``);
* the driver creates each shard's run folder (or, with ``resume``, finds it) before anything is
  sent, so a shard task always *resumes* its run: when Ray retries a task whose worker died, the
  retry continues from the run log instead of starting over — the local engine's crash safety,
  per shard; a shard finished by an earlier session is not sent again;
* each task runs the local engine (``run_async``) unchanged, with one difference: its limiter is
  a ``ClusterLimiter`` drawing from the cluster's limiter actor, so every worker together stays
  under ``--rpm`` / ``--tpm`` (or the limits the provider's headers announce);
* ``--concurrency`` is per worker (each has its own connections); ``worker_cpus`` (default 1)
  is what a task reserves, so a node runs as many shards at once as it has CPUs;
* the outputs are merged with the local merge (``merge_outputs``) into
  ``OUT/generated_data/{prefix}_{stamp}.json`` with a merged manifest.

The output folder must be one file system every worker sees (NFS, a cluster disk); the prompt
file and the images are read there too. The API key is read here, on the driver, and travels in
the task's arguments (held in Ray's memory, written to no file); the workers need no key of
their own. Cancel: ``control.cancel()`` or Ctrl-C writes each running shard's ``CANCEL`` flag; the
shards finish what is in flight and stop, resumable (a second Ctrl-C stops the tasks at once).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from mminstruct.errors import ConfigError, DataFileError
from mminstruct.generate.config import GenerationConfig, resolved_range
from mminstruct.generate.control import (RunControl, RunStatus, read_status, request_cancel,
                                request_pause)
from mminstruct.generate.engine import RunResult, Shared, run_async
from mminstruct.generate.jsonstream import PromptStream
from mminstruct.generate.runlog import FINISHED, RunDir, latest_unfinished, list_runs, open_or_create_run
from mminstruct.generate.shards import ShardedResult, finish_shards, shard_prefix, split_range
from mminstruct.llm.errors import EndpointConfigError
from mminstruct.distributed.cluster import connect, remote_error, require_ray
from mminstruct.distributed.limiter import ClusterLimiter, RayBackend, start_limiter_actor

log = logging.getLogger(__name__)

_STATUS_FIELDS = {f.name for f in fields(RunStatus)}


@dataclass
class _Shard:
    k: int
    cfg: GenerationConfig
    run: RunDir | None  # the run folder the task works in (None: the task finds it)
    result: RunResult | None = None  # set when finished already, or when the task returns


# ---------------------------------------------------------------------------------------------
# On the worker


def run_shard(cfg: GenerationConfig, limiter: Any, batch: int = 8) -> RunResult:
    """One shard on a Ray worker: the local engine with the cluster's limiter (a Ray task)."""
    from mminstruct.llm.client import install_log_redaction

    install_log_redaction()

    async def main() -> RunResult:
        shared = Shared.build(cfg)
        shared.limiter = ClusterLimiter(RayBackend(limiter), cfg.rpm, cfg.tpm, batch=batch)
        try:
            return await run_async(cfg, shared=shared)
        finally:
            await shared.aclose()

    return asyncio.run(main())


# ---------------------------------------------------------------------------------------------
# On the driver


def _worker_endpoint(cfg: GenerationConfig) -> Any:
    """The endpoint as the workers need it: the base URL and key resolved here (a worker's
    environment need not hold them). Missing credentials fail here, before any run folder."""
    ep = cfg.endpoint
    key = ep.resolve_key()
    if ep.azure_endpoint:  # an Azure AD token or CLI credential must exist on the workers
        return replace(ep, api_key=key) if key else ep
    if not key and ep.kind != "local":
        raise EndpointConfigError(
            f"no API key: set ${ep.key_env_name()} (or name another variable with "
            "--api_key_env), or pass --base_url for a local OpenAI-compatible server")
    return replace(ep, base_url=ep.resolved_base_url(), api_key=key)


def _plan(cfg: GenerationConfig, stream: PromptStream, k: int) -> _Shard:
    """Create the shard's run folder, or with ``resume`` find what to continue."""
    start, n = resolved_range(cfg.start_idx, cfg.num_prompts, stream.count)
    if not cfg.resume:
        return _Shard(k, replace(cfg, resume=True), open_or_create_run(cfg, stream, start, n))
    run = latest_unfinished(cfg.output_folder, cfg.file_prefix)
    if run is None and not cfg.retry_failed:
        runs = list_runs(cfg.output_folder, cfg.file_prefix)
        meta = runs[-1].read_meta() if runs else {}
        if meta.get("state") == FINISHED and meta.get("identity") == cfg.identity(stream.count):
            log.info("%s: finished in an earlier session (%s)", cfg.file_prefix, runs[-1].path.name)
            return _Shard(k, cfg, runs[-1], _finished_result(runs[-1], meta))
    return _Shard(k, cfg, run)  # the task resumes it (or names what cannot be resumed)


def _finished_result(run: RunDir, meta: dict[str, Any]) -> RunResult:
    try:
        status = _status(run.path)
    except DataFileError:
        status = RunStatus(run_dir=str(run.path), state=FINISHED)
    return RunResult(FINISHED, run.path, Path(meta["output"]), Path(meta["manifest"]), status,
                     "finished in an earlier session")


def _status(run_dir: Path) -> RunStatus:
    d = read_status(run_dir)
    return RunStatus(**{k: v for k, v in d.items() if k in _STATUS_FIELDS})


def run_on_ray(cfg: GenerationConfig, num_parallel: int = 1, *,
               control: RunControl | None = None,
               on_progress: Callable[[int, RunStatus], None] | None = None,
               ray_address: str | None = None, worker_cpus: float = 1.0,
               limiter_batch: int = 8, status_interval: float = 1.0) -> ShardedResult:
    """Run ``cfg`` as ``num_parallel`` shards on the Ray cluster at ``ray_address`` (default
    ``cfg.ray_address``; a process already connected keeps its connection); see the module
    docstring. ``on_progress(k, status)`` gets each running shard's status about every
    ``status_interval`` seconds."""
    if cfg.dry_run:
        raise ConfigError("--dry_run writes Batch API files and sends nothing: run it without "
                          "--ray_address")
    if getattr(cfg, "batch_api", False):
        raise ConfigError("--batch_api hands the requests to the provider's Batch API, which "
                          "needs no workers: run it without --ray_address")
    if worker_cpus <= 0:
        raise ConfigError(f"worker_cpus must be > 0, got {worker_cpus!r}")
    stream = PromptStream.open(cfg.prompt_path)
    start, n = resolved_range(cfg.start_idx, cfg.num_prompts, stream.count)
    ranges = split_range(start, n, num_parallel)
    single = num_parallel == 1
    endpoint = _worker_endpoint(cfg)
    cfgs = [cfg if single else replace(cfg, file_prefix=shard_prefix(cfg.file_prefix, k, len(ranges)),
                                       start_idx=s, num_prompts=m)
            for k, (s, m) in enumerate(ranges)]
    info = connect(ray_address if ray_address is not None else cfg.ray_address)
    ray = require_ray()
    shards = [_plan(c, stream, k) for k, c in enumerate(cfgs)]
    todo = [s for s in shards if s.result is None]
    log.info("%d prompts in %d shard(s) on %s; %d to run", n, len(shards), info.describe(),
             len(todo))
    if todo:
        _execute(ray, todo, endpoint, control or RunControl(), on_progress, worker_cpus,
                 limiter_batch, status_interval)
    results = [s.result for s in shards]
    return _finish(cfg, results, single)  # type: ignore[arg-type]  # every shard has a result


def _execute(ray: Any, todo: list[_Shard], endpoint: Any, control: RunControl,
             on_progress: Callable[[int, RunStatus], None] | None, worker_cpus: float,
             batch: int, status_interval: float) -> None:
    limiter = start_limiter_actor(todo[0].cfg.rpm, todo[0].cfg.tpm)
    try:
        _wait(ray, todo, endpoint, control, on_progress, worker_cpus, batch, status_interval,
              limiter)
    finally:
        ray.kill(limiter)


def _wait(ray: Any, todo: list[_Shard], endpoint: Any, control: RunControl,
          on_progress: Callable[[int, RunStatus], None] | None, worker_cpus: float, batch: int,
          status_interval: float, limiter: Any) -> None:
    task = ray.remote(run_shard).options(num_cpus=worker_cpus, max_retries=3,
                                         retry_exceptions=False)
    pending = {task.remote(replace(s.cfg, endpoint=endpoint), limiter, batch): s for s in todo}
    cancelled = paused = False
    interrupts = 0
    while pending:
        try:
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=status_interval)
            for ref in ready:
                shard = pending.pop(ref)
                try:
                    shard.result = ray.get(ref)
                except Exception as e:  # a worker's error: ours unwrapped, else a ClusterError
                    for other in pending:
                        ray.cancel(other, force=True)
                    raise remote_error(e) from e
                shard.run = shard.run or (RunDir(shard.result.run_dir, shard.cfg.file_prefix, "")
                                          if shard.result.run_dir else None)
            running = [s for s in pending.values() if s.run is not None]
            if control.cancelled and not cancelled:
                cancelled = True
                for s in running:
                    request_cancel(s.run.path)  # type: ignore[union-attr]
            if control.paused != paused and not cancelled:
                paused = control.paused
                for s in running:
                    request_pause(s.run.path, paused)  # type: ignore[union-attr]
            if on_progress is not None:
                for s in running:
                    try:
                        on_progress(s.k, _status(s.run.path))  # type: ignore[union-attr]
                    except DataFileError:
                        continue  # not started yet
        except KeyboardInterrupt:
            interrupts += 1
            if interrupts > 1:
                for ref in pending:
                    ray.cancel(ref, force=True)
                raise
            log.warning("interrupt: the shards finish their requests in flight and stop "
                        "(again to stop them now); --resume continues")
            control.cancel()


def _finish(cfg: GenerationConfig, results: list[RunResult], single: bool) -> ShardedResult:
    if single:
        r = results[0]
        return ShardedResult(r.state, r.output, r.manifest, results, r.message)
    return finish_shards(cfg, results, " run on Ray")


__all__ = ["run_on_ray", "run_shard"]
