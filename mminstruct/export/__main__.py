"""``python -m mminstruct.export``."""

import sys

from mminstruct.export.formats import main

if __name__ == "__main__":
    sys.exit(main())
