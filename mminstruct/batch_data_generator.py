"""Step 3 through the OpenAI Batch API.

MM-Gen's command line, kept as a thin entry point: the code lives in ``mminstruct.commands.batch``."""

import sys

from mminstruct.commands.batch import main

if __name__ == "__main__":
    sys.exit(main())
