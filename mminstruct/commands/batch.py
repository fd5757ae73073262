"""``python -m mminstruct.batch_data_generator``: MM-Gen's sharded step 3, and merging shards.

Generate (MM-Gen's flags plus data_generator's new ones)::

    python -m mminstruct.batch_data_generator --input_folder IN --output_folder OUT \\
        --prompt_file P.json --file_prefix run --num_parallel 12 --model_name gpt-4o

splits the prompts into ``--num_parallel`` contiguous shards, runs them concurrently (one process,
shared limiter and connection pool; see ``generate.shards``), and merges their outputs into
``OUT/generated_data/run_{stamp}.json`` — nothing lost, nothing duplicated. Each shard is its own
resumable run; ``--resume`` continues every unfinished shard.

Merge shard outputs (by hand, e.g. after resuming one shard)::

    python -m mminstruct.batch_data_generator merge --output_folder OUT --file_prefix run [FILE …]

With no files, the latest output of each shard (``run_shard_01_of_12_{stamp}.json``; also the
``run_shard01of12_…`` names of earlier versions) in ``OUT/generated_data`` is used. MM-Gen's own
``merge.py --folder_path OUT/generated_data --run_id run_shard`` reads the same files (see README).
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from mminstruct.cli import OneLineParser, run_cli
from mminstruct.commands.generate import (EXIT_CANCELLED, EXIT_FAILED_PROMPTS, EXIT_OK, EXIT_STOPPED,
                             add_common_args, config_from_args, exit_codes_epilog, failed_summary,
                             install_signal_handlers)
from mminstruct.errors import ConfigError
from mminstruct.generate.config import add_config_arguments
from mminstruct.data.formats import generated_dir
from mminstruct.generate.control import RunControl, RunStatus
from mminstruct.generate.output import merge_outputs
from mminstruct.generate.runlog import SHARD_NAME, unique_output_path
from mminstruct.generate.shards import ShardedResult, run_shards_async
from mminstruct.llm.client import install_log_redaction
from mminstruct.quality.report import quality_after_run


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m mminstruct.batch_data_generator",
                      description="Run step 3 in concurrent shards and merge them "
                                  "(`… merge --help` to merge shard outputs).",
                      epilog=exit_codes_epilog(),
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--num_parallel", type=int, default=1, help="number of shards (default 1)")
    add_config_arguments(p, ["range"])
    return p


def build_merge_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mminstruct.batch_data_generator merge",
                                description="Merge generated-data files (shard outputs) into "
                                            "one, keeping each prompt's samples once.")
    p.add_argument("files", nargs="*", help="output files to merge, in order (default: the "
                   "latest output of each shard of --file_prefix)")
    p.add_argument("--output_folder", default="", help="merged file goes to "
                   "OUTPUT/generated_data/ (with --run_id: to OUTPUT/RUN_ID.json)")
    p.add_argument("--file_prefix", default=None, help="prefix of the merged file (and of the "
                   "shards to find when no files are given)")
    p.add_argument("--run_id", default=None,
                   help="MM-Gen merge.py's flag: merge the files of --folder_path named "
                        "RUN_ID_N… .json in the order of N (exactly RUN_ID: run a1 does not take "
                        "a10's files), into OUTPUT/RUN_ID.json")
    p.add_argument("--folder_path", default=None,
                   help="with --run_id: the folder of the files (default OUTPUT/generated_data)")
    p.add_argument("--debug", action="store_true")
    return p


def mmgen_run_files(folder: Path, run_id: str) -> list[Path]:
    """The files MM-Gen's ``merge.py --run_id RUN_ID`` merges, in its order (by the integer after
    ``RUN_ID_``), but matched exactly: ``RUN_ID_<N>.json`` or ``RUN_ID_<N>_….json``. merge.py's glob
    ``*RUN_ID*.json`` also takes run ``a10``'s files for run ``a1``."""
    pattern = re.compile(rf"^{re.escape(run_id)}_(\d+)(?:_.*)?\.json$")
    found = []
    for f in folder.glob(f"{glob.escape(run_id)}_*.json"):
        m = pattern.match(f.name)
        if m and f.is_file():
            found.append((int(m.group(1)), f.name, f))
    if not found:
        raise ConfigError(f"no files named {run_id}_<N>….json in {folder}")
    return [f for _, _, f in sorted(found)]


def _progress_printer(num: int):
    import time

    statuses: dict[int, RunStatus] = {}
    first = time.monotonic()
    last = [0.0]

    def on_progress(k: int, st: RunStatus) -> None:
        statuses[k] = st
        now = time.monotonic()
        if len(statuses) < num and now - first < 10:
            return  # a line over some shards would understate the range
        if now - last[0] < 10:
            return
        last[0] = now
        print(progress_line(statuses, num), file=sys.stderr)
    return on_progress


def progress_line(statuses: dict[int, RunStatus], num: int) -> str:
    """One line over the shards' statuses (``generate.shards`` reports every shard's total before
    the first runs): prompts done of the whole range, failures, rate."""
    done = sum(s.done for s in statuses.values())
    total = sum(s.total for s in statuses.values())
    rate = sum(s.rate_per_s for s in statuses.values())
    failed = sum(s.failed for s in statuses.values())
    return f"{done}/{total} prompts in {num} shards, {failed} failed, {rate:.1f}/s"


