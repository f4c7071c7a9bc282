"""The stages of a SecAgg(+) round, in order (routing contract of :mod:`secure_fl.protocol.base`).

Site stages alternate with aggregator stages. Without the consistency check (Bonawitz et al.
2017, §6.2) a round has 4 site stages; with it (the default) 5: the sites sign the survivor
set U3 before anyone reveals an unmasking share.
"""

from __future__ import annotations

from ..base import Stage

__all__ = [
    "ADVERTISE_KEYS",
    "ROUTE_KEYS",
    "SHARE_KEYS",
    "ROUTE_SHARES",
    "MASKED_INPUT",
    "ANNOUNCE_SURVIVORS",
    "SIGN_SURVIVORS",
    "REQUEST_UNMASK",
    "UNMASK",
    "RELEASE",
    "round_stages",
]

ADVERTISE_KEYS = "advertise_keys"
ROUTE_KEYS = "route_keys"
SHARE_KEYS = "share_keys"
ROUTE_SHARES = "route_shares"
MASKED_INPUT = "masked_input"
ANNOUNCE_SURVIVORS = "announce_survivors"
SIGN_SURVIVORS = "sign_survivors"
REQUEST_UNMASK = "request_unmask"
UNMASK = "unmask"
RELEASE = "release"

_PLAIN = (
    Stage(ADVERTISE_KEYS, "sites"),
    Stage(ROUTE_KEYS, "aggregator"),
    Stage(SHARE_KEYS, "sites"),
    Stage(ROUTE_SHARES, "aggregator"),
    Stage(MASKED_INPUT, "sites"),
    Stage(REQUEST_UNMASK, "aggregator"),
    Stage(UNMASK, "sites"),
    Stage(RELEASE, "aggregator"),
)
_CHECKED = _PLAIN[:5] + (Stage(ANNOUNCE_SURVIVORS, "aggregator"), Stage(SIGN_SURVIVORS, "sites")) + _PLAIN[5:]


def round_stages(consistency_check: bool) -> tuple[Stage, ...]:
    """The stages of one round, with or without the signed survivor set of Bonawitz et al. §6.2."""
    return _CHECKED if consistency_check else _PLAIN
