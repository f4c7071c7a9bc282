"""Seconds, bytes and peak memory per round: Flower (real processes on loopback, TLS and node
authentication) against the local engine, per protocol, on any experiment's task and sites.

    PYTHONPATH=. python scripts/measure_flower.py [--experiment NAME_OR_TOML] [--rounds 3]
        [--protocols plain-fedavg ckks-fedavg ...] [--task KEY=VALUE ...] [--no-local] [--json FILE]

``--experiment`` (default ``heart-protocols``: the four heart-disease hospitals) gives the task, the
training and the sites: the measurement federation has one site per task site (named by
``secure_fl.deploy.provision.site_names``, e.g. "VA Long Beach" -> ``va-long-beach``), each with a
large privacy budget (its ledger lives in its kit). ``--task KEY=VALUE`` overrides a ``[task]`` key
(VALUE in TOML, e.g. ``--task 'image_size=[32, 26]'``); the patched experiment is written to the
measurement folder and both engines run it. A protocol is a variant label of the experiment or
``EXPERIMENT:LABEL`` of another one on the same task (e.g.
``dp-heart:dp-distributed-ckks[target_epsilon=4.0]``); the default is every protocol the experiment
lists (for ``heart-protocols``: plain, CKKS, SecAgg+ and distributed-noise CKKS, as before).

Prints a Markdown table, per protocol:

- local s/round: the local engine (every party in one process), mean rounds.jsonl ``seconds``;
  local peak MB: that process's peak resident set size (``wait4``'s ``ru_maxrss``);
- Flower s/round: mean wall-clock seconds of a round as the aggregator sees it; "site work": the
  slowest site's own time inside its ClientApp handlers; the rest is transport and process start-up;
- MB up / down per site per round: rounds.jsonl ``bytes_up_per_site`` / ``bytes_down_per_site``
  (a site's messages to the aggregator; the aggregator's to it, the broadcast model included);
- peak MB aggregator / site: the ServerApp process's ``ru_maxrss`` and the largest ClientApp
  process's over every trip of every round (rounds.jsonl ``peak_rss_bytes``); high-water marks of
  whole processes (Python, torch and the task's data included);
- peak MB SuperLink / largest SuperNode: the Flower processes that carry the messages (the SuperLink
  holds every message of a trip in memory: see the comment where it starts), ``VmHWM`` of
  ``/proc/PID/status``, reset before each protocol (``/proc/PID/clear_refs``; Linux);
- round trips per round (steady rounds) and of the last round (+ the final evaluation).

MB everywhere here is 2**20 bytes. With ``--task`` the patched copy lives in the measurement folder, so
a task that reads files by relative path (csv, image-folder) needs absolute paths in its experiment.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import tomllib

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from secure_fl.deploy.kit import load_kit  # noqa: E402
from secure_fl.deploy.provision import federation_toml, provision, site_names  # noqa: E402
from secure_fl.engine.flower.launch import (  # noqa: E402
    free_port,
    register_sites,
    start_superlink,
    start_supernode,
    stop_process_group,
    wait_for_port,
)
from secure_fl.errors import SpecError  # noqa: E402
from secure_fl.run.experiment import load_experiment, parse_experiment  # noqa: E402
from secure_fl.tasks.registry import build_task  # noqa: E402

# every site of the measurement shares this host: one CKKS worker each unless $SECURE_FL_CKKS_WORKERS says otherwise
# (a site on its own machine uses its cores)
ENV = {"PYTHONPATH": str(REPO), "SECURE_FL_THREADS": "1",
       "SECURE_FL_CKKS_WORKERS": os.environ.get("SECURE_FL_CKKS_WORKERS", "1")}
HEART_DEFAULT = [
    "plain-fedavg", "ckks-fedavg", "secagg-plus-fedavg", "dp-heart:dp-distributed-ckks[target_epsilon=4.0]",
]
MB = 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiment", default="heart-protocols", help="experiment name or TOML file")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--protocols", nargs="+", default=None, help="labels of the experiment, or EXPERIMENT:LABEL")
    ap.add_argument("--task", action="append", default=[], metavar="KEY=VALUE", help="override a [task] key")
    ap.add_argument("--no-local", action="store_true", help="skip the local engine's runs")
    ap.add_argument("--stage-timeout", type=float, default=1800.0, help="seconds a trip may take (deploy run)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="sfl-measure-"))
    exp_path = _experiment_file(args.experiment, args.task, root)
    exp = load_experiment(exp_path)
    protocols = args.protocols or (
        HEART_DEFAULT if exp.name == "heart-protocols" else [v.label for v in exp.variants if v.spec is not None])
    entries = [_split(p, str(exp_path)) for p in protocols]
    specs = {e: _spec(*e) for e in entries}
    task = build_task(exp.task_name, exp.task_params)
    sites = site_names(s.name for s in task.sites)
    del task
    port = free_port()
    budget = {"budget_epsilon": 1000.0, "budget_delta": 1e-5}
    (root / "fed.toml").write_text(federation_toml("measure", f"127.0.0.1:{port}", sites, budget))
    provision(root / "fed.toml", root / "kits")
    agg = load_kit(root / "kits" / "aggregator")
    procs = []
    rows: list[dict[str, Any]] = []
    try:
        # the SuperLink keeps its state in memory: with its SQLite file, pushing four 11M-parameter replies at once
        # held the database past SQLite's 5 s busy timeout on a loaded 2-core machine, the ServerApp's heartbeat got
        # "database is locked" (HTTP 500) and the run died (Flower 1.40); `secure-fl aggregator start --no-database`
        procs.append(start_superlink(agg, database=False, log=root / "superlink.log", env=ENV))
        wait_for_port("127.0.0.1", port, 90, procs[0])
        time.sleep(1)
        register_sites(agg, env=ENV)
        for s in sites:
            kit = load_kit(root / "kits" / "sites" / s)
            for (_, label), spec in specs.items():
                kit.approve(spec.spec_hash, spec.name, label)
            procs.append(start_supernode(kit, free_port(), log=root / f"{s}.log", env=ENV))
        for exp_name, p in entries:
            env = {**os.environ, **ENV}
            for proc in procs:
                _reset_peak(proc.pid)
            common = [exp_name, "--protocol", p, "--rounds", str(args.rounds)]
            subprocess.run(
                [sys.executable, "-m", "secure_fl.cli", "deploy", "run", *common, "--federation",
                 str(root / "kits/aggregator"), "--out", str(root / "deployed"), "--stage-timeout",
                 str(args.stage_timeout)],
                env=env, cwd=REPO, check=True,
            )
            dep = _rounds(root / "deployed", p)
            row = _deployed_row(p, dep)
            row["superlink_peak_mb"] = _peak(procs[0].pid) / MB
            row["supernode_peak_mb"] = max(_peak(proc.pid) for proc in procs[1:]) / MB
            if not args.no_local:
                local_cmd = [sys.executable, "-m", "secure_fl.cli", "run", *common, "--seeds", "0", "--out",
                             str(root / "local"), "--quiet"]
                row["local_peak_mb"] = _run_peak(local_cmd, env) / MB
                row["local_s"] = float(np.mean([r["seconds"] for r in _rounds(root / "local", p)]))
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        for proc in reversed(procs):
            stop_process_group(proc)
    load = os.getloadavg()
    overrides = f" ({', '.join(args.task)})" if args.task else ""
    print(f"\n{exp.name}: task {exp.task_name}{overrides}, {len(sites)} sites, {args.rounds} rounds, seed 0; "
          f"load average {load[0]:.1f} on {os.cpu_count()} CPUs; measurement folder {root}")
    print("| protocol | local engine s/round | local peak MB | Flower s/round | of which site work | MB up/site/round "
          "| MB down/site/round | peak MB ServerApp | peak MB largest ClientApp | peak MB SuperLink "
          "| peak MB largest SuperNode | round trips per round | last round |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        lo = f"{r['local_s']:.2f} | {r['local_peak_mb']:.0f}" if "local_s" in r else "– | –"
        print(f"| {r['protocol']} | {lo} | {r['flower_s']:.1f} | {r['site_s']:.1f} | {r['up_mb']:.2f} | "
              f"{r['down_mb']:.2f} | {r['agg_peak_mb']:.0f} | {r['site_peak_mb']:.0f} | {r['superlink_peak_mb']:.0f} | "
              f"{r['supernode_peak_mb']:.0f} | {r['trips']} | {r['last']} |")
    if args.json:
        args.json.write_text(json.dumps({"experiment": exp.name, "sites": len(sites), "rounds": args.rounds,
                                         "task_overrides": args.task, "load": load[0], "rows": rows}, indent=2))


def _experiment_file(name: str, overrides: list[str], root: Path) -> Path:
    """The experiment's TOML file; with ``--task`` overrides, a patched copy in ``root``."""
    exp = load_experiment(name)
    if not overrides:
        return Path(exp.source)
    raw = copy.deepcopy(exp.raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"--task {item!r}: expected KEY=VALUE, e.g. 'image_size=[32, 26]'")
        try:
            raw["task"][key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError as exc:
            raise SpecError(f"--task {item!r}: the value is not TOML ({exc}); quote strings: encoder=\"cnn\"") from exc
    parse_experiment(raw, f"{exp.source} with --task {overrides}", exp.base_dir)  # refuse a bad value here, by key
    path = root / f"{exp.name}.toml"
    path.write_text(_toml(raw))
    return path


def _toml(data: dict[str, Any]) -> str:
    """A TOML text of an experiment table (scalars, lists and tables; JSON's string and array syntax is TOML's)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + "}"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(v)

    top = [f"{json.dumps(k)} = {value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    tables = [f"[{json.dumps(k)}]\n" + "\n".join(f"{json.dumps(k2)} = {value(v2)}" for k2, v2 in v.items())
              for k, v in data.items() if isinstance(v, dict)]
    return "\n".join(top) + "\n\n" + "\n\n".join(tables) + "\n"


def _split(entry: str, default: str) -> tuple[str, str]:
    exp_name, _, label = entry.rpartition(":")
    return exp_name or default, label


def _spec(exp_name: str, label: str) -> Any:
    exp = load_experiment(exp_name)
    for v in exp.variants:
        if v.label == label and v.spec is not None:
            return v.spec
    known = [v.label for v in exp.variants]
    raise SpecError(f"--protocols {label!r}: not a protocol of {exp.source} (it lists {known})")


def _deployed_row(label: str, dep: list[dict[str, Any]]) -> dict[str, Any]:
    steady = [r["trips"] for r in dep[:-1]] or [dep[-1]["trips"]]
    peaks = [r.get("peak_rss_bytes", {}) for r in dep]
    return {
        "protocol": label,
        "flower_s": float(np.mean([r["seconds"] for r in dep])),
        "site_s": float(np.mean([sum(v for k, v in r["stage_seconds"].items() if k.startswith("site:")) for r in dep])),
        "up_mb": float(np.mean([r["bytes_up_per_site"] for r in dep])) / MB,
        "down_mb": float(np.mean([r["bytes_down_per_site"] for r in dep])) / MB,
        "agg_peak_mb": max((p.get("aggregator", 0) for p in peaks), default=0) / MB,
        "site_peak_mb": max((v for p in peaks for k, v in p.items() if k.startswith("site:")), default=0) / MB,
        "trips": int(np.median(steady)),
        "last": dep[-1]["trips"],
    }


def _run_peak(cmd: list[str], env: dict[str, str]) -> int:
    """Run ``cmd`` to its end; its peak resident set size in bytes (``wait4``: this child's own ``ru_maxrss``)."""
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return int(usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024))


def _reset_peak(pid: int) -> None:
    """Reset a process's peak resident set size (Linux: ``5`` into ``/proc/PID/clear_refs``), so that the next
    reading is this protocol's alone; where that is not possible the reading stays a peak since the start."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


def _peak(pid: int) -> int:
    """A running process's peak resident set size in bytes (``VmHWM`` of ``/proc/PID/status``; 0 if unknown)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _rounds(root: Path, label: str) -> list[dict[str, Any]]:
    """rounds.jsonl of the run of variant ``label`` (seed 0) under ``root`` (labels may hold '[', so no glob)."""
    for path in sorted(root.rglob("rounds.jsonl")):
        if path.parent.name == "seed0" and path.parent.parent.name == label:
            return [json.loads(line) for line in path.read_text().splitlines()]
    raise FileNotFoundError(f"no run of {label!r} under {root}")


if __name__ == "__main__":
    main()
