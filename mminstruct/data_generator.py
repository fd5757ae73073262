"""Step 3: an MM-Gen prompt file -> generated samples, online.

MM-Gen's command line, kept as a thin entry point: the code lives in ``mminstruct.commands.generate``."""

import sys

from mminstruct.commands.generate import main

if __name__ == "__main__":
    sys.exit(main())
