"""``python -m trio_gm.testing.explore``: see :mod:`trio_gm.testing.explore`."""

import sys

from ._driver import main

sys.exit(main())
