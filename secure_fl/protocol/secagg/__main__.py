"""``python -m secure_fl.protocol.secagg [n ...]``: SecAgg+ degree, threshold and failure probabilities."""

from .params import _main

raise SystemExit(_main())
