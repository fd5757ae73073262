"""``python -m mminstruct.quality``."""

import sys

from mminstruct.quality.report import main

if __name__ == "__main__":
    sys.exit(main())
