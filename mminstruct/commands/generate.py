"""``python -m mminstruct.data_generator``: MM-Gen's step 3 command line, on the async engine.

MM-Gen's flags keep their meanings: ``--input_folder`` (image paths in the prompt file are
relative to it), ``--output_folder`` (the output goes to ``OUTPUT/generated_data/``),
``--prompt_file`` (a path, or a name under ``INPUT/generated_prompts/`` as MM-Gen looked for it),
``--file_prefix``, ``--start_idx``, ``--num_prompts`` (-1 = all), ``--model_name`` (for Azure, the
deployment name), ``--debug``. The other flags are new: endpoint, concurrency, limits, retries,
resume, dry run, structured outputs, the Batch API (``--batch_api``).

The API key comes from the environment (``$OPENAI_API_KEY``, ``$AZURE_OPENAI_API_KEY`` or the
variable named by ``--api_key_env``) and is never written anywhere. The output file's path is the
last line on stdout; progress goes to stderr. Exit status (``EXIT_CODES``, also in ``--help``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from mminstruct.cli import OneLineParser, run_cli
from mminstruct.generate.config import SECTIONS, add_config_arguments, config_from_args
from mminstruct.generate.control import RunControl
from mminstruct.generate.engine import RunResult, run_async
from mminstruct.llm.client import install_log_redaction
from mminstruct.quality.report import quality_after_run

log = logging.getLogger("mminstruct.generate")

EXIT_OK = 0
EXIT_STOPPED = 3
EXIT_FAILED_PROMPTS = 4
EXIT_CANCELLED = 130

#: The exit statuses of data_generator and batch_data_generator (shown by --help and the README).
EXIT_CODES = {
    EXIT_OK: "finished: every prompt succeeded",
    1: "failed (an error other than the arguments)",
    2: "bad arguments or input files (one line on stderr)",
    EXIT_STOPPED: "stopped before the end: quota, auth, unknown model, the first "
                  "requests all failed the same way, or 24 attempts failed (5xx, timeouts) with "
                  "no success (the server's answer is printed); fix it and rerun with --resume",
    EXIT_FAILED_PROMPTS: "finished, output written, but some prompts failed for good (the "
                         "summary on stderr and the manifest count them by class; "
                         "--resume --retry_failed re-sends the transient ones)",
    EXIT_CANCELLED: "cancelled (Ctrl-C / SIGTERM); --resume continues",
}


def run_exit_code(state: str, failed: int) -> int:
    """The exit status of a run that ended in ``state`` with ``failed`` prompts failed for good
    (the command lines' and the app's background runs')."""
    if state == "finished":
        return EXIT_FAILED_PROMPTS if failed else EXIT_OK
    return EXIT_STOPPED if state == "stopped" else EXIT_CANCELLED


def exit_codes_epilog() -> str:
    import textwrap

    lines = ["exit status:"]
    for code, what in EXIT_CODES.items():
        lines += textwrap.wrap(what, 90, initial_indent=f"  {code:<4}", subsequent_indent=" " * 6)
    return "\n".join(lines)


def failed_summary(failed: int, by_class: dict[str, int]) -> str:
    """``'3 prompts failed for good (2 server, 1 bad_request)'``; '' when none failed."""
    if not failed:
        return ""
    classes = ", ".join(f"{n} {k}" for k, n in sorted(by_class.items(), key=lambda kv: -kv[1]))
    return f"{failed} prompt{'s' if failed != 1 else ''} failed for good ({classes})"


def add_common_args(p: argparse.ArgumentParser, *, prompt_run: bool = True) -> None:
    """Flags shared by data_generator, batch_data_generator and the judge: every generation
    setting's flag but --start_idx/--num_prompts (``generate.config.add_config_arguments``, from
    the settings' declarations), and --no_quality. ``prompt_run`` False: --prompt_file and
    --file_prefix are optional."""
    groups = add_config_arguments(
        p, [s for s in SECTIONS if s != "range"],
        required=("prompt_file", "file_prefix") if prompt_run else ())
    groups["output"].add_argument(
        "--no_quality", action="store_true", help="do not write the quality report "
        "(manifests/RUN.quality.json beside the output, its counts in the manifest)")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m mminstruct.data_generator",
                      description="Generate samples from a prompt file with a VLM behind an "
                                  "OpenAI-compatible API (MM-Gen step 3).",
                      epilog=exit_codes_epilog(),
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    add_config_arguments(p, ["range"])
    return p


def install_signal_handlers(control: RunControl) -> None:
    """First Ctrl-C / SIGTERM: stop sending and finish what is in flight; second: quit now
    (every finished prompt is already in the run log)."""
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if control.cancelled:
            print("interrupted again: quitting now; --resume continues", file=sys.stderr)
            os._exit(EXIT_CANCELLED)
        print("interrupt: finishing the requests in flight (again to quit now)", file=sys.stderr)
        control.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal)
        except (NotImplementedError, RuntimeError):  # not the main thread / platform
            pass


def report(result: RunResult, quality: bool = True) -> int:
    """Summary on stderr, the output path as stdout's last line; the exit status. A finished run
    gets its quality report (``mminstruct.quality.report``) unless ``quality`` is False."""
    if result.state == "dry_run":
        print(f"dry run: {result.message}; see {result.manifest}", file=sys.stderr)
        for f in result.batch_files:
            print(f)
        return 0
    if result.state != "finished":
        print(result.message, file=sys.stderr)
        return run_exit_code(result.state, 0)
    st = result.status
    if quality:
        quality_after_run(result.output, result.manifest)
    print(f"done: {st.message}; manifest {result.manifest}", file=sys.stderr)
    print(result.output)
    failed = failed_summary(st.failed, st.failed_by_class)
    if failed:
        print(f"{failed}; exit status {EXIT_FAILED_PROMPTS}", file=sys.stderr)
        return EXIT_FAILED_PROMPTS
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    install_log_redaction()
    cfg = config_from_args(args)
    if cfg.ray_address:
        from mminstruct.distributed.generate import run_on_ray  # noqa: PLC0415  (optional dependency)

        return report(run_on_ray(cfg, 1).shards[0], not args.no_quality)
    control = RunControl()

    async def main() -> RunResult:
        install_signal_handlers(control)
        return await run_async(cfg, control=control)

    return report(asyncio.run(main()), not args.no_quality)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
