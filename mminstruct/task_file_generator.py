"""Step 1: a LLaVA data file + a candidate pool + keywords -> an MM-Gen task file.

MM-Gen's command line, kept as a thin entry point: the code lives in ``mminstruct.commands.task``."""

import sys

from mminstruct.commands.task import main

if __name__ == "__main__":
    sys.exit(main())
