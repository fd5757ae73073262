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
from mminstruct.generate.config import DEFAULTS, GenerationConfig
from mminstruct.generate.control import RunControl
from mminstruct.generate.engine import RunResult, run_async
from mminstruct.llm.client import EndpointConfig, install_log_redaction
from mminstruct.llm.requests import MAX_TOKENS_FIELDS
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
    """Flags shared by data_generator, batch_data_generator and the judge (``prompt_run`` False:
    --prompt_file and --file_prefix are optional)."""
    g = p.add_argument_group("MM-Gen")
    g.add_argument("--input_folder", default="", help="folder the prompt file's image paths are "
                   "relative to (default: the working folder)")
    g.add_argument("--output_folder", default="", help="results go to OUTPUT/generated_data/")
    g.add_argument("--prompt_file", required=prompt_run, help="prompt file: a path, or a name "
                   "under INPUT/generated_prompts/")
    g.add_argument("--file_prefix", required=prompt_run, help="prefix of the output file's name")
    g.add_argument("--model_name", default=DEFAULTS["model_name"],
                   help="model (Azure: deployment) name (default %(default)s)")
    g.add_argument("--debug", action="store_true", help="debug logging")
    e = p.add_argument_group("endpoint (the key is read from the environment, never a flag)")
    e.add_argument("--base_url", help="OpenAI-compatible base URL, e.g. a local vLLM, Ollama, "
                   "llama.cpp or LM Studio server (default: $OPENAI_BASE_URL or OpenAI)")
    e.add_argument("--api_key_env", help="environment variable holding the API key (default "
                   "OPENAI_API_KEY, or AZURE_OPENAI_API_KEY with --azure_endpoint_url)")
    e.add_argument("--azure_endpoint_url", help="Azure OpenAI endpoint, e.g. "
                   "https://NAME.openai.azure.com/")
    e.add_argument("--azure_deployment", help="Azure deployment (default: --model_name)")
    e.add_argument("--api_version", help="Azure API version")
    e.add_argument("--azure_cli_credential", action="store_true",
                   help="authenticate to Azure with `az login` (needs azure-identity)")
    r = p.add_argument_group("throughput and retries")
    r.add_argument("--concurrency", type=int, default=DEFAULTS["concurrency"],
                   help="requests in flight (default %(default)s)")
    r.add_argument("--rpm", type=float, help="requests per minute (default: the provider's "
                   "x-ratelimit-limit-requests header)")
    r.add_argument("--tpm", type=float, help="tokens per minute (default: the provider's "
                   "x-ratelimit-limit-tokens header)")
    r.add_argument("--max_retries", type=int, default=DEFAULTS["max_retries"],
                   help="retries per request (default %(default)s)")
    r.add_argument("--timeout", type=float, default=DEFAULTS["timeout"],
                   help="seconds per request (default %(default)s)")
    r.add_argument("--retry_base_delay", type=float, default=DEFAULTS["retry_base_delay"],
                   help="first back-off in seconds, doubled per retry (default %(default)s)")
    r.add_argument("--retry_max_delay", type=float, default=DEFAULTS["retry_max_delay"],
                   help="longest back-off in seconds (default %(default)s)")
    q = p.add_argument_group("requests")
    q.add_argument("--max_image_side", type=int, default=DEFAULTS["max_image_side"],
                   help="downscale images to this longest side (default %(default)s)")
    q.add_argument("--jpeg_quality", type=int, default=DEFAULTS["jpeg_quality"],
                   help="JPEG quality (default %(default)s)")
    q.add_argument("--image_cache_mb", type=int, default=DEFAULTS["image_cache_mb"],
                   help="memory for encoded images, reused across prompts (default %(default)s)")
    q.add_argument("--temperature", type=float)
    q.add_argument("--max_tokens", type=int, help="answer token limit (default: the model's)")
    q.add_argument("--max_tokens_field", default=DEFAULTS["max_tokens_field"], choices=MAX_TOKENS_FIELDS,
                   help="the request key of --max_tokens: max_completion_tokens for models that "
                   "refuse max_tokens (o1, o3, o4-mini, gpt-5, …: what auto picks by the model "
                   "name), max_tokens for servers that know only it (default %(default)s)")
    q.add_argument("--seed", type=int)
    q.add_argument("--structured_outputs", action="store_true",
                   help="send a JSON schema as response_format (models that support it)")
    q.add_argument("--format_fix_attempts", type=int, default=DEFAULTS["format_fix_attempts"],
                   help="format-fixing calls for an answer that is not valid JSON (default %(default)s)")
    q.add_argument("--allow_outside_paths", action="store_true",
                   help="allow image paths outside --input_folder")
    s = p.add_argument_group("runs")
    s.add_argument("--resume", action="store_true", help="continue the latest unfinished run "
                   "with this --file_prefix in --output_folder")
    s.add_argument("--retry_failed", action="store_true", help="with --resume, also re-send "
                   "prompts that failed for a transient reason (rate limit, timeout, server, …)")
    s.add_argument("--no_quality", action="store_true", help="do not write the quality report "
                   "(manifests/RUN.quality.json beside the output, its counts in the manifest)")
    s.add_argument("--dry_run", action="store_true", help="write the requests as an OpenAI "
                   "Batch API JSONL file and call nothing")
    s.add_argument("--ray_address", default=None, metavar="ADDRESS|auto|local",
                   help="run on Ray (needs requirements-ray.txt): 'local' starts a private "
                   "instance, 'auto' joins this machine's cluster, HOST:PORT a head node; "
                   "--concurrency is then per worker and --rpm/--tpm hold for the cluster")
    b = p.add_argument_group("OpenAI Batch API (half the price; results within the "
                             "completion window)")
    b.add_argument("--batch_api", action="store_true", help="send the requests as Batch API "
                   "files (upload, create, poll, download) instead of online calls; "
                   "--resume continues polling after a crash without resubmitting")
    b.add_argument("--batch_poll_seconds", type=float, default=DEFAULTS["batch_poll_seconds"],
                   help="seconds between batch status checks (default %(default)s), growing ×1.5 while "
                   "nothing changes …")
    b.add_argument("--batch_poll_max_seconds", type=float, default=DEFAULTS["batch_poll_max_seconds"],
                   help="… up to this (default %(default)s)")
    b.add_argument("--batch_completion_window", default=DEFAULTS["batch_completion_window"],
                   help="the batches' completion window (default %(default)s)")
    b.add_argument("--batch_max_submits", type=int, default=DEFAULTS["batch_max_submits"],
                   help="times a request is submitted before a transient failure (5xx, 429, "
                   "expired batch) is recorded (default %(default)s)")
    b.add_argument("--batch_max_requests", type=int, default=DEFAULTS["batch_max_requests"],
                   help="requests per batch file (default %(default)s, the maximum)")
    b.add_argument("--batch_max_mb", type=float, default=DEFAULTS["batch_max_bytes"] / 2**20,
                   help="MiB per batch file (default %(default)s; the API allows 200 MB)")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m mminstruct.data_generator",
                      description="Generate samples from a prompt file with a VLM behind an "
                                  "OpenAI-compatible API (MM-Gen step 3).",
                      epilog=exit_codes_epilog(),
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--start_idx", type=int, default=DEFAULTS["start_idx"],
                   help="first prompt to process")
    p.add_argument("--num_prompts", type=int, default=DEFAULTS["num_prompts"],
                   help="number of prompts to process (-1: all)")
    return p


