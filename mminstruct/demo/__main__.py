"""``python -m mminstruct.demo --output_folder DIR``: build the offline demo workspace.

Prints what it wrote; the last line is the data file's path (so scripts can take ``| tail -1``).
"""

from __future__ import annotations

import argparse
import sys

from mminstruct.cli import OneLineParser
from mminstruct.errors import InputError
from mminstruct.demo.workspace import build_demo_workspace


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(
        prog="python -m mminstruct.demo",
        description="Build the offline demo workspace: synthetic charts with correct question/answer "
                    "pairs (the reference set), an unlabeled candidate pool and labels.json.")
    p.add_argument("--output_folder", required=True, help="folder to write (created if missing)")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same workspace")
    p.add_argument("--n_reference", type=int, default=150, help="reference records (default 150)")
    p.add_argument("--n_candidates", type=int, default=600, help="candidate pool images (default 600)")
    p.add_argument("--workers", type=int, default=None, help="drawing processes (default 2)")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def progress(done: int, total: int) -> None:
        if not args.quiet and total:
            end = "\n" if done == total else ""
            print(f"\rdrawing charts: {done}/{total}", end=end, file=sys.stderr, flush=True)

    try:
        ws = build_demo_workspace(args.output_folder, seed=args.seed, n_reference=args.n_reference,
                                  n_candidates=args.n_candidates, progress=progress,
                                  workers=args.workers)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write the demo workspace: {e}", file=sys.stderr)
        return 1
    what = f"drew {ws.rendered} charts" if ws.rendered else "already complete, nothing drawn"
    print(f"demo workspace {ws.root} ({what}, {ws.seconds:.1f} s)")
    print(f"  reference images: {ws.image_folder} ({ws.n_reference})")
    print(f"  candidate pool:   {ws.candidate_folder} ({ws.n_candidates})")
    print(f"  labels:           {ws.labels_file}")
    print(f"  readme:           {ws.readme}")
    print(f"  keywords:         {', '.join(ws.keywords)}")
    print("  data file:")
    print(ws.data_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
