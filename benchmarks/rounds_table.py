"""Prints the README table of whole-round costs: each protocol against plaintext FedAvg, same run.

    .venv/bin/python benchmarks/rounds_table.py [--rounds 5]

For each task, every protocol's ``Federation.round`` is timed ``--rounds`` times after one
warm-up round, interleaved (plain, ckks, secagg, ... then again) so machine noise hits all
alike; the table gives the median seconds, the ratio to plain FedAvg and the bytes per site.
"in process" is the whole round with every site stepped one after the other on this machine;
"sites in parallel" counts only the slowest site of each site stage, as when each hospital
runs on its own machine (the aggregator's stages and the evaluation count in full).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_rounds import PROTOCOLS, TASKS, make_federation  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tasks", nargs="+", default=list(TASKS))
    ap.add_argument("--local-epochs", type=int, default=1)
    args = ap.parse_args()
    print(f"local epochs per round: {args.local_epochs}")
    print(
        "| task | protocol | s/round in process | × plain | s/round sites in parallel | × plain | KB up/site | KB down/site |"  # noqa: E501 (a table row or a translated phrase reads best whole)
    )
    print("|---|---|---|---|---|---|---|---|")
    for task_key in args.tasks:
        with tempfile.TemporaryDirectory() as tmp:
            feds = {p: make_federation(task_key, p, Path(tmp) / p, args.local_epochs) for p in PROTOCOLS}
            times: dict[str, list[float]] = {p: [] for p in PROTOCOLS}
            last = {}
            parallel: dict[str, list[float]] = {p: [] for p in PROTOCOLS}
            for r in range(args.rounds + 1):
                for p, fed in feds.items():
                    t0 = time.perf_counter()
                    rec = fed.round(r)
                    dt = time.perf_counter() - t0
                    if r > 0:  # the first round is a warm-up
                        times[p].append(dt)
                        parallel[p].append(rec["seconds_sites_parallel"])
                    last[p] = rec
            base = statistics.median(times["plain-fedavg"])
            base_par = statistics.median(parallel["plain-fedavg"])
            for p in PROTOCOLS:
                med, par = statistics.median(times[p]), statistics.median(parallel[p])
                print(
                    f"| {task_key} | {p} | {med:.3f} | {med / base:.2f} | {par:.3f} | {par / base_par:.2f} "
                    f"| {last[p]['bytes_up_per_site'] / 1024:.1f} | {last[p]['bytes_down_per_site'] / 1024:.1f} |"
                )


if __name__ == "__main__":
    main()
