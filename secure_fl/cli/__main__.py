"""``python -m secure_fl.cli``."""

import sys

from . import main

sys.exit(main())
