"""``python -m mminstruct``: the ``mminstruct`` command (``commands.main``)."""

import sys

from .commands import main

sys.exit(main())
