"""The headline figure and table: metric against ε per protocol, one panel per task, from sweep results.

Usage::

    python scripts/headline_figure.py \\
        --panel "faces: EfficientNet-Lite0 features + DP head" runs/faces-pretrained-dp/sweep \\
                runs/faces-pretrained-dp-distributed/sweep \\
        --panel "heart disease: 4 hospitals, equal noisy steps" runs/dp-heart-curve/sweep \\
        --out experiments/results/headline

Writes ``OUT.png`` (one panel per ``--panel``: mean over seeds, ±1 sd band, seeds as dots; a
protocol without ε is a dashed line) and ``OUT.md`` (per panel, the metric at each ε per
protocol as mean ± sd over seeds, with the number of seeds), and copies every input row into
``OUT.csv`` with a ``panel`` column. An input is a sweep's ``results.csv`` or a sweep folder, whose
finished cells (``cells/*/cell.json``) are read directly (e.g. while several processes still work
on it; a cell left over from an older configuration must be moved out of the folder first).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from secure_fl.report.sweep_figures import metric_figure  # noqa: E402

X = "privacy.target_epsilon"


def _rows(paths: list[Path]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for p in paths:
        if p.is_dir():
            for cell in sorted((p / "cells").glob("*/cell.json")):
                row = json.loads(cell.read_text())["row"]
                if row.get("status") == "finished":
                    rows.append({k: "" if v is None else v for k, v in row.items()})
            continue
        with p.open() as f:
            rows += [r for r in csv.DictReader(f) if r.get("status") == "finished"]
    return rows


def write_results(rows: list[dict[str, Any]], path: Path) -> None:
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, restval="")
        w.writeheader()
        w.writerows(rows)


def _mean_sd(vals: list[float]) -> str:
    vals = [v for v in vals if not math.isnan(v)]
    if not vals:
        return "–"
    m = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return f"{m:.3f} ± {sd:.3f} (n={len(vals)})"


def table(rows: list[dict[str, Any]], metric: str) -> list[str]:
    by: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    units: dict[str, str] = {}
    for r in rows:
        x = float(r[X]) if r.get(X, "") != "" else math.inf
        # other swept settings (e.g. privacy.unit = person) make their own row, as in the figure's legend
        extra = " ".join(f"{k.split('.')[-1]}={v}" for k, v in r.items() if "." in k and "/" not in k and k != X and v)
        label = f"{r['protocol']} {extra}".strip()
        by[label][x].append(float(r[metric]) if r.get(metric, "") != "" else math.nan)
        units.setdefault(label, r.get("adjacency", "") or "–")
    eps = sorted({x for d in by.values() for x in d if math.isfinite(x)})
    lines = ["| protocol | ε for | " + " | ".join(f"ε = {e:g}" for e in eps) + " | no DP |",
             "|---|---|" + "---|" * (len(eps) + 1)]
    for proto, d in by.items():
        cells = [_mean_sd(d[e]) if e in d else "–" for e in eps]
        lines.append(f"| {proto} | {units[proto]} | " + " | ".join(cells)
                     + f" | {_mean_sd(d[math.inf]) if math.inf in d else '–'} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--panel", nargs="+", action="append", required=True, metavar=("TITLE", "CSV"),
                    help="a panel title followed by the results.csv files of its sweeps (repeatable)")
    ap.add_argument("--out", type=Path, required=True, help="output stem: OUT.png, OUT.md, OUT.csv")
    ap.add_argument("--metric", action="append", help="metric per panel (default: each sweep's primary metric)")
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.panel), figsize=(6.2 * len(args.panel), 4.4), squeeze=False)
    md: list[str] = []
    everything: list[dict[str, Any]] = []
    for i, (ax, panel) in enumerate(zip(axes[0], args.panel)):
        title, paths = panel[0], [Path(p) for p in panel[1:]]
        rows = _rows(paths)
        if not rows:
            raise SystemExit(f"panel {title!r}: no finished rows in {[str(p) for p in paths]}")
        metric = args.metric[i] if args.metric and i < len(args.metric) else rows[0]["primary_metric"]
        metric_figure(rows, X, metric, args.out.with_suffix(".png"), title, ax=ax)
        md += [f"### {title} ({metric})", "", *table(rows, metric), ""]
        everything += [{"panel": title, **r} for r in rows]
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out.with_suffix(".png"), dpi=130)
    args.out.with_suffix(".md").write_text("\n".join(md))
    write_results(everything, args.out.with_suffix(".csv"))
    print("\n".join(md))
    print(f"wrote {args.out.with_suffix('.png')}, .md and .csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
