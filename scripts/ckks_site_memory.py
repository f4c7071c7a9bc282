"""Peak memory of one CKKS site's ``submit`` (scale, encrypt, frame its update), per update size.

    python scripts/ckks_site_memory.py --params 1000000 13000000 [--workers 1 2] [--repo PATH]

Each point runs in a fresh subprocess (peak RSS is a process-wide high-water mark): a ``compact``
CkksSum with public bounds (so ``submit`` is the site's first step), one site holding a float32
update of ``params`` values (as local training hands it over), then ``site.step("submit")``.
Printed: RSS before the step (update and keys in memory), the peak during it, what the step added
(peak - before), the payload it sent, and that addition as a multiple of the payload; with workers,
the largest peak RSS of a worker process. ``--repo`` measures another checkout's code (e.g. main,
for a before/after comparison); ``SECURE_FL_CKKS_WORKERS`` is set per point from ``--workers``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _status_kb(pid: int | str, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def point(params: int) -> dict[str, float]:
    import numpy as np

    from secure_fl.engine.memory import peak_rss_bytes
    from secure_fl.protocol.ckks import SUBMIT, CkksSum

    proto = CkksSum(preset="compact", bounds="public", value_bound=1.0, weight_bound=100.0)
    proto.setup(["a", "b", "c"], params)
    values = np.random.default_rng(0).random(params, dtype=np.float32)  # no float64 intermediate
    values -= 0.5
    values *= 0.02
    site = proto.site("a", 0, values, 10.0)
    del values
    before = _status_kb("self", "VmRSS") / 1024
    high_before = peak_rss_bytes() / 2**20
    out = site.step(SUBMIT, [])
    peak = peak_rss_bytes() / 2**20
    payload = len(out[0].payload) / 2**20
    worker_mb = 0.0
    try:
        from secure_fl.crypto import ckks_pool

        for pool in ckks_pool._POOLS.values():
            for pid in pool.pids():
                worker_mb = max(worker_mb, _status_kb(pid, "VmHWM") / 1024)
    except ImportError:  # a checkout without the pool
        pass
    return {
        "params": params, "before_mb": before, "high_before_mb": high_before, "peak_mb": peak,
        "added_mb": peak - before, "payload_mb": payload, "added_x_payload": (peak - before) / payload,
        "worker_peak_mb": worker_mb,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=int, nargs="+", default=[1_000_000, 13_000_000])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repo", type=Path, default=REPO, help="checkout whose secure_fl is measured")
    ap.add_argument("--point", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.point is not None:
        sys.path.insert(0, str(args.repo))
        print(json.dumps(point(args.point)))
        return
    print(f"code: {args.repo}")
    print("| params | workers | RSS before MB | peak MB | added MB | payload MB | added / payload | worker peak MB |")
    print("|---|---|---|---|---|---|---|---|")
    for params in args.params:
        for w in args.workers:
            env = {**os.environ, "SECURE_FL_CKKS_WORKERS": str(w)}
            cmd = [sys.executable, __file__, "--point", str(params), "--repo", str(args.repo)]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(f"| {params:,} | {w} | failed: {done.stderr.strip().splitlines()[-1:]} |")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            print(
                f"| {params:,} | {w} | {r['before_mb']:.0f} | {r['peak_mb']:.0f} | {r['added_mb']:.0f} | "
                f"{r['payload_mb']:.0f} | {r['added_x_payload']:.2f} | {r['worker_peak_mb']:.0f} |"
            )


if __name__ == "__main__":
    main()
