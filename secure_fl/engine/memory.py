"""Peak memory of the current process, as the engines record it per party."""

from __future__ import annotations

import resource
import sys

__all__ = ["peak_rss_bytes"]


def peak_rss_bytes() -> int:
    """The peak resident set size of this process since it started, in bytes (``getrusage`` ``ru_maxrss``:
    a high-water mark, so it never goes down; Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
