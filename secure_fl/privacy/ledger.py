"""Per-site privacy ledger: every DP event charged to a dataset, in SQLite, before release.

One SQLite file per site (``run_dir/sites/SITE/ledger.sqlite``). A row is written and
committed *before* the update it pays for leaves the site, so a crash between charging and
sending over-counts (the site paid for nothing) but never under-counts. Each row stores the
round, the protocol name, the spec hash and the serialised :class:`dp_accounting.DpEvent`,
so any accountant can recount the whole history later (``secure-fl ledger SITE_DIR``).

A site configured with a budget ``(epsilon_max, delta)`` refuses a charge whose composed ε
(by the ledger's accountant, PLD by default) would exceed ``epsilon_max``, with
:class:`~secure_fl.errors.SiteRejected` saying what is spent and what the round would cost.
"""

from __future__ import annotations

import datetime as _dt
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dp_accounting import dp_event

from ..errors import SiteRejected
from .accounting import ACCOUNTANTS, compose, epsilon, event_from_json, event_to_json

__all__ = ["Budget", "ChargeRecord", "PrivacyLedger"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset TEXT NOT NULL,
    round INTEGER NOT NULL,
    protocol TEXT NOT NULL,
    spec_hash TEXT NOT NULL,
    mechanism TEXT NOT NULL,
    event TEXT NOT NULL,
    delta REAL NOT NULL,
    epsilon_rdp REAL NOT NULL,
    epsilon_pld REAL NOT NULL,
    superseded_by INTEGER,
    note TEXT NOT NULL DEFAULT '',
    created_utc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS budget (
    dataset TEXT PRIMARY KEY,
    epsilon_max REAL NOT NULL,
    delta REAL NOT NULL,
    accountant TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class Budget:
    """A site's total privacy budget for one dataset: (ε_max, δ), checked with ``accountant``."""

    epsilon_max: float
    delta: float
    accountant: str = "pld"

    def __post_init__(self) -> None:
        if not self.epsilon_max > 0:
            raise ValueError(f"epsilon_max must be > 0, found {self.epsilon_max}")
        if not 0 < self.delta < 1:
            raise ValueError(f"budget delta must be in (0, 1), found {self.delta}")
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"unknown accountant {self.accountant!r}; known accountants are {list(ACCOUNTANTS)}")


@dataclass(frozen=True)
class ChargeRecord:
    """One ledger row. ``epsilon_rdp``/``epsilon_pld`` are the *cumulative* ε after this charge."""

    id: int
    dataset: str
    round: int
    protocol: str
    spec_hash: str
    mechanism: str
    event: dp_event.DpEvent
    delta: float
    epsilon_rdp: float
    epsilon_pld: float
    superseded_by: int | None
    note: str
    created_utc: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "dataset": self.dataset, "round": self.round, "protocol": self.protocol,
            "spec_hash": self.spec_hash, "mechanism": self.mechanism, "event": event_to_json(self.event),
            "delta": self.delta, "epsilon_rdp": self.epsilon_rdp, "epsilon_pld": self.epsilon_pld,
            "superseded_by": self.superseded_by, "note": self.note, "created_utc": self.created_utc,
        }


