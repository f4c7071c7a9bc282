"""Errors raised at the boundaries of secure-fl.

Every error names what was wrong: the key, the file or the value, so a user can fix it
without reading the source.
"""

from __future__ import annotations

__all__ = [
    "SecureFLError",
    "SpecError",
    "InvalidParameter",
    "DataError",
    "ProtocolError",
    "StageError",
    "SiteRejected",
    "RoundAborted",
]


class SecureFLError(Exception):
    """Base class of every error secure-fl raises on purpose."""


class SpecError(SecureFLError, ValueError):
    """A protocol or experiment spec is invalid. The message names the file, key and value."""


class InvalidParameter(SpecError):
    """A constructor argument is invalid (a spec error not yet located in a file). ``str()`` starts with the
    key (``key: problem, found v``).

    Components validate once, in their constructor, and raise this; their ``from_params`` re-raises it
    as a :class:`SpecError` that adds the spec location (:func:`secure_fl.speccheck.build`). ``key`` is
    empty for a problem of the whole table (e.g. two keys that exclude each other).
    """

    def __init__(self, key: str, problem: str, *found: object) -> None:
        text = f"{problem}, found {found[0]!r}" if found else problem
        super().__init__(f"{key}: {text}" if key else text)
        self.key, self.problem = key, text


class DataError(SecureFLError, ValueError):
    """A dataset could not be loaded. The message names the file or the package to install."""


class ProtocolError(SecureFLError):
    """A secure-sum protocol could not proceed."""


class StageError(ProtocolError):
    """A party was asked to take a stage it does not have, has already taken, or whose turn has not come.

    Raised by :class:`secure_fl.protocol.base.StagedParty` for every protocol; the message names the
    party, the stage, the stage expected next and the party's stages in order.
    """

    def __init__(self, party: str, stage: str, expected: str | None, problem: str, stages: tuple[str, ...]) -> None:
        nxt = f"expected {expected!r} next" if expected else "this party has finished its round"
        super().__init__(f"{party}: {problem} stage {stage!r}; {nxt} (stages in order: {list(stages)})")
        self.party, self.stage, self.expected, self.stages = party, stage, expected, stages


class SiteRejected(ProtocolError):
    """One site's contribution is refused for this round; the other sites carry on."""

    def __init__(self, site: str, reason: str) -> None:
        super().__init__(f"site {site!r} rejected: {reason}")
        self.site = site
        self.reason = reason


class RoundAborted(ProtocolError):
    """The round cannot release anything (e.g. fewer than t survivors). Nothing partial leaks."""
