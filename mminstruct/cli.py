"""What every command line shares: a one-line argument parser, logging setup, and turning core
errors into one clear line with a distinct exit code."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from mminstruct.errors import InputError, MMInstructError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (``prog: error: … (see --help)``), not usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time, so a main() run in-process (tests,
    notebooks) never logs into a stream that was swapped out and closed since."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self):  # noqa: D401
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(debug: bool = False) -> None:
    """Our INFO lines on stderr; other libraries' (open_clip logs on the root logger, the HTTP
    stack can echo headers) only with ``--debug``. Idempotent: main() may run many times."""
    handler = _CurrentStderr()
    handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))
    ours, root = logging.getLogger("mminstruct"), logging.getLogger()
    for lg in (ours, root):
        for h in [h for h in lg.handlers if isinstance(h, _CurrentStderr)]:
            lg.removeHandler(h)
    ours.setLevel(logging.DEBUG if debug else logging.INFO)
    ours.addHandler(handler)
    ours.propagate = False
    if debug:
        root.setLevel(logging.DEBUG)
        root.addHandler(handler)
    for name in ("httpx", "httpcore", "openai", "urllib3", "PIL"):
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.WARNING)


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def run_cli(
    build_parser: Callable[[], argparse.ArgumentParser],
    run: Callable[[argparse.Namespace], int | None],
    argv: Sequence[str] | None = None,
) -> int:
    """Parse, set up logging, run; an InputError becomes ``error: …`` on stderr and exit 2, any
    other MMInstructError ``failed: …`` and exit 1, Ctrl-C exit 130 — never a traceback for the
    user's mistakes (``--debug`` logs the details)."""
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    setup_logging(debug)
    try:
        return int(run(args) or 0)
    except InputError as e:
        logging.getLogger("mminstruct").debug("details", exc_info=debug)
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except MMInstructError as e:
        logging.getLogger("mminstruct").debug("details", exc_info=debug)
        print(f"failed: {one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
