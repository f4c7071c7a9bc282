"""Plaintext secure "sum": the baseline. The aggregator sees every site's weighted update.

Wire format of a ``submit`` message: the round as an 8-byte little-endian unsigned integer, the
weight as a little-endian float64, then the values as little-endian float32. The aggregator counts
a message only when both its label and its bytes name the current round, so an update replayed
from an earlier round (relabelled or not) is refused, not added.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..speccheck import check_keys
from .base import (
    AGGREGATOR,
    AggregatorParty,
    Message,
    SecureSum,
    SiteParty,
    Stage,
    StagedParty,
    SumResult,
    ViewKind,
    handles,
)

__all__ = ["PlainSum", "encode_plain", "decode_plain"]

SUBMIT = "submit"
RELEASE = "release"
_STAGES = (Stage(SUBMIT, "sites"), Stage(RELEASE, "aggregator"))


_HEADER = 16  # round (u64) + weight (f64)


def encode_plain(values: np.ndarray, weight: float, round: int = 0) -> bytes:
    """The ``submit`` payload of one site for ``round`` (wire format above)."""
    head = np.uint64(round).astype("<u8").tobytes() + np.float64(weight).astype("<f8").tobytes()
    return head + np.asarray(values, dtype="<f4").tobytes()


def decode_plain(payload: bytes, dim: int, round: int = 0) -> tuple[np.ndarray, float]:
    """Values and weight of a ``submit`` payload; ``ValueError`` naming what is wrong otherwise."""
    expected = _HEADER + 4 * dim
    if len(payload) != expected:
        raise ValueError(f"plain update has {len(payload)} bytes, expected {expected} for {dim} values")
    sent_round = int(np.frombuffer(payload[:8], dtype="<u8")[0])
    if sent_round != round:
        raise ValueError(f"plain update is for round {sent_round}, not round {round} (replayed?)")
    weight = float(np.frombuffer(payload[8:16], dtype="<f8")[0])
    values = np.frombuffer(payload[16:], dtype="<f4").astype(np.float64)
    if not np.isfinite(weight) or weight < 0 or not np.all(np.isfinite(values)):
        raise ValueError("plain update contains a negative/non-finite weight or non-finite values")
    return values, weight


class _PlainSite(StagedParty, SiteParty):
    def __init__(self, site_id: str, round: int, values: np.ndarray, weight: float, kind: ViewKind) -> None:
        self.site_id, self.round, self.kind = site_id, round, kind
        self._values, self._weight = values, weight
        self._sequence(_STAGES, "sites", f"plain site {site_id!r} (round {round})")

    @handles(SUBMIT)
    def _submit(self, inbox: Sequence[Message]) -> list[Message]:
        payload = encode_plain(self._values, self._weight, self.round)
        return [Message(self.round, SUBMIT, self.site_id, AGGREGATOR, payload, self.kind)]


class _PlainAggregator(StagedParty, AggregatorParty):
    def __init__(self, round: int, site_ids: Sequence[str], dim: int) -> None:
        super().__init__()
        self.round, self.site_ids, self.dim = round, list(site_ids), dim
        self._result: SumResult | None = None
        self._sequence(_STAGES, "aggregator", f"plain aggregator (round {round})")

    @handles(RELEASE)
    def _release(self, inbox: Sequence[Message]) -> list[Message]:
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
            elif messages[0].round != self.round or messages[0].stage != SUBMIT:
                self.rejected[sender] = (
                    f"sent a message labelled round {messages[0].round}, stage {messages[0].stage!r} "
                    f"at round {self.round}, stage {SUBMIT!r}"
                )
            else:
                try:
                    values, w = decode_plain(messages[0].payload, self.dim, self.round)
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

    name: ClassVar[str] = "plain"
    view_kind: ClassVar[ViewKind] = ViewKind.PLAIN

    input_kind: ViewKind = ViewKind.PLAIN

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
