"""``secure-fl ledger SITE_DIR``: a site's privacy spend over time, from its SQLite ledger.

``SITE_DIR`` is a site folder holding ``ledger.sqlite`` (``runs/RUN/sites/SITE``), a run folder
(every site under ``sites/``), or the ledger file itself. Each row is one charge, written
before that round's update left the site: the DpEvent, and the cumulative ε by the RDP and
PLD accountants of ``dp_accounting`` (recomputed at ``--delta`` if given).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import DataError

__all__ = ["add_parser", "cmd_ledger", "find_ledgers", "ledger_rows"]

LEDGER_FILE = "ledger.sqlite"


def find_ledgers(path: Path) -> list[Path]:
    """The ledger files under ``path`` (a ledger file, a site folder or a run folder)."""
    if path.is_file():
        return [path]
    if (path / LEDGER_FILE).is_file():
        return [path / LEDGER_FILE]
    found = sorted((path / "sites").glob(f"*/{LEDGER_FILE}")) if (path / "sites").is_dir() else []
    if not found:
        raise DataError(
            f"{path}: no privacy ledger here; expected {path / LEDGER_FILE} (a site folder) or "
            f"{path / 'sites' / 'SITE' / LEDGER_FILE} (a run folder)"
        )
    return found


def ledger_rows(
    file: Path, delta: float | None = None, include_superseded: bool = False, opacus: bool = False
) -> list[dict[str, Any]]:
    """One dict per charge of every dataset in ``file``; ε recomputed at ``delta`` when given;
    with ``opacus``, also ε of the same history by Opacus's RDP and PRV accountants."""
    from ..privacy.accounting import compose, describe_event, epsilons, opacus_epsilons
    from ..privacy.ledger import PrivacyLedger

    try:
        datasets = PrivacyLedger.datasets(file)
    except ValueError as exc:
        raise DataError(str(exc)) from exc
    out: list[dict[str, Any]] = []
    for name in datasets:
        ledger = PrivacyLedger(file, name)
        in_force: list[Any] = []
        for rec in ledger.records(include_superseded=include_superseded):
            row = rec.as_dict()
            row["event_text"] = describe_event(rec.event)
            row["budget"] = (
                None
                if ledger.budget is None
                else {"epsilon_max": ledger.budget.epsilon_max, "delta": ledger.budget.delta}
            )
            if rec.superseded_by is None:
                in_force.append(rec.event)
                if delta is not None:
                    eps = epsilons(compose(in_force), delta)
                    row.update({"delta": delta, "epsilon_rdp": eps["rdp"], "epsilon_pld": eps["pld"]})
                if opacus:
                    row.update(opacus_epsilons(compose(in_force), row["delta"]) or {})
            out.append(row)
    return out


def cmd_ledger(args: argparse.Namespace) -> int:
    rows = [r for f in find_ledgers(Path(args.site_dir)) for r in ledger_rows(f, args.delta, args.all, args.opacus)]
    if args.json:
        for r in rows:
            print(json.dumps(r, sort_keys=True))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 150))
    if not rows:
        console.print(f"{args.site_dir}: the ledger has no charges yet")
        return 0
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == dataset]
        budget = mine[0]["budget"]
        specs = ", ".join(dict.fromkeys(f"{r['protocol']} (spec {r['spec_hash']})" for r in mine))
        title = f"site {dataset}: " + (
            f"budget ε_max={budget['epsilon_max']:g} at δ={budget['delta']:g}" if budget else "no budget"
        )
        title += f"; {specs}"
        table = Table(title=title, title_justify="left")
        extra = ("ε Opacus RDP", "ε Opacus PRV") if args.opacus else ()
        for h in (
            "round",
            "mechanism",
            "event",
            "δ",
            "ε total (RDP)",
            "ε total (PLD)",
            *extra,
            "charged (UTC)",
            "note",
        ):
            table.add_column(h, justify="right" if h.startswith(("ε", "round", "δ")) else "left", no_wrap=h == "event")
        for r in mine:
            style = "dim strike" if r["superseded_by"] is not None else None
            table.add_row(
                str(r["round"]),
                r["mechanism"],
                r["event_text"],
                f"{r['delta']:g}",
                f"{r['epsilon_rdp']:.4f}",
                f"{r['epsilon_pld']:.4f}",
                *([f"{r[k]:.4f}" if k in r else "–" for k in ("opacus_rdp", "opacus_prv")] if args.opacus else []),
                r["created_utc"][:19],
                r["note"],
                style=style,
            )
        console.print(table)
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``ledger SITE_DIR`` to the ``secure-fl`` sub-commands."""
    p = subparsers.add_parser("ledger", help="a site's privacy spend over time (its SQLite ledger)")
    p.add_argument("site_dir", help="site folder with ledger.sqlite (runs/RUN/sites/SITE), a run folder, or the file")
    p.add_argument("--delta", type=float, help="recompute the cumulative ε at this δ (default: the δ of each charge)")
    p.add_argument("--all", action="store_true", help="also show charges superseded by a weaker-noise amendment")
    p.add_argument("--json", action="store_true", help="one JSON object per charge instead of a table")
    p.add_argument(
        "--opacus", action="store_true", help="also ε of the same history by Opacus's RDP and PRV accountants"
    )
    p.set_defaults(func=cmd_ledger)
    return p
