"""``python -m mminstruct``: the ``mminstruct`` command (``commands.main``)."""

import sys

from mminstruct.commands import main

sys.exit(main())
