"""Accuracy against ε per protocol, from a ``secure-fl compare`` run folder: a CSV and a PNG.

Usage::

    python scripts/privacy_curve.py runs/faces-pretrained-dp [more run folders] \
        --out experiments/results/faces-pretrained-dp \
        --metrics pooled/accuracy gallery/top1

Reads ``compare.json`` (one record per variant × seed), or the runs' ``*/seed*/summary.json``
when a comparison was split or cut short. Variants swept over
``privacy.target_epsilon`` are labelled ``name[target_epsilon=E]``; a variant with no privacy
(plain FedAvg, pooled, local-only) is drawn as a horizontal line (mean over seeds, band = ±1 sd).
Each DP curve shows the mean over seeds with a band of ±1 sd and the seeds as dots.
The CSV has one row per (protocol, ε, seed) with every requested metric and the ε actually spent.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from secure_fl.report.sweep_figures import mean_sd

_LABEL = re.compile(r"^(?P<name>.+)\[target_epsilon=(?P<eps>[0-9.eE+-]+)\]$")


def load_rows(run_dir: Path, metrics: list[str]) -> list[dict[str, Any]]:
    path = run_dir / "compare.json"
    if path.is_file():
        records = json.loads(path.read_text())
    else:  # a comparison cut short: the finished runs' own summaries
        records = [json.loads(p.read_text()) for p in sorted(run_dir.glob("*/seed*/summary.json"))]
        if not records:
            print(f"warning: {run_dir}: no compare.json and no finished run (*/seed*/summary.json)", file=sys.stderr)
    rows = []
    for rec in records:
        m = _LABEL.match(rec["variant"])
        spent = [v.get("epsilon") for v in rec.get("epsilon", {}).values() if isinstance(v, dict)]
        spent = [e for e in spent if isinstance(e, (int, float)) and not math.isnan(e)]
        row: dict[str, Any] = {
            "protocol": m["name"] if m else rec["variant"],
            "target_epsilon": float(m["eps"]) if m else math.inf,
            "seed": rec["seed"],
            "epsilon_spent_max": max(spent) if spent else "",
            "aborted_rounds": rec.get("aborted_rounds", 0),
        }
        for k in metrics:
            row[k] = rec["metrics"].get(k, float("nan"))
        rows.append(row)
    return rows


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def plot(rows: list[dict[str, Any]], metrics: list[str], path: Path, title: str, chance: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4.0), squeeze=False)
    protocols = list(dict.fromkeys(r["protocol"] for r in rows))
    colours = dict(zip(protocols, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3))
    finite = sorted({r["target_epsilon"] for r in rows if math.isfinite(r["target_epsilon"])})
    for ax, metric in zip(axes[0], metrics):
        for proto in protocols:
            mine = [r for r in rows if r["protocol"] == proto]
            by_eps: dict[float, list[float]] = defaultdict(list)
            for r in mine:
                by_eps[r["target_epsilon"]].append(float(r[metric]))
            if list(by_eps) == [math.inf]:
                mean, sd = mean_sd(by_eps[math.inf])
                ax.axhline(mean, color=colours[proto], ls="--", label=f"{proto} (no DP)")
                if sd > 0 and finite:
                    ax.axhspan(mean - sd, mean + sd, color=colours[proto], alpha=0.12)
                continue
            eps = sorted(e for e in by_eps if math.isfinite(e))
            stats = [mean_sd(by_eps[e]) for e in eps]
            means = [s[0] for s in stats]
            ax.plot(eps, means, "o-", color=colours[proto], label=proto)
            ax.fill_between(eps, [m - s for m, s in stats], [m + s for m, s in stats], color=colours[proto], alpha=0.18)
            for e in eps:
                ax.scatter([e] * len(by_eps[e]), by_eps[e], s=8, color=colours[proto], alpha=0.5)
        if chance is not None and metric == metrics[0]:  # chance of the first metric (top-1), not of top-5
            ax.axhline(chance, color="grey", lw=0.8, ls=":", label=f"chance ({chance:.3g})")
        ax.set_xscale("log", base=2)
        if finite:
            ax.set_xticks(finite, [f"{e:g}" for e in finite])
        ax.set_xlabel("target ε (δ = 1e-5, over all rounds)")
        ax.set_ylabel(metric)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "run_dirs",
        type=Path,
        nargs="+",
        help="the experiment's folder(s) under --out of secure-fl compare (several: runs split by --protocol)",
    )
    ap.add_argument("--out", type=Path, required=True, help="output stem: writes STEM.csv and STEM.png")
    ap.add_argument("--metrics", nargs="+", default=["pooled/accuracy"])
    ap.add_argument("--title", default="")
    ap.add_argument(
        "--chance", type=float, default=None, help="chance level of the first metric, e.g. 0.0333 for 30 classes"
    )
    args = ap.parse_args(argv)
    rows = [r for d in args.run_dirs for r in load_rows(d, args.metrics)]
    if not rows:
        raise SystemExit(f"no runs in {[str(d / 'compare.json') for d in args.run_dirs]}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(rows, args.out.with_suffix(".csv"))
    plot(rows, args.metrics, args.out.with_suffix(".png"), args.title or args.run_dirs[0].name, args.chance)
    print(f"wrote {args.out.with_suffix('.csv')} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
