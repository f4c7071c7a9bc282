"""A site's kit ledger in which each (run, round) of a deployed run is charged at most once (see :mod:`.privacy`).

Kept apart from :mod:`.privacy` so that a ClientApp process handling a non-DP message never imports
``dp_accounting`` (seconds of import time per message).
"""

from __future__ import annotations

from pathlib import Path

from dp_accounting import dp_event

from ...privacy.ledger import Budget, ChargeRecord, PrivacyLedger

__all__ = ["RunLedger"]


class RunLedger(PrivacyLedger):
    """A site's kit ledger in which each (run, round) is charged at most once."""

    def __init__(self, path: str | Path, dataset: str, budget: Budget | None, run: str) -> None:
        super().__init__(path, dataset, budget)
        self.run = run

    def key(self, round: int) -> str:
        return f"deployed run {self.run} round {round}"

    def charged(self, round: int) -> ChargeRecord | None:
        """The charge in force for ``round`` of this run, if any."""
        key = self.key(round)
        return next((r for r in self.records() if r.round == round and r.note == key), None)

    def check(self, event: dp_event.DpEvent, round: int, *, replacing_round: int | None = None) -> dict[str, float]:
        if replacing_round is None and self.charged(round) is not None:
            return {}  # already paid for: the replayed round re-sends the same update
        return super().check(event, round, replacing_round=replacing_round)

    def charge(self, round: int, event: dp_event.DpEvent, delta: float, *, protocol: str, spec_hash: str,
               mechanism: str, note: str = "") -> ChargeRecord:
        done = self.charged(round)
        if done is not None:
            return done
        return super().charge(round, event, delta, protocol=protocol, spec_hash=spec_hash, mechanism=mechanism,
                              note=self.key(round))
