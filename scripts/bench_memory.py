"""Peak memory and time of one secure-sum round in process, against sites x parameters.

    python scripts/bench_memory.py --sites 4 16 64 --params 100000 1000000 [--protocol ckks-fedavg]

Each point runs in a fresh subprocess (peak RSS is a process-wide high-water mark): it builds
the protocol from its spec in ``protocols/``, gives every site a synthetic float32 update of
``params`` values (as local training hands it over: :func:`secure_fl.training.flat.flatten`
returns float32), runs one round through the real parties and the in-process carrier
(:func:`secure_fl.engine.local.drive_round`) and reports:

* ``peak_mb``: peak resident set size of the whole process (``getrusage`` ``ru_maxrss``);
* ``base_mb``: RSS after imports and key setup, before any update exists;
* ``inputs_mb``: the sites' updates themselves (``sites x params x 4`` bytes), which the caller
  of the in-process engine holds (in a deployment each site holds only its own);
* ``round_mb = peak - base - inputs``: what the secure sum and the carrier add;
* ``seconds`` (all sites one after another; ``cpu_seconds``: the CPU time of the same, steadier on a
  shared machine), ``seconds_sites_parallel`` (the slowest site of each
  site stage plus the aggregator, as in a deployment), ``site_s_per_1M`` (that slowest site's
  seconds per million parameters), ``aggregator_s``; ``site_cpu_s_per_1M`` and ``aggregator_cpu_s``:
  the same as CPU time of the parties' steps (the portable number on a shared machine);
  ``cpu_seconds`` counts this process and its CKKS worker processes (``SECURE_FL_CKKS_WORKERS``; the
  per-party CPU counts this process only; ``peak_mb`` is this process only, each worker adds ~50 MB);
* ``up_B_per_param`` / ``down_B_per_param``: bytes one site sends / receives per parameter.

``--lazy`` creates each site's update only when the carrier first asks for it (a mapping that
draws it on access), so nothing but the protocol holds the inputs. ``--json`` prints one JSON
line per point instead of the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's package, whatever is installed


class LazyInputs(Mapping[str, tuple[np.ndarray, float]]):
    """Site updates drawn on access from a per-site seed (nothing held between accesses)."""

    def __init__(self, names: list[str], params: int) -> None:
        self._names, self._params = names, params

    def __getitem__(self, name: str) -> tuple[np.ndarray, float]:
        i = self._names.index(name)
        rng = np.random.default_rng(i)
        return rng.uniform(-0.01, 0.01, size=self._params).astype(np.float32), float(10 + i)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def _party_cpu() -> float:
    """CPU seconds of this process plus its CKKS worker processes (chunks run there for large updates)."""
    from secure_fl.crypto.ckks_pool import worker_cpu_seconds

    return time.process_time() + worker_cpu_seconds()


def _rss_mb() -> float:
    from secure_fl.engine.memory import peak_rss_bytes

    return peak_rss_bytes() / 2**20


class _Timed:
    """A party whose ``step`` (and ``receive``) add their CPU seconds to ``cpu[name]``; everything else is the party's.

    A proxy, not a patched method: ``party.step = wrapper(party.step)`` would make a reference cycle (party ->
    wrapper -> bound method -> party) that keeps each finished site, and the sum it decrypted, alive until the
    garbage collector runs, which inflated the peak by one decrypted sum per site."""

    def __init__(self, party: Any, name: str, cpu: dict[str, float]) -> None:
        self._party, self._name, self._cpu = party, name, cpu

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._party, attr)

    def _timed(self, fn: Callable[..., Any], *args: Any) -> Any:
        t = _party_cpu()
        try:
            return fn(*args)
        finally:
            self._cpu[self._name] = self._cpu.get(self._name, 0.0) + _party_cpu() - t

    def step(self, *args: Any) -> Any:
        return self._timed(self._party.step, *args)

    def receive(self, *args: Any) -> Any:
        return self._timed(self._party.receive, *args)


def _cpu_meter(proto: Any) -> dict[str, float]:
    """Count the CPU seconds of every party's steps (sites by name, the aggregator's steps and receives under
    ``"aggregator"``): steadier than wall-clock time on a shared machine. Wraps the protocol's party factories."""
    cpu: dict[str, float] = {}
    make_site, make_aggregator = proto.site, proto.aggregator

    def site(site_id: str, *args: Any) -> Any:
        return _Timed(make_site(site_id, *args), site_id, cpu)

    def aggregator(*args: Any) -> Any:
        return _Timed(make_aggregator(*args), "aggregator", cpu)

    proto.site, proto.aggregator = site, aggregator
    return cpu


