"""``python -m imer.cli``."""

import sys

from imer.cli import main

sys.exit(main())
