"""Noise in one global step of local against distributed DP-SGD, from a covid-curve sweep's cells.

Both protocols take one noisy step per round. Local DP-SGD (Abadi et al. 2016, with Opacus) adds
N(0, (σ_j C)²) at site j to the sum of its clipped gradients and divides by its expected batch B;
FedAvg then weighs site j by n_j / N. Distributed DP-SGD (Kairouz, Liu, Steinke 2021, §3; shares
of :func:`secure_fl.privacy.mechanisms.share_std`) adds k shares of variance (σC)²/(m − 1) to
the secure sum of all sites' clipped gradients and divides by the expected batch q·N. Per
coordinate, in units of the step size times C::

    local        sqrt(Σ_j (n_j/N)² σ_j²) / B
    distributed  σ · sqrt(k / (m − 1)) / (q N)

With m equal sites, the same σ and q·N = m·B, the ratio is √m · sqrt((m − 1)/k) (√m when every
site must contribute and m − 1 ≈ k); skewed site sizes and per-site σ_j move it. Reads σ from
each cell's run summary and the site sizes from the task (needs the task's data package).

    PYTHONPATH=. python experiments/covid_noise.py runs/covid-curve/sweep --out experiments/results/covid-testing
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from secure_fl.run.experiment import load_experiment
from secure_fl.tasks.registry import build_task


def _sigma(summary: dict[str, Any]) -> dict[str, float]:
    return {s: float(v["noise_multiplier"]) for s, v in summary["epsilon"].items()}


def noise_rows(sweep: Path, experiment: str) -> list[dict[str, Any]]:
    exp = load_experiment(experiment)
    task = build_task(exp.task_name, exp.task_params)
    n = {s.name: s.n_train for s in task.sites}
    total = sum(n.values())
    specs = {v.spec.name: v.spec.raw for v in exp.variants if v.spec is not None}
    batch = exp.training.batch_size
    acc: dict[tuple[str, float], list[float]] = defaultdict(list)
    for cell in sorted((sweep / "cells").glob("*/cell.json")):
        row = json.loads(cell.read_text())["row"]
        proto, eps = row["protocol"], row.get("privacy.target_epsilon")
        summary_path = cell.parent / "run" / "summary.json"
        if eps in (None, "") or proto not in specs or not summary_path.exists():
            continue
        sig = _sigma(json.loads(summary_path.read_text()))
        priv = specs[proto]["privacy"]
        if priv.get("noise") == "local" and priv.get("mechanism") == "dp-sgd":
            std = math.sqrt(sum((n[s] / total) ** 2 * sig[s] ** 2 for s in n)) / batch
        elif priv.get("noise") == "distributed":
            k, m, q = len(n), int(priv["min_sites"]), float(priv["sample_rate"])
            std = max(sig.values()) * math.sqrt(k / (m - 1)) / (q * total)
        else:
            continue
        acc[(proto, float(eps))].append(std)
    return [
        {"protocol": p, "epsilon": e, "noise_std": sum(v) / len(v), "cells": len(v)}
        for (p, e), v in sorted(acc.items())
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", type=Path, help="the sweep folder (runs/covid-curve/sweep)")
    ap.add_argument("--experiment", default="experiments/covid-curve.toml")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    rows = noise_rows(args.sweep, args.experiment)
    local = {r["epsilon"]: r["noise_std"] for r in rows if r["protocol"] == "dp-sgd-local"}
    lines = ["| protocol | ε | noise std per coordinate (× lr·C) | local / this |", "|---|---|---|---|"]
    for r in rows:
        ratio = local.get(r["epsilon"], float("nan")) / r["noise_std"]
        lines.append(f"| {r['protocol']} | {r['epsilon']:g} | {r['noise_std']:.4f} | {ratio:.2f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "noise.md").write_text("\n".join(lines) + "\n")
    (args.out / "noise.json").write_text(json.dumps(rows, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
