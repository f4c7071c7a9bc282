"""Prints the README table of whole-round costs: each protocol against plaintext FedAvg, same run.

    .venv/bin/python benchmarks/rounds_table.py [--rounds 5]

For each task, every protocol's ``Federation.round`` is timed ``--rounds`` times after one
warm-up round, interleaved (plain, ckks, secagg, ... then again) so machine noise hits all
alike; the table gives the median seconds, the ratio to plain FedAvg and the bytes per site.
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
    args = ap.parse_args()
    print("| task | protocol | median s/round | × plain | KB up/site | KB down/site | protocol stages s |")
    print("|---|---|---|---|---|---|---|")
    for task_key in args.tasks:
        with tempfile.TemporaryDirectory() as tmp:
            feds = {p: make_federation(task_key, p, Path(tmp) / p) for p in PROTOCOLS}
            times: dict[str, list[float]] = {p: [] for p in PROTOCOLS}
            last = {}
            stage = {p: [] for p in PROTOCOLS}
            for r in range(args.rounds + 1):
                for p, fed in feds.items():
                    t0 = time.perf_counter()
                    rec = fed.round(r)
                    dt = time.perf_counter() - t0
                    if r > 0:  # the first round is a warm-up
                        times[p].append(dt)
                        st = rec["stage_seconds"]
                        stage[p].append(sum(v for k, v in st.items() if k not in ("local_training", "evaluation", "release_and_server_step")))
                    last[p] = rec
            base = statistics.median(times["plain-fedavg"])
            for p in PROTOCOLS:
                med = statistics.median(times[p])
                print(
                    f"| {task_key} | {p} | {med:.3f} | {med / base:.2f} | {last[p]['bytes_up_per_site'] / 1024:.1f} "
                    f"| {last[p]['bytes_down_per_site'] / 1024:.1f} | {statistics.median(stage[p]):.3f} |"
                )


if __name__ == "__main__":
    main()