def point(protocol: str, sites: int, params: int, lazy: bool) -> dict[str, object]:
    """One round in this process; returns the measurements."""
    from secure_fl.engine.local import drive_round
    from secure_fl.protocol.spec import load_protocol

    names = [f"site-{i:03d}" for i in range(sites)]
    proto = load_protocol(protocol).build_secure_sum()
    proto.setup(names, params)
    cpu_by_party = _cpu_meter(proto)
    base = _rss_mb()
    inputs: Mapping[str, tuple[np.ndarray, float]]
    inputs = LazyInputs(names, params) if lazy else {n: LazyInputs(names, params)[n] for n in names}
    t0, cpu0 = time.perf_counter(), _party_cpu()
    out = drive_round(proto, 0, inputs, params)
    seconds, cpu = time.perf_counter() - t0, _party_cpu() - cpu0
    if out.aborted or out.result is None:
        raise SystemExit(f"round aborted: {out.aborted} (dropped: {out.dropped})")
    expected = sum(float(10 + i) for i in range(sites))
    if abs(out.result.weight - expected) > 1e-3 * expected:
        raise SystemExit(f"wrong released weight {out.result.weight}, expected {expected}")
    peak = _rss_mb()
    inputs_mb = 0.0 if lazy else sites * params * 4 / 2**20
    up = float(np.mean([out.bytes_up[s] for s in names]))
    down = float(np.mean([out.bytes_down[s] for s in names]))
    actors = {st.name: st.actor for st in proto.stages}
    site_s = sum(t for name, t in out.stage_critical_seconds.items() if actors[name] == "sites")
    agg_s = sum(t for name, t in out.stage_critical_seconds.items() if actors[name] == "aggregator")
    return {
        "protocol": protocol, "sites": sites, "params": params, "lazy": lazy,
        "peak_mb": round(peak, 1), "base_mb": round(base, 1), "inputs_mb": round(inputs_mb, 1),
        "round_mb": round(peak - base - inputs_mb, 1), "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2),
        # with the sites in parallel (as deployed): the slowest site per site stage, plus the aggregator
        "seconds_sites_parallel": round(site_s + agg_s, 2),
        "site_s_per_1M": round(site_s / params * 1e6, 3), "aggregator_s": round(agg_s, 2),
        "up_B_per_param": round(up / params, 3), "down_B_per_param": round(down / params, 3),
        "stage_seconds": {k: round(v, 2) for k, v in out.stage_seconds.items()},
        # CPU seconds of the busiest site's steps per million parameters, and of the aggregator
        "site_cpu_s_per_1M": round(max(v for k, v in cpu_by_party.items() if k != "aggregator") / params * 1e6, 3),
        "aggregator_cpu_s": round(cpu_by_party.get("aggregator", 0.0), 2),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--protocol", default="ckks-fedavg")
    ap.add_argument("--sites", type=int, nargs="+", default=[4, 16, 64])
    ap.add_argument("--params", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--lazy", action="store_true", help="draw each site's update only when the carrier asks for it")
    ap.add_argument("--json", action="store_true", help="one JSON line per point instead of a table")
    ap.add_argument("--point", action="store_true", help=argparse.SUPPRESS)  # run one point here
    args = ap.parse_args(argv)
    if args.point:
        print(json.dumps(point(args.protocol, args.sites[0], args.params[0], args.lazy)))
        return
    if not args.json:
        print("| protocol | sites | params | peak RSS MB | base MB | inputs MB | round MB | s | up B/param |")
        print("|---|---|---|---|---|---|---|---|---|")
    for n in args.params:
        for s in args.sites:
            cmd = [sys.executable, __file__, "--point", "--protocol", args.protocol,
                   "--sites", str(s), "--params", str(n)] + (["--lazy"] if args.lazy else [])
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
            if proc.returncode != 0:
                print(f"point sites={s} params={n} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            if args.json:
                print(json.dumps(r), flush=True)
            else:
                print(f"| {r['protocol']}{' (lazy)' if r['lazy'] else ''} | {s} | {n:,} | {r['peak_mb']:.0f} | "
                      f"{r['base_mb']:.0f} | {r['inputs_mb']:.0f} | {r['round_mb']:.0f} | {r['seconds']:.1f} | "
                      f"{r['up_B_per_param']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
