"""``python -m mminstruct.judge`` / ``mminstruct judge``: the judge's command line (its flags are
``commands.generate``'s endpoint, retry, limit, resume, dry-run and Batch API flags plus the
judge's own); the judge itself is ``mminstruct.quality.judge``."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mminstruct.cli import OneLineParser, add_setting_arguments, run_cli
from mminstruct.commands.generate import (EXIT_CODES, add_common_args, config_from_args,
                                          failed_summary, install_signal_handlers, run_exit_code)
from mminstruct.errors import DataFileError
from mminstruct.generate.control import RunControl
from mminstruct.generate.job import RunResult
from mminstruct.generate.jsonstream import iter_object
from mminstruct.generate.runlog import FINISHED, RunDir
from mminstruct.llm.client import install_log_redaction
from mminstruct.llm.errors import RULES as ERROR_RULES
from mminstruct.quality.judge import (EXIT_BUDGET, JUDGE_SETTINGS, RUN_PREFIX, JudgeConfig, default_scores_path,
                                      estimate, judge_async, judge_kind, runs_folder_for,
                                      summary_path)
from mminstruct.quality.rubric import load_rubric


def config_from_namespace(args: argparse.Namespace) -> JudgeConfig:
    generated = Path(args.generated_file)
    if not generated.is_file():
        raise DataFileError(f"{generated}: generated-data file not found")
    input_folder = args.input_folder
    if not input_folder:
        header: dict[str, Any] = {}
        for key, value, _ in iter_object(generated, "samples"):
            if key == "samples":
                break
            header[key] = value
        input_folder = str(header.get("input_folder") or ".")
    output = Path(args.output) if args.output else default_scores_path(generated)
    prefix = args.file_prefix or RUN_PREFIX + re.sub(r"[^A-Za-z0-9_.-]+", "_",
                                                     output.name.removesuffix(".jsonl"))
    cfg = config_from_args(
        args, JudgeConfig, input_folder=input_folder,
        output_folder=args.output_folder or str(runs_folder_for(generated)),
        prompt_file=str(generated.resolve()), file_prefix=prefix, start_idx=0, num_prompts=-1,
        output=str(output), judge_prompt_file=args.prompt_file or "",
        rubric=load_rubric(args.rubric), sample=args.sample, sample_seed=args.sample_seed,
        repeat=args.repeat, max_cost=args.max_cost, input_price=args.input_price,
        output_price=args.output_price, truth=args.truth or "")
    return cfg  # type: ignore[return-value]


EXIT_CODES_EXTRA = {EXIT_BUDGET: "stopped at the cost cap (--max_cost); the scores so far are "
                    "written; --resume with a higher --max_cost continues"}


def build_parser() -> argparse.ArgumentParser:
    import textwrap

    lines = ["exit status:"]
    for code, what in {**EXIT_CODES, **EXIT_CODES_EXTRA}.items():
        lines += textwrap.wrap(what, 90, initial_indent=f"  {code:<4}", subsequent_indent=" " * 6)
    p = OneLineParser(prog="python -m mminstruct.judge",
                      description="Score every sample of a generated file with a vision model "
                                  "(VLM as a judge) against a rubric.",
                      epilog="\n".join(lines), formatter_class=argparse.RawDescriptionHelpFormatter)
    j = p.add_argument_group("judge")
    j.add_argument("--generated_file", required=True, help="the generated-data file to judge "
                   "(never modified)")
    j.add_argument("--output", help="the scores file (JSONL; default manifests/RUN.scores.jsonl "
                   "beside the generated file, where Review looks); its summary goes beside it "
                   "as S.summary.json")
    j.add_argument("--rubric", help="rubric file (JSON or YAML: aspects, scale, overall); "
                   "default: visual_faithfulness, correctness, task_fit, 1-5")
    add_setting_arguments(j, list(JUDGE_SETTINGS.values()))  # quality.judge's declarations
    j.add_argument("--truth", help="JSON list of the ids of known bad samples: the summary "
                   "reports how well the scores separate them (ROC AUC)")
    j.add_argument("--estimate_only", action="store_true", help="print the cost estimate and "
                   "call nothing")
    add_common_args(p, prompt_run=False)
    return p


def run(args: argparse.Namespace) -> int:
    install_log_redaction()
    cfg = config_from_namespace(args)
    kind = judge_kind(cfg)
    est = estimate(cfg, kind.stream)
    usd = "unknown (no price for the model)" if est["usd"] is None else f"${est['usd']:.4f}"
    print(f"estimate: {est['requests']} requests, {est['input_tokens']} input tokens "
          f"({est['image_tokens']} for images), {est['output_tokens']} output tokens, {usd}"
          + (f"; cap ${cfg.max_cost:g}" if cfg.max_cost else ""), file=sys.stderr)
    if args.estimate_only:
        print(json.dumps(est))
        return 0
    control = RunControl()

    async def main() -> RunResult:
        install_signal_handlers(control)
        return await judge_async(cfg, control=control, kind=kind)

    result = asyncio.run(main())
    if result.run_dir is not None:
        RunDir.at(result.run_dir).update_meta(estimate=est)
    if result.state == "dry_run":
        print(f"dry run: {result.message}; see {result.manifest}", file=sys.stderr)
        for f in result.batch_files:
            print(f)
        return 0
    print(result.message, file=sys.stderr)
    if result.output is not None:
        _print_summary(summary_path(result.output))
        print(result.output)
    if result.state == "stopped" and ERROR_RULES["budget"].what in result.message:
        return EXIT_BUDGET
    if result.state != FINISHED:
        return run_exit_code(result.state, 0)
    st = result.status
    failed = failed_summary(st.failed, st.failed_by_class)
    if failed:
        print(f"{failed} (unjudged in the scores file)", file=sys.stderr)
    return run_exit_code(FINISHED, st.failed)


def _print_summary(path: Path) -> None:
    try:
        s = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return
    o = s["overall"]
    ci = f" (95% CI {o['ci95'][0]}–{o['ci95'][1]})" if o.get("ci95") else ""
    print(f"judged {s['judged']}, unjudged {s['unjudged']}; overall mean {o['mean']}{ci}; "
          f"cost ${s.get('cost_usd')}", file=sys.stderr)
    for a, v in s["aspects"].items():
        extra = ""
        if "agreement" in s:
            g = s["agreement"][a]
            extra = f"; self-agreement exact {g['exact']}, within 1 {g['within_1']}"
        print(f"  {a}: mean {v['mean']}{extra}", file=sys.stderr)
    if "planted" in s:
        print(f"  planted bad samples: {s['planted']['bad']}, ROC AUC of overall "
              f"{s['planted']['roc_auc']}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