class PrivacyLedger:
    """The privacy ledger of one dataset held by one site.

    ``budget`` (optional) is stored in the file on first use; reopening the ledger with a
    different budget is refused, so a restart cannot silently raise the limit.
    """

    #: rounds whose charges in the file come from an attempt that crashed before the round finished.
    #: Set only when a simulated run is resumed (``secure-fl run --resume``): charging such a round again
    #: supersedes those charges (kept in the file, marked ``superseded_by``) instead of adding a second one.
    redo_rounds: frozenset[int] = frozenset()

    def __init__(self, path: str | Path, dataset: str, budget: Budget | None = None) -> None:
        if not dataset:
            raise ValueError("ledger dataset name must be a non-empty string")
        self.path = Path(path)
        self.dataset = dataset
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.executescript(_SCHEMA)
            row = db.execute(
                "SELECT epsilon_max, delta, accountant FROM budget WHERE dataset = ?", (dataset,)
            ).fetchone()
            if row is not None:
                stored = Budget(*row)
                if budget is not None and budget != stored:
                    raise ValueError(
                        f"{self.path}: ledger of {dataset!r} already has budget {stored}; refusing to change it "
                        f"to {budget}"
                    )
                budget = stored
            elif budget is not None:
                db.execute(
                    "INSERT INTO budget (dataset, epsilon_max, delta, accountant) VALUES (?, ?, ?, ?)",
                    (dataset, budget.epsilon_max, budget.delta, budget.accountant),
                )
        self.budget = budget

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            with db:  # commits on success, rolls back on error
                yield db
        finally:
            db.close()

    # -- reading -------------------------------------------------------------------------------

    @staticmethod
    def datasets(path: str | Path) -> list[str]:
        """Names of the datasets with a budget or a charge in the ledger file at ``path`` (read only)."""
        db = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True)
        try:
            rows = db.execute(
                "SELECT dataset FROM charges UNION SELECT dataset FROM budget ORDER BY dataset"
            ).fetchall()
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{path}: not a secure-fl privacy ledger ({exc})") from exc
        finally:
            db.close()
        return [r[0] for r in rows]

    def records(self, include_superseded: bool = False) -> list[ChargeRecord]:
        query = "SELECT * FROM charges WHERE dataset = ?" + ("" if include_superseded else " AND superseded_by IS NULL")
        with self._db() as db:
            rows = db.execute(query + " ORDER BY id", (self.dataset,)).fetchall()
        return [
            ChargeRecord(
                r[0], r[1], r[2], r[3], r[4], r[5], event_from_json(r[6]), r[7], r[8], r[9], r[10], r[11], r[12]
            )
            for r in rows
        ]

    def events(self) -> list[dp_event.DpEvent]:
        return [r.event for r in self.records()]

    def spent(self, delta: float) -> dict[str, float]:
        """Total ε at ``delta`` of every charge in force, by the RDP and PLD accountants."""
        total = compose(self.events())
        if isinstance(total, dp_event.NoOpDpEvent):
            return {"rdp": 0.0, "pld": 0.0}
        return {name: epsilon(total, delta, name) for name in ACCOUNTANTS}

    def would_spend(
        self, event: dp_event.DpEvent, delta: float, *, replacing_round: int | None = None
    ) -> dict[str, float]:
        """Total ε if ``event`` were charged now (optionally in place of a round's current charge)."""
        kept = [r.event for r in self.records() if replacing_round is None or r.round != replacing_round]
        return {name: epsilon(compose([*kept, event]), delta, name) for name in ACCOUNTANTS}

    # -- writing -------------------------------------------------------------------------------

    def check(self, event: dp_event.DpEvent, round: int, *, replacing_round: int | None = None) -> dict[str, float]:
        """Raise :class:`SiteRejected` if charging ``event`` would exceed the budget; return the new totals
        (ε by each accountant at the budget's δ; empty without a budget)."""
        if self.budget is None:
            return {}
        after = self.would_spend(event, self.budget.delta, replacing_round=replacing_round)
        self._refuse_over_budget(after, round)
        return after

    def _refuse_over_budget(self, after: dict[str, float], round: int) -> None:
        if self.budget is None:
            return
        limit, name = self.budget.epsilon_max, self.budget.accountant
        if after[name] > limit:
            before = self.spent(self.budget.delta)[name]
            raise SiteRejected(
                self.dataset,
                f"privacy budget exhausted: spent ε={before:.4f} of ε_max={limit:g} (δ={self.budget.delta:g}, "
                f"{name.upper()}); round {round} would cost ε={after[name] - before:.4f} more and bring it to "
                f"ε={after[name]:.4f}",
            )

    def charge(
        self,
        round: int,
        event: dp_event.DpEvent,
        delta: float,
        *,
        protocol: str,
        spec_hash: str,
        mechanism: str,
        note: str = "",
    ) -> ChargeRecord:
        """Check the budget, then write and commit the charge; return the row (cumulative ε in it).

        A round in :attr:`redo_rounds` that already has a charge in force is charged in place of it.
        """
        if round in self.redo_rounds and any(r.round == round for r in self.records()):
            note = note or f"round {round} re-run after a crash (resume): replaces the unfinished attempt's charge"
            return self._write(round, event, delta, protocol, spec_hash, mechanism, note, supersede_round=round)
        return self._write(round, event, delta, protocol, spec_hash, mechanism, note, supersede_round=None)

    def amend(
        self,
        round: int,
        event: dp_event.DpEvent,
        delta: float,
        *,
        protocol: str,
        spec_hash: str,
        mechanism: str,
        note: str,
    ) -> ChargeRecord:
        """Replace the charge(s) of ``round`` by ``event`` (e.g. weaker noise than planned was obtained).

        The old rows stay in the file, marked ``superseded_by`` the new one, so the history shows both.
        """
        return self._write(round, event, delta, protocol, spec_hash, mechanism, note, supersede_round=round)

    def _write(
        self,
        round: int,
        event: dp_event.DpEvent,
        delta: float,
        protocol: str,
        spec_hash: str,
        mechanism: str,
        note: str,
        supersede_round: int | None,
    ) -> ChargeRecord:
        if not isinstance(event, dp_event.DpEvent):
            raise TypeError(f"a ledger charge must be a dp_accounting DpEvent, found {type(event).__name__}")
        if self.budget is not None and self.budget.delta != delta:
            self.check(event, round, replacing_round=supersede_round)
        totals = self.would_spend(event, delta, replacing_round=supersede_round)
        if self.budget is not None and self.budget.delta == delta:
            self._refuse_over_budget(totals, round)
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        with self._db() as db:
            cur = db.execute(
                "INSERT INTO charges (dataset, round, protocol, spec_hash, mechanism, event, delta, epsilon_rdp, "
                "epsilon_pld, note, created_utc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    self.dataset,
                    round,
                    protocol,
                    spec_hash,
                    mechanism,
                    event_to_json(event),
                    delta,
                    totals["rdp"],
                    totals["pld"],
                    note,
                    now,
                ),
            )
            new_id = int(cur.lastrowid or 0)
            if supersede_round is not None:
                db.execute(
                    "UPDATE charges SET superseded_by = ? WHERE dataset = ? AND round = ? AND id != ? AND "
                    "superseded_by IS NULL",
                    (new_id, self.dataset, supersede_round, new_id),
                )
        return next(r for r in self.records() if r.id == new_id)
