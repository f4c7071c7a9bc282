"""secure-fl: privacy-preserving federated learning between hospitals.

Importing the package imports nothing heavy; see docs/architecture.md for the layers.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__ = version("secure-fl")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
