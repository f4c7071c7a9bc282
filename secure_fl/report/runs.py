"""A run folder loaded for a report.

The files are read by :mod:`secure_fl.run.records` (the one reader of run folders: torn last
lines skipped, ``latest`` pointers followed); this module gathers what a report needs into a
:class:`RunData` and never fails on what a run did not leave: a missing or torn file reads as
empty (the report says "not recorded"), unknown keys are ignored. Two layouts are understood:
``runs/<experiment>/<variant>/seed<k>/`` and ``runs/<experiment>/<run-id>/<variant>/seed<k>/``
(with a ``latest`` pointer and a run-level ``resolved.json``).
"""

from __future__ import annotations

import re
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..run.records import find_runs, read_json, read_jsonl, read_rounds, resolve_folder

__all__ = ["RunData", "find_runs", "resolve_folder", "load_run", "read_json", "read_jsonl", "ledger_history",
           "site_sizes"]


def ledger_history(db: Path) -> dict[str, Any]:
    """Cumulative ε after each charge of a ledger file (read only), and its budget; ``{}`` if unreadable."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    except sqlite3.Error:
        return {}
    try:
        rows = con.execute("SELECT round, epsilon_rdp, epsilon_pld, delta, note FROM charges "
                           "WHERE superseded_by IS NULL ORDER BY id").fetchall()
        budget = con.execute("SELECT epsilon_max, delta, accountant FROM budget").fetchone()
    except sqlite3.Error:
        return {}
    finally:
        con.close()
    return {
        "charges": [{"round": r[0], "epsilon_rdp": r[1], "epsilon_pld": r[2], "delta": r[3], "note": r[4]}
                    for r in rows],
        "budget": {"epsilon_max": budget[0], "delta": budget[1], "accountant": budget[2]} if budget else None,
    }


_SIZES = re.compile(r"([\w.-]+): (\d+)/(\d+)")


def site_sizes(resolved: dict[str, Any], run_level: dict[str, Any]) -> dict[str, int]:
    """Training examples per site: from the run-level data digests, else from the task description."""
    data = run_level.get("data")
    if isinstance(data, dict):
        sizes = {s: int(v["n_train"]) for s, v in data.items() if isinstance(v, dict) and "n_train" in v}
        if sizes:
            return sizes
    task = resolved.get("task")
    if isinstance(task, str):
        return {m.group(1): int(m.group(2)) for m in _SIZES.finditer(task.split("(", 1)[-1])}
    return {}


@dataclass
class RunData:
    path: Path
    label: str
    variant: str
    seed: Any
    resolved: dict[str, Any]
    run_level: dict[str, Any]
    summary: dict[str, Any]
    rounds: list[dict[str, Any]]
    view_counts: dict[str, Counter[str]] = field(default_factory=dict)  # kind -> Counter of stages
    view_bytes: Counter[str] = field(default_factory=Counter)  # kind -> bytes
    ledgers: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def protocol(self) -> dict[str, Any] | None:
        p = self.resolved.get("protocol")
        return p if isinstance(p, dict) else None

    @property
    def experiment(self) -> dict[str, Any]:
        e = self.resolved.get("experiment") or self.run_level.get("experiment") or {}
        return e if isinstance(e, dict) else {}

    def exp_value(self, table: str | None, key: str, default: Any) -> Any:
        """A value of the experiment spec as run (``resolved.json``), tolerant of both layouts."""
        e = self.experiment
        raw = e.get("raw")
        for node in (e, raw if isinstance(raw, dict) else {}):
            t = node.get(table) if table else node
            if isinstance(t, dict) and key in t:
                return t[key]
        return default


def load_run(path: Path) -> RunData:
    path = Path(path)
    resolved = read_json(path / "resolved.json")
    run_level: dict[str, Any] = {}
    for parent in (path.parent.parent, path.parent):
        level = read_json(parent / "resolved.json")
        if "data" in level or "environment" in level:
            run_level = level
    summary = read_json(path / "summary.json")
    variant = str(resolved.get("variant") or summary.get("variant") or path.parent.name)
    seed = resolved.get("seed", summary.get("seed", path.name))
    run = RunData(path, f"{variant} seed {seed}", variant, seed, resolved, run_level, summary,
                  read_rounds(path))
    for v in read_jsonl(path / "views.jsonl"):
        kind = str(v.get("kind", "?"))
        run.view_counts.setdefault(kind, Counter())[str(v.get("stage", "?"))] += 1
        run.view_bytes[kind] += int(v.get("nbytes", 0) or 0)
    for db in sorted(path.glob("sites/*/ledger.sqlite")):
        hist = ledger_history(db)
        if hist:
            run.ledgers[db.parent.name] = hist
    return run
