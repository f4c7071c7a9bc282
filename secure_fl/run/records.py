"""The run folder: ``runs/<experiment>/<variant>/seed<k>/``.

``resolved.json`` (the spec as run), ``rounds.jsonl`` (one line per finished round, flushed at
once so a crashed run leaves what it finished readable), ``views.jsonl`` (what the aggregator
saw: stage, sender, kind, bytes), ``model.pt`` (final weights), ``summary.json`` (written last,
with ``status`` = finished | failed | interrupted), and ``sites/<site>/ledger.sqlite`` for DP
protocols: the simulated sites' privacy ledgers.

Running again into the same folder replaces the earlier run, its simulated ledgers included
(the same simulation run twice is not twice the spend of one deployment). A real site keeps
its ledger in its own directory, outside any run folder, where it accumulates for good.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = ["RunFolder", "read_rounds"]


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):
        return _clean(obj.item())
    return obj


class RunFolder:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        for name in ("rounds.jsonl", "views.jsonl", "summary.json", "error.txt", "model.pt"):
            (path / name).unlink(missing_ok=True)
        for ledger in path.glob("sites/*/ledger.sqlite*"):
            ledger.unlink()

    def write_json(self, name: str, data: Any) -> None:
        tmp = self.path / (name + ".tmp")
        tmp.write_text(json.dumps(_clean(data), indent=2, sort_keys=True, default=str))
        tmp.replace(self.path / name)

    def append(self, name: str, record: Any) -> None:
        with open(self.path / name, "a") as f:
            f.write(json.dumps(_clean(record), sort_keys=True, default=str) + "\n")
            f.flush()


def read_rounds(path: Path) -> list[dict[str, Any]]:
    """Rounds of a run folder; a torn last line (crash mid-write) is skipped."""
    out = []
    file = path / "rounds.jsonl"
    if not file.exists():
        return out
    for line in file.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out
