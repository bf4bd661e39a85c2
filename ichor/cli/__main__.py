"""``python -m ichor.cli``: the ``ichor`` command (DDP launchers re-run the command this way)."""

import sys

from ichor.cli import main

sys.exit(main())
