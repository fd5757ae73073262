"""Step 2 command line, with MM-Gen's flags: task file → prompt file.

    python -m mminstruct.prompt_generator --task_desc TASK.json --input_folder IN --output_folder OUT \
        --file_prefix chart --total_gen 1000 [--min_gen_per_candidate 1] [--num_icl_samples 1] \
        [--mode vqa_nr] [--seed 0] [--budgets "bar chart=4000,pie chart=25%"] \
        [--only "bar chart"]

Writes ``OUT/generated_prompts/{file_prefix}_prompts_{YYYYmmdd_HHMMSS}.json`` and prints its path
on the last line.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from mminstruct.cli import OneLineParser, add_setting_arguments, run_cli
from mminstruct.data.modes import MODE_NAMES
from mminstruct.prompts.plan import (PROMPT_DEFAULTS, PROMPT_SETTINGS, PromptConfig,
                                     generate_prompt_file)

log = logging.getLogger("mminstruct.commands.prompts")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m mminstruct.prompt_generator",
                                description="Plan generation prompts from a task file (MM-Gen step 2).")
    p.add_argument("--task_desc", required=True, help="task file, relative to --input_folder")
    p.add_argument("--input_folder", default="", help="folder every image path is relative to")
    p.add_argument("--output_folder", default="", help="prompt file goes to OUTPUT/generated_prompts/")
    p.add_argument("--file_prefix", required=True, help="prefix of the prompt file's name")
    counts = [PROMPT_SETTINGS[n] for n in ("total_gen", "min_gen_per_candidate", "num_icl_samples")]
    add_setting_arguments(p, counts, required=("total_gen",))  # from PromptConfig's declarations
    p.add_argument("--mode", default=PROMPT_DEFAULTS["mode"].value,
                   help=f"one of: {', '.join(MODE_NAMES)} (default %(default)s)")
    add_setting_arguments(p, [PROMPT_SETTINGS["seed"]])
    p.add_argument("--budgets", default=None,
                   help="per-subgroup budgets, 'KEYWORD=PROMPTS' or 'KEYWORD=SHARE%%' separated by "
                        "commas (e.g. 'bar chart=4000,pie chart=25%%'); the other subgroups share "
                        "what is left of --total_gen in proportion to their reference samples")
    p.add_argument("--only", default=None,
                   help="plan only these subgroups (comma-separated keywords), each with the "
                        "prompts it gets in the full plan")
    p.add_argument("--no_check_images", action="store_true",
                   help="do not check that ICL and candidate images exist")
    p.add_argument("--allow_outside_paths", action="store_true",
                   help="allow absolute image paths and paths outside --input_folder")
    p.add_argument("--debug", action="store_true", help="debug logging")
    return p


def run(args: argparse.Namespace) -> int:
    config = PromptConfig(
        task_desc=args.task_desc, file_prefix=args.file_prefix, total_gen=args.total_gen,
        input_folder=args.input_folder, output_folder=args.output_folder,
        min_gen_per_candidate=args.min_gen_per_candidate, num_icl_samples=args.num_icl_samples,
        mode=args.mode, seed=args.seed, check_images=not args.no_check_images,
        allow_outside_paths=args.allow_outside_paths, budgets=args.budgets,
        only=tuple(k for k in (args.only or "").split(",") if k.strip()))
    t0 = time.perf_counter()
    result = generate_prompt_file(config)
    plan = result.plan
    for p in plan.excluded_samples[:20]:
        log.warning("reference sample left out of ICL: %s", p)
    if plan.missing_candidates:
        log.warning("%d candidate image(s) not found under %s and left out (first: %s); "
                    "--no_check_images writes them into the prompt file unchecked",
                    len(plan.missing_candidates), config.input_folder or ".",
                    plan.missing_candidates[0])
    for s in plan.subgroups:
        log.info("subgroup %r: %d reference samples, %d candidates → %d prompts%s",
                 s.keyword, s.n_reference, len(s.candidates), s.n_prompts,
                 f" (budget {s.budget})" if s.budget is not None else "")
        if s.reuse_note():
            log.info("subgroup %r: %s", s.keyword, s.reuse_note())
    log.info("%d prompts (mode %s) in %.2f s", result.n_prompts, config.mode,
             time.perf_counter() - t0)
    print(result.path)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
