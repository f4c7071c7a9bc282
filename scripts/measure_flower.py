"""Seconds per round and server round trips per round: Flower (real processes on loopback, TLS and
node authentication) against the local engine, per protocol, on heart-disease (4 hospitals).

    PYTHONPATH=. python scripts/measure_flower.py [--rounds 3] [--protocols plain-fedavg ckks-fedavg ...]

A protocol is a variant label of ``heart-protocols`` or ``EXPERIMENT:LABEL`` (the DP protocols come
from ``dp-heart``, e.g. ``dp-heart:dp-distributed-ckks[target_epsilon=4.0]``). The measurement
federation gives every site a large privacy budget (its ledger lives in its kit).

Prints a Markdown table. The Flower column is the mean wall-clock seconds of a round as the
aggregator sees it (rounds.jsonl ``seconds``); "site work" is the slowest site's own time inside
its ClientApp handlers for that round; the rest is Flower's transport and process start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from secure_fl.deploy.kit import load_kit  # noqa: E402
from secure_fl.deploy.provision import provision  # noqa: E402
from secure_fl.engine.flower.launch import (  # noqa: E402
    free_port,
    register_sites,
    start_superlink,
    start_supernode,
    stop_process_group,
    wait_for_port,
)
from secure_fl.run.experiment import load_experiment  # noqa: E402

HOSPITALS = {
    "cleveland": "Cleveland",
    "hungary": "Hungary",
    "va-long-beach": "VA Long Beach",
    "switzerland": "Switzerland",
}
ENV = {"PYTHONPATH": str(REPO), "SECURE_FL_THREADS": "1"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--protocols",
        nargs="+",
        default=[
            "plain-fedavg",
            "ckks-fedavg",
            "secagg-plus-fedavg",
            "dp-heart:dp-distributed-ckks[target_epsilon=4.0]",
        ],
    )
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="sfl-measure-"))
    port = free_port()
    lines = ['name = "measure"', f'address = "127.0.0.1:{port}"']
    lines += [f'[sites.{s}]\ndata = "{d}"\nbudget_epsilon = 1000.0\nbudget_delta = 1e-5' for s, d in HOSPITALS.items()]
    (root / "fed.toml").write_text("\n".join(lines) + "\n")
    provision(root / "fed.toml", root / "kits")
    agg = load_kit(root / "kits" / "aggregator")
    procs = []
    rows = []
    try:
        procs.append(start_superlink(agg, log=root / "superlink.log", env=ENV))
        wait_for_port("127.0.0.1", port, 90, procs[0])
        time.sleep(1)
        register_sites(agg, env=ENV)
        for s in HOSPITALS:
            kit = load_kit(root / "kits" / "sites" / s)
            for exp_name, label in map(_split, args.protocols):
                spec = next(v.spec for v in load_experiment(exp_name).variants if v.label == label)
                kit.approve(spec.spec_hash, spec.name, label)
            procs.append(start_supernode(kit, free_port(), log=root / f"{s}.log", env=ENV))
        for exp_name, p in map(_split, args.protocols):
            env = {**os.environ, **ENV}
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "secure_fl.cli",
                    "deploy",
                    "run",
                    exp_name,
                    "--federation",
                    str(root / "kits/aggregator"),
                    "--protocol",
                    p,
                    "--rounds",
                    str(args.rounds),
                    "--out",
                    str(root / "deployed"),
                ],
                env=env,
                cwd=REPO,
                check=True,
            )
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "secure_fl.cli",
                    "run",
                    exp_name,
                    "--protocol",
                    p,
                    "--rounds",
                    str(args.rounds),
                    "--seeds",
                    "0",
                    "--out",
                    str(root / "local"),
                    "--quiet",
                ],
                env=env,
                cwd=REPO,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            dep = _rounds(root / "deployed", p)
            loc = _rounds(root / "local", p)
            steady = [r["trips"] for r in dep[:-1]] or [dep[-1]["trips"]]
            site = np.mean([sum(v for k, v in r["stage_seconds"].items() if k.startswith("site:")) for r in dep])
            rows.append(
                (
                    p,
                    float(np.mean([r["seconds"] for r in loc])),
                    float(np.mean([r["seconds"] for r in dep])),
                    float(site),
                    int(np.median(steady)),
                    dep[-1]["trips"],
                )
            )
            print(rows[-1], flush=True)
    finally:
        for proc in reversed(procs):
            stop_process_group(proc)
    load = os.getloadavg()
    print(
        f"\nheart-disease, 4 hospitals, {args.rounds} rounds, seed 0; load average {load[0]:.1f} on {os.cpu_count()} CPUs"  # noqa: E501 (a table row or a translated phrase reads best whole)
    )
    print(
        "| protocol | local engine s/round | Flower s/round | of which site work | server round trips per round | last round (+ final evaluation) |"  # noqa: E501 (a table row or a translated phrase reads best whole)
    )
    print("|---|---:|---:|---:|---:|---:|")
    for p, lo, fl, sw, trips, last in rows:
        print(f"| {p} | {lo:.2f} | {fl:.1f} | {sw:.1f} | {trips} | {last} |")


def _split(entry: str) -> tuple[str, str]:
    exp_name, _, label = entry.rpartition(":")
    return exp_name or "heart-protocols", label


def _rounds(root: Path, label: str) -> list[dict]:
    """rounds.jsonl of the run of variant ``label`` (seed 0) under ``root`` (labels may hold '[', so no glob)."""
    for path in sorted(root.rglob("rounds.jsonl")):
        if path.parent.name == "seed0" and path.parent.parent.name == label:
            return [json.loads(line) for line in path.read_text().splitlines()]
    raise FileNotFoundError(f"no run of {label!r} under {root}")


if __name__ == "__main__":
    main()
