"""Step 2: an MM-Gen task file -> an MM-Gen prompt file.

MM-Gen's command line, kept as a thin entry point: the code lives in ``mminstruct.commands.prompts``."""

import sys

from mminstruct.commands.prompts import main

if __name__ == "__main__":
    sys.exit(main())
