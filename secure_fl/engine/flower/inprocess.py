"""An in-process :class:`~.server.Transport`: the deployed run without Flower (tests, dry runs).

Each request goes through the same codec and :func:`~.site.handle_request` as in a ClientApp,
one site after the other, so site state lives in the kits exactly as in a deployment.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .codec import decode, encode
from .server import TripReply
from .site import handle_request

__all__ = ["InProcessTransport"]


class InProcessTransport:
    def __init__(self, site_kits: Mapping[str, Path | str], offline: set[str] | None = None) -> None:
        self.site_kits = {s: Path(p) for s, p in site_kits.items()}
        #: sites that stop answering (a simulated dropout), settable between trips
        self.offline: set[str] = set(offline or ())
        self.trips: list[list[str]] = []

    def sites(self) -> list[str]:
        return sorted(s for s in self.site_kits if s not in self.offline)

    def exchange(self, requests: Mapping[str, bytes], timeout: float) -> dict[str, TripReply | bytes]:
        self.trips.append(sorted(requests))
        out: dict[str, TripReply | bytes] = {}
        for s, req in requests.items():
            if s in self.offline or s not in self.site_kits:
                continue
            out[s] = encode(handle_request(self.site_kits[s], decode(req), node_site=s))
        return out