def run(args: argparse.Namespace) -> int:
    install_log_redaction()
    if args.num_parallel < 1:
        raise ConfigError(f"--num_parallel is {args.num_parallel}; it must be ≥ 1")
    cfg = config_from_args(args)
    control = RunControl()

    async def main() -> ShardedResult:
        install_signal_handlers(control)
        return await run_shards_async(cfg, args.num_parallel, control=control,
                                      on_progress=_progress_printer(args.num_parallel))

    if cfg.ray_address:
        from mminstruct.distributed.generate import run_on_ray  # noqa: PLC0415  (optional dependency)

        result = run_on_ray(cfg, args.num_parallel,
                            on_progress=_progress_printer(args.num_parallel))
    else:
        result = asyncio.run(main())
    if result.state == "dry_run":
        print(f"dry run: {result.message}", file=sys.stderr)
        for r in result.shards:
            for f in r.batch_files:
                print(f)
        return 0
    if result.state != "finished":
        print(result.message, file=sys.stderr)
        return EXIT_STOPPED if result.state == "stopped" else EXIT_CANCELLED
    if not args.no_quality:
        quality_after_run(result.output, result.manifest)
    print(f"done: {result.message}; manifest {result.manifest}", file=sys.stderr)
    print(result.output)
    by_class: dict[str, int] = {}
    for r in result.shards:
        for k, v in r.status.failed_by_class.items():
            by_class[k] = by_class.get(k, 0) + v
    failed = failed_summary(sum(r.status.failed for r in result.shards), by_class)
    if failed:
        print(f"{failed}; exit status {EXIT_FAILED_PROMPTS}", file=sys.stderr)
        return EXIT_FAILED_PROMPTS
    return EXIT_OK


_OUTPUT_FILE = re.compile(r"^(?P<name>.+)_(?P<stamp>\d{8}_\d{6}(?:_\d+)?)\.json$")


def find_shard_outputs(folder: Path, prefix: str) -> list[Path]:
    """The latest output file of each shard of ``prefix`` in ``folder``, in shard order."""
    latest: dict[int, tuple[str, Path]] = {}
    counts: set[int] = set()
    for f in folder.glob(f"{prefix}_shard*_*.json"):  # shard_01_of_03 (and the old shard01of03)
        m = _OUTPUT_FILE.match(f.name)
        shard = SHARD_NAME.match(m.group("name")) if m else None
        if not shard or shard.group("prefix") != prefix:
            continue
        k = int(shard.group("k") or shard.group("k_old"))
        counts.add(int(shard.group("n") or shard.group("n_old")))
        if k not in latest or m.group("stamp") > latest[k][0]:
            latest[k] = (m.group("stamp"), f)
    if not latest:
        raise ConfigError(f"no shard outputs named {prefix}_shard_NN_of_MM_*.json in {folder}")
    if len(counts) > 1:
        raise ConfigError(f"shard outputs of {prefix!r} in {folder} come from runs with "
                          f"different shard counts ({sorted(counts)}); name the files to merge")
    n = counts.pop()
    missing = sorted(set(range(1, n + 1)) - set(latest))
    if missing:
        raise ConfigError(f"shard(s) {missing} of {n} have no output in {folder} yet; finish "
                          "them (--resume) or name the files to merge")
    return [latest[k][1] for k in sorted(latest)]


def run_merge(args: argparse.Namespace) -> int:
    folder = generated_dir(args.output_folder or ".")
    if args.run_id is not None:
        return _merge_run_id(args, folder)
    if not args.file_prefix:
        raise ConfigError("merge needs --file_prefix (our shard names) or --run_id (MM-Gen's)")
    if args.files:
        files = [Path(f) for f in args.files]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise ConfigError(f"not found: {', '.join(missing)}")
    else:
        files = find_shard_outputs(folder, args.file_prefix)
    out = unique_output_path(folder, args.file_prefix)
    summary = merge_outputs(files, out)
    print(f"merged {summary.files} file(s): {summary.len_samples} samples"
          + (f"; {'; '.join(summary.warnings)}" if summary.warnings else ""), file=sys.stderr)
    print(out)
    return 0


def _merge_run_id(args: argparse.Namespace, folder: Path) -> int:
    if args.files or args.file_prefix:
        raise ConfigError("--run_id finds its files itself: give no files and no --file_prefix")
    run_id = args.run_id.strip()
    if not run_id or "/" in run_id or run_id in (".", ".."):
        raise ConfigError(f"--run_id {args.run_id!r} is not a file name prefix")
    source = Path(args.folder_path) if args.folder_path else folder
    files = mmgen_run_files(source, run_id)
    out = Path(args.output_folder) / f"{run_id}.json" if args.output_folder \
        else source / f"{run_id}.json"
    if out.exists():
        raise ConfigError(f"{out} exists; move it away or pass another --output_folder")
    summary = merge_outputs(files, out)
    print(f"merged {summary.files} file(s) ({', '.join(f.name for f in files)}): "
          f"{summary.len_samples} samples"
          + (f"; {'; '.join(summary.warnings)}" if summary.warnings else ""), file=sys.stderr)
    print(out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "merge":
        return run_cli(build_merge_parser, run_merge, argv[1:])
    return run_cli(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
