"""What every command line shares: logging setup and turning core errors into one clear line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from .errors import InputError, MMInstructError


def setup_logging(debug: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    if not debug:  # keep third-party request logs (which could echo headers) quiet
        for name in ("httpx", "httpcore", "openai", "urllib3", "PIL"):
            logging.getLogger(name).setLevel(logging.WARNING)


def run_cli(
    build_parser: Callable[[], argparse.ArgumentParser],
    run: Callable[[argparse.Namespace], int | None],
    argv: Sequence[str] | None = None,
) -> int:
    """Parse, set up logging, run; an InputError becomes ``error: …`` on stderr and exit 2, any
    other MMInstructError exit 1, Ctrl-C exit 130 — never a traceback for the user's mistakes."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "debug", False))
    prog = parser.prog
    try:
        return int(run(args) or 0)
    except InputError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except MMInstructError as e:
        print(f"{prog}: failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
