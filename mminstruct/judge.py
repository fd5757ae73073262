"""Judge generated samples with a vision model (a rubric, scores per aspect).

MM-Gen's command line, kept as a thin entry point: the code lives in ``mminstruct.commands.judge``."""

import sys

from mminstruct.commands.judge import main

if __name__ == "__main__":
    sys.exit(main())
