"""``python -m mminstruct.task_file_generator``: MM-Gen's step 1 command line.

Every flag of MM-Gen's ``task_file_generator.py`` keeps its meaning (``--data_file --input_folder
--output_folder --keywords --output_prefix --model_name --batch_size --gpu --debug``); the others
are new. Thin: argparse → ``TaskFileConfig`` → ``generate_task_file``. Bad arguments or files print
one line on stderr and exit 2; the task file's path is the last line of stdout.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mminstruct.cli import OneLineParser, add_setting_arguments, run_cli, values_from_args
from mminstruct.partition.taskfile import TASK_SETTINGS, TaskFileConfig, generate_task_file


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m mminstruct.task_file_generator",
                description="Partition a reference data file and a candidate image pool into "
                            "keyword subgroups with CLIP, and write an MM-Gen task file.")
    mm = p.add_argument_group("MM-Gen's flags")
    mm.add_argument("--data_file", required=True,
                    help="LLaVA-format data file (JSON list, {'samples': [...]} or JSONL); relative "
                         "paths are looked up in --input_folder first")
    mm.add_argument("--input_folder", default=None,
                    help="folder that image paths are relative to (default: the data file's folder)")
    mm.add_argument("--output_folder", default=".", help="where the task file is written")
    mm.add_argument("--keywords", nargs="+", required=True, metavar="KEYWORD",
                    help="one subgroup per keyword, e.g. --keywords 'bar chart' 'pie chart'")
    # --output_prefix --model_name --batch_size --gpu: TaskFileConfig's declarations
    add_setting_arguments(mm, [s for s in TASK_SETTINGS.values() if s.section == "mmgen"])
    mm.add_argument("--debug", action="store_true", help="debug logging")
    new = p.add_argument_group("mminstruct's flags")
    new.add_argument("--image_folder", default=None,
                     help="image folder under --input_folder (default: the data file's "
                          "'image_folder' key)")
    new.add_argument("--candidate_folder", default=None,
                     help="folder of unlabeled candidate images (recursive)")
    new.add_argument("--candidate_file", default=None,
                     help="candidate images: a text file of paths (one a line, relative to "
                          "--input_folder) or a LLaVA data file")
    add_setting_arguments(new, [TASK_SETTINGS["candidates_per_keyword"],
                                TASK_SETTINGS["min_similarity"]])
    new.add_argument("--templates", nargs="+", default=None, metavar="TEMPLATE",
                     help="average each keyword's text embedding over templates with '{}' "
                          "(e.g. 'a photo of a {}.'), or the word 'default' for a built-in set")
    new.add_argument("--allow_outside_paths", action="store_true",
                     help="allow absolute image paths and paths that leave the input folder")
    new.add_argument("--cache_dir", default=None,
                     help="embedding cache folder (default $MMINSTRUCT_CACHE_DIR or "
                          "~/.cache/mminstruct)")
    add_setting_arguments(new, [TASK_SETTINGS["num_workers"]])
    new.add_argument("--precision", default="auto", type=str.lower,
                     help="image embedding precision: fp32, bf16, int8 (CPU: dynamic int8 Linear "
                          "layers) or auto (default: bf16 where native, else int8 on the CPU, "
                          "each only if the first batch agrees with fp32, cosine ≥ 0.999)")
    new.add_argument("--ray_address", default=None, metavar="ADDRESS|auto|local",
                     help="embed the candidate pool with Ray Data (needs requirements-ray.txt): "
                          "'local' starts a private instance, 'auto' joins this machine's "
                          "cluster, HOST:PORT a head node")
    return p


def run(args: argparse.Namespace) -> int:

    config = TaskFileConfig(
        data_file=args.data_file, input_folder=args.input_folder,
        output_folder=args.output_folder, keywords=args.keywords, image_folder=args.image_folder,
        candidate_folder=args.candidate_folder, candidate_file=args.candidate_file,
        templates=args.templates or (), allow_outside_paths=args.allow_outside_paths,
        cache_dir=args.cache_dir, precision=args.precision, ray_address=args.ray_address,
        **values_from_args(args, list(TASK_SETTINGS.values())))  # clip_model from --model_name
    if config.ray_address:
        from mminstruct.distributed.embed import generate_task_file as on_ray  # noqa: PLC0415

        path = on_ray(config)
    else:
        path = generate_task_file(config)
    print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
