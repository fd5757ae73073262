"""batch_data_generator's shards: split a prompt range into ``num_parallel`` contiguous shards, run
them concurrently, and merge their outputs into one file.

The shards run as asyncio tasks in one process, not as separate processes as in MM-Gen. The work
is waiting on the network, which one event loop does for thousands of requests; sharing the
process lets every shard use the same clients (connection pools), one RPM/TPM limiter — so the
shards together, not each of them, stay under the provider's limits — one image cache, and one
semaphore, so ``--concurrency`` bounds the requests in flight across all shards. Each shard is a
full run (own run folder and log, resumable on its own: ``{prefix}_shard_01_of_04``…, a name
MM-Gen's ``merge.py --run_id {prefix}_shard`` sorts; see ``runlog.shard_prefix``); MM-Gen's
chunking bug (an extra shard when the count does not divide evenly) is not reproduced: shard sizes
differ by at most one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from mminstruct.errors import ConfigError
from mminstruct.data.formats import generated_dir
from mminstruct.generate.config import GenerationConfig, resolved_range
from mminstruct.generate.control import RunControl, RunStatus
from mminstruct.generate.engine import RunResult, Shared, run_async
from mminstruct.generate.jsonstream import PromptStream
from mminstruct.generate.manifest import manifest_path_for, write_manifest
from mminstruct.generate.output import merge_outputs
from mminstruct.generate.runlog import shard_prefix, unique_output_path

__all__ = ["ShardedResult", "finish_shards", "run_shards", "run_shards_async", "shard_prefix",
           "split_range"]

log = logging.getLogger(__name__)


def split_range(start: int, n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous (start, count) ranges covering [start, start+n), sizes within one."""
    if parts < 1:
        raise ConfigError(f"num_parallel is {parts}; it must be ≥ 1")
    parts = min(parts, max(n, 1))
    size, extra = divmod(n, parts)
    out, s = [], start
    for k in range(parts):
        m = size + (1 if k < extra else 0)
        out.append((s, m))
        s += m
    return out


@dataclass
class ShardedResult:
    state: str
    output: Path | None
    manifest: Path | None
    shards: list[RunResult] = field(default_factory=list)
    message: str = ""


async def run_shards_async(cfg: GenerationConfig, num_parallel: int, *,
                           control: RunControl | None = None,
                           on_progress: Callable[[int, RunStatus], None] | None = None
                           ) -> ShardedResult:
    stream = PromptStream.open(cfg.prompt_path)
    start, n = resolved_range(cfg.start_idx, cfg.num_prompts, stream.count)
    ranges = split_range(start, n, num_parallel)
    control = control or RunControl()
    shared = Shared.build(cfg, with_client=not cfg.dry_run)
    cfgs = [replace(cfg, file_prefix=shard_prefix(cfg.file_prefix, k, len(ranges)),
                    start_idx=s, num_prompts=m) for k, (s, m) in enumerate(ranges)]
    log.info("%d prompts in %d shards: %s", n, len(ranges),
             ", ".join(f"{s}–{s + m - 1}" for s, m in ranges if m))

    def progress(k: int) -> Callable[[RunStatus], None] | None:
        if on_progress is None:
            return None
        return lambda st: on_progress(k, st)

    if on_progress is not None:  # every shard's total is known before the first reports
        for k, (_, m) in enumerate(ranges):
            on_progress(k, RunStatus(total=m))

    try:
        results = await asyncio.gather(*(run_async(c, control=control, shared=shared,
                                                   on_progress=progress(k))
                                         for k, c in enumerate(cfgs)))
    finally:
        await shared.aclose()
    if cfg.dry_run:
        files = [f for r in results for f in r.batch_files]
        return ShardedResult("dry_run", None, None, list(results),
                             f"{len(files)} Batch API file(s) written")
    return finish_shards(cfg, list(results))