def config_from_args(args: argparse.Namespace, cls: type[GenerationConfig] = GenerationConfig,
                     **overrides: object) -> GenerationConfig:
    endpoint = EndpointConfig(
        base_url=args.base_url, api_key_env=args.api_key_env,
        azure_endpoint=args.azure_endpoint_url, azure_deployment=args.azure_deployment,
        api_version=args.api_version, azure_cli_credential=args.azure_cli_credential)
    kwargs = dict(
        input_folder=args.input_folder or ".", output_folder=args.output_folder or ".",
        prompt_file=args.prompt_file, file_prefix=args.file_prefix,
        start_idx=getattr(args, "start_idx", 0), num_prompts=getattr(args, "num_prompts", -1),
        model_name=args.model_name, endpoint=endpoint, concurrency=args.concurrency,
        rpm=args.rpm, tpm=args.tpm, max_retries=args.max_retries, timeout=args.timeout,
        retry_base_delay=args.retry_base_delay, retry_max_delay=args.retry_max_delay,
        max_image_side=args.max_image_side, jpeg_quality=args.jpeg_quality,
        image_cache_mb=args.image_cache_mb, temperature=args.temperature,
        max_tokens=args.max_tokens, max_tokens_field=args.max_tokens_field, seed=args.seed,
        structured_outputs=args.structured_outputs,
        format_fix_attempts=args.format_fix_attempts, resume=args.resume,
        retry_failed=args.retry_failed, dry_run=args.dry_run,
        allow_outside_paths=args.allow_outside_paths, debug=args.debug,
        ray_address=getattr(args, "ray_address", None),
        batch_api=args.batch_api, batch_poll_seconds=args.batch_poll_seconds,
        batch_poll_max_seconds=args.batch_poll_max_seconds,
        batch_completion_window=args.batch_completion_window,
        batch_max_submits=args.batch_max_submits, batch_max_requests=args.batch_max_requests,
        batch_max_bytes=int(args.batch_max_mb * 1024 * 1024))
    kwargs.update(overrides)
    return cls(**kwargs)  # type: ignore[arg-type]


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
