"""Plaintext secure "sum": the baseline. The aggregator sees every site's weighted update.

Wire format of a ``submit`` message: 8-byte little-endian float64 weight, then the values as
little-endian float32.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import SiteRejected
from ..speccheck import check_keys
from .base import AGGREGATOR, AggregatorParty, Message, SecureSum, SiteParty, Stage, SumResult, ViewKind

__all__ = ["PlainSum", "encode_plain", "decode_plain"]

SUBMIT = "submit"
RELEASE = "release"
_STAGES = (Stage(SUBMIT, "sites"), Stage(RELEASE, "aggregator"))


def encode_plain(values: np.ndarray, weight: float) -> bytes:
    return np.float64(weight).astype("<f8").tobytes() + np.asarray(values, dtype="<f4").tobytes()


def decode_plain(payload: bytes, dim: int) -> tuple[np.ndarray, float]:
    expected = 8 + 4 * dim
    if len(payload) != expected:
        raise ValueError(f"plain update has {len(payload)} bytes, expected {expected} for {dim} values")
    weight = float(np.frombuffer(payload[:8], dtype="<f8")[0])
    values = np.frombuffer(payload[8:], dtype="<f4").astype(np.float64)
    if not np.isfinite(weight) or weight < 0 or not np.all(np.isfinite(values)):
        raise ValueError("plain update contains a negative/non-finite weight or non-finite values")
    return values, weight


class _PlainSite(SiteParty):
    def __init__(self, site_id: str, round: int, values: np.ndarray, weight: float, kind: ViewKind) -> None:
        self.site_id, self.round, self.kind = site_id, round, kind
        self._values, self._weight = values, weight
        self._result: SumResult | None = None

    def step(self, stage: str, inbox: Sequence[Message]) -> list[Message]:
        if stage == SUBMIT:
            payload = encode_plain(self._values, self._weight)
            return [Message(self.round, SUBMIT, self.site_id, AGGREGATOR, payload, self.kind)]
        raise SiteRejected(self.site_id, f"unexpected stage {stage!r}")

    def result(self) -> SumResult | None:
        return self._result


class _PlainAggregator(AggregatorParty):
    def __init__(self, round: int, site_ids: Sequence[str], dim: int) -> None:
        super().__init__()
        self.round, self.site_ids, self.dim = round, list(site_ids), dim
        self._result: SumResult | None = None

    def step(self, stage: str, inbox: Sequence[Message]) -> list[Message]:
        if stage != RELEASE:
            raise ValueError(f"plain aggregator has no stage {stage!r}")
        by_sender: dict[str, list[Message]] = {}
        for msg in inbox:
            by_sender.setdefault(msg.sender, []).append(msg)
        total = np.zeros(self.dim, dtype=np.float64)
        weight = 0.0
        seen: list[str] = []
        for sender, messages in by_sender.items():
            if sender not in self.site_ids:
                self.rejected[sender] = "not a participant of this round"
            elif len(messages) > 1:  # a site that sent twice is dropped entirely
                self.rejected[sender] = "sent twice in one round"
            else:
                try:
                    values, w = decode_plain(messages[0].payload, self.dim)
                except ValueError as exc:
                    self.rejected[sender] = str(exc)
                    continue
                seen.append(sender)
                total += values
                weight += w
        self._result = SumResult(total, weight, tuple(seen))
        return []

    def result(self) -> SumResult | None:
        return self._result


@dataclass
class PlainSum(SecureSum):
    """Sites send their inputs in the clear.

    ``input_kind`` says what those inputs are: PLAIN, or NOISED when a DP layer noised them at
    the site before they left (set from the protocol spec, see ProtocolSpec.build_secure_sum).
    """

    input_kind: ViewKind = ViewKind.PLAIN

    def __post_init__(self) -> None:
        self.name = "plain"
        self.view_kind = ViewKind.PLAIN
        self.releases_to_aggregator = True

    @property
    def stages(self) -> tuple[Stage, ...]:
        return _STAGES

    @classmethod
    def from_params(cls, params: Mapping[str, Any], where: str) -> "PlainSum":
        check_keys(params, ["kind"], where)
        return cls()

    def site(self, site_id: str, round: int, values: np.ndarray, weight: float) -> SiteParty:
        return _PlainSite(site_id, round, values, weight, self.input_kind)

    def aggregator(self, round: int, site_ids: Sequence[str], dim: int) -> AggregatorParty:
        return _PlainAggregator(round, site_ids, dim)