def finish_shards(cfg: GenerationConfig, results: list[RunResult], where: str = "") -> ShardedResult:
    """Merge the shards' outputs into one file and manifest once every shard finished; otherwise
    say which did not (nothing is merged, ``--resume`` continues them)."""
    unfinished = [r for r in results if r.state != "finished"]
    if unfinished:
        msgs = "; ".join(r.message for r in unfinished)
        state = "stopped" if any(r.state == "stopped" for r in unfinished) else "cancelled"
        return ShardedResult(state, None, None, results,
                             f"{len(unfinished)} of {len(results)} shard(s) unfinished: {msgs}")
    out = unique_output_path(generated_dir(cfg.output_folder), cfg.file_prefix)
    merged = merge_outputs([r.output for r in results if r.output is not None], out)
    manifest = _merged_manifest(out, results)
    msg = (f"{merged.len_samples} samples from {len(results)} shards{where}"
           + (f" ({'; '.join(merged.warnings)})" if merged.warnings else ""))
    return ShardedResult("finished", out, manifest, results, msg)


def _merged_manifest(out: Path, results: list[RunResult]) -> Path:
    import json

    shards = [json.loads(r.manifest.read_text()) for r in results if r.manifest]
    counts: dict[str, int] = {}
    by_outcome: dict[str, int] = {}
    errors: dict[str, int] = {}
    tokens = {"input": 0, "output": 0, "total": 0}
    usd: float | None = 0.0
    for m in shards:
        for k, v in m["counts"].items():
            if isinstance(v, int):
                counts[k] = counts.get(k, 0) + v
        for k, v in m["counts"]["by_outcome"].items():
            by_outcome[k] = by_outcome.get(k, 0) + v
        for k, v in m["errors_by_class"].items():
            errors[k] = errors.get(k, 0) + v
        for k in tokens:
            tokens[k] += m["tokens"][k]
        shard_usd = m["cost"].get("usd")
        usd = None if usd is None or shard_usd is None else usd + shard_usd
    first = shards[0] if shards else {}
    cost = dict(first.get("cost", {}))
    cost.update(input_tokens=tokens["input"], output_tokens=tokens["output"],
                usd=None if usd is None else round(usd, 4),
                usd_if_batch_api=None if usd is None else round(usd / 2, 4))
    batch_api = [m["batch_api"] for m in shards if m.get("batch_api")]
    if batch_api:  # Batch API shards: their sums, not the first shard's figures
        cost.update(_summed_cost(m["cost"] for m in shards))
    return write_manifest(manifest_path_for(out), {
        "output": str(out), "model": first.get("model"), "endpoint": first.get("endpoint"),
        "prompt_file": first.get("prompt_file"), "parameters": first.get("parameters"),
        "counts": {**counts, "by_outcome": by_outcome}, "errors_by_class": errors,
        "tokens": tokens, "cost": cost,
        **({"batch_api": {"used": True, "batches": sum(len(b["batches"]) for b in batch_api),
                          "waves": max(b["waves"] for b in batch_api)}} if batch_api else {}),
        "shards": [{"output": m["output"], "manifest": str(manifest_path_for(Path(m["output"]))),
                    "run_dir": m["run_dir"], "counts": m["counts"]} for m in shards]})


def _summed_cost(costs: Iterable[dict]) -> dict:
    """The Batch API shards' cost figures, summed (None when any shard has none)."""
    out: dict = {}
    for c in costs:
        for k in ("usd", "usd_if_batch_api", "usd_at_standard_prices"):
            out[k] = None if k in out and out[k] is None or c.get(k) is None \
                else round(out.get(k, 0.0) + c[k], 4)
        for k in ("batch_tokens", "online_tokens"):
            tok = out.setdefault(k, {"input": 0, "output": 0})
            for side in tok:
                tok[side] += int((c.get(k) or {}).get(side) or 0)
    return out


def run_shards(cfg: GenerationConfig, num_parallel: int, *, control: RunControl | None = None,
               on_progress: Callable[[int, RunStatus], None] | None = None) -> ShardedResult:
    return asyncio.run(run_shards_async(cfg, num_parallel, control=control,
                                        on_progress=on_progress))
