"""``python -m trio_gm.testing.explore``: see :mod:`trio_gm.testing.explore`."""

import sys

from ._driver import main

# (Guarded: the worker processes of ``--jobs`` must not run the command.)
if __name__ == "__main__":
    sys.exit(main())
