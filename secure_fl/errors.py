"""Errors raised at the boundaries of secure-fl.

Every error names what was wrong: the key, the file or the value, so a user can fix it
without reading the source.
"""

from __future__ import annotations

__all__ = ["SecureFLError", "SpecError", "DataError", "ProtocolError", "SiteRejected", "RoundAborted"]


class SecureFLError(Exception):
    """Base class of every error secure-fl raises on purpose."""


class SpecError(SecureFLError, ValueError):
    """A protocol or experiment spec is invalid. The message names the file, key and value."""


class DataError(SecureFLError, ValueError):
    """A dataset could not be loaded. The message names the file or the package to install."""


class ProtocolError(SecureFLError):
    """A secure-sum protocol could not proceed."""


class SiteRejected(ProtocolError):
    """One site's contribution is refused for this round; the other sites carry on."""

    def __init__(self, site: str, reason: str) -> None:
        super().__init__(f"site {site!r} rejected: {reason}")
        self.site = site
        self.reason = reason


class RoundAborted(ProtocolError):
    """The round cannot release anything (e.g. fewer than t survivors). Nothing partial leaks."""
