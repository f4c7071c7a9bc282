"""``secure-fl provision | aggregator | site | deploy``: protected rounds between real hospitals.

    secure-fl provision FEDERATION.toml --out DIR        # one kit per party (see secure_fl/deploy/provision.py)
    secure-fl aggregator start KIT [--insecure]           # SuperLink + registration of the provisioned sites
    secure-fl site approve KIT SPEC                       # the site's data officer approves a protocol spec
    secure-fl site start KIT [--runtime-port N]           # SuperNode with the kit's CA and node key
    secure-fl deploy run EXPERIMENT --federation KIT      # one protocol of an experiment over Flower

TLS and SuperNode authentication are the default; ``--insecure`` is refused unless the address
is a loopback address, and warns.
"""

from __future__ import annotations

import argparse
import json
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["add_parser"]


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("provision", help="write one kit per site and one for the aggregator (FEDERATION.toml)")
    p.add_argument("federation", type=Path, help="the federation file (name, address, [sites.NAME] tables)")
    p.add_argument("--out", type=Path, required=True, help="empty folder for the kits (created 0700)")
    p.set_defaults(func=cmd_provision)

    agg = subparsers.add_parser("aggregator", help="run the aggregator (Flower SuperLink) of a federation")
    sub = agg.add_subparsers(dest="aggregator_command", required=True)
    p = sub.add_parser("start", help="start the SuperLink with the kit's TLS and register the provisioned sites")
    p.add_argument("kit", type=Path, help="the aggregator kit")
    p.add_argument("--insecure", action="store_true", help="no TLS, no node authentication (loopback only)")
    p.add_argument("--bind", help="address to listen on (default: the kit's address host)")
    p.add_argument("--no-database", action="store_true", help="keep the SuperLink state in memory only")
    p.set_defaults(func=cmd_aggregator_start)

    site = subparsers.add_parser("site", help="run a site (Flower SuperNode) or approve a protocol at a site")
    sub = site.add_subparsers(dest="site_command", required=True)
    p = sub.add_parser("start", help="start the site's SuperNode with its kit")
    p.add_argument("kit", type=Path, help="this site's kit")
    p.add_argument("--runtime-port", type=int, default=9094,
                   help="local port of the SuperNode's runtime API (one per node on a host)")
    p.add_argument("--insecure", action="store_true", help="no TLS, no node authentication (loopback only)")
    p.set_defaults(func=cmd_site_start)
    p = sub.add_parser("approve", help="record that this site runs a protocol spec (by its hash)")
    p.add_argument("kit", type=Path, help="this site's kit")
    p.add_argument("spec", help="protocol spec: a name in protocols/ or a .toml path")
    p.set_defaults(func=cmd_site_approve)

    dep = subparsers.add_parser("deploy", help="run an experiment's protocol across the federation's sites")
    sub = dep.add_subparsers(dest="deploy_command", required=True)
    p = sub.add_parser("run", help="one protocol of an experiment over Flower; writes the run folder")
    p.add_argument("experiment", help="experiment TOML or name in experiments/")
    p.add_argument("--federation", type=Path, required=True, help="the aggregator kit")
    p.add_argument("--protocol", help="the protocol (default: the experiment's first)")
    p.add_argument("--seed", type=int, help="the seed (default: the experiment's first)")
    p.add_argument("--rounds", type=int, help="override the number of rounds")
    p.add_argument("--out", default="runs", help="root of the run folders (default: runs)")
    p.add_argument("--stage-timeout", type=float, default=120.0,
                   help="seconds a site may take per trip before it counts as dropped")
    p.add_argument("--insecure", action="store_true", help="the SuperLink runs with --insecure (loopback only)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in the run folder after its last finished round (after an aggregator "
                        "restart); replayed rounds are never charged twice to a site's ledger")
    p.set_defaults(func=cmd_deploy_run)


def cmd_provision(args: argparse.Namespace) -> int:
    from ..deploy.provision import provision

    summary = provision(args.federation, args.out)
    print(f"federation {summary['federation']} (id {summary['federation_id']}), address {summary['address']}")
    for party, fp in summary["kits"].items():
        where = args.out / ("aggregator" if party == "aggregator" else f"sites/{party}")
        print(f"  {party:<16} {where}  fingerprint {fp[:16]}")
    print("hand each kit to its party only (a site kit holds the CKKS secret key and the site's private keys);")
    print("each site then approves the protocols it will run: secure-fl site approve KIT SPEC")
    return 0


def _wait(proc: subprocess.Popen[bytes], what: str) -> int:
    def stop(signum: int, frame: Any) -> None:
        proc.terminate()

    signal.signal(signal.SIGTERM, stop)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()


def cmd_aggregator_start(args: argparse.Namespace) -> int:
    from ..deploy.kit import load_kit
    from ..engine.flower.launch import register_sites, split_address, start_superlink, wait_for_port

    kit = load_kit(args.kit, role="aggregator")
    proc = start_superlink(kit, insecure=args.insecure, bind=args.bind, database=not args.no_database)
    host, port = split_address(kit.address)
    try:
        wait_for_port(args.bind or host, port, 60, proc)
        if not args.insecure:
            time.sleep(1.0)
            for site, note in register_sites(kit).items():
                print(f"site {site!r}: SuperNode key registered ({note})", flush=True)
    except BaseException:
        proc.terminate()
        raise
    print(f"aggregator of federation {kit.federation!r} listening on {kit.address} "
          f"(FLWR_HOME {kit.state_dir / 'flwr_home'})", flush=True)
    return _wait(proc, "aggregator")


def cmd_site_start(args: argparse.Namespace) -> int:
    from ..deploy.kit import KitError, load_kit
    from ..engine.flower.launch import SUPERNODE_UNREGISTERED_EXIT, check_server_certificate, start_supernode

    kit = load_kit(args.kit, role="site")
    if not args.insecure:
        check_server_certificate(kit)
    approved = sorted(f"{v.get('name')} ({h})" for h, v in kit.approvals().items())
    print(f"site {kit.name!r} of federation {kit.federation!r}: approved specs {approved or 'none yet'}", flush=True)
    proc = start_supernode(kit, args.runtime_port, insecure=args.insecure, pipe=True)
    refused: list[bool] = []

    def echo() -> None:
        # echo Flower's log, watching for the activation refusal (exit 305). Read in a thread: the
        # SuperNode's own SuperExec inherits the pipe and may outlive it for a while
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace")
            sys.stdout.write(line)
            sys.stdout.flush()
            if "Failed to activate SuperNode" in line or f"Exit Code: {SUPERNODE_UNREGISTERED_EXIT}" in line:
                refused.append(True)

    reader = threading.Thread(target=echo, daemon=True)
    reader.start()
    code = _wait(proc, "site")
    reader.join(timeout=2.0)
    if refused or code == SUPERNODE_UNREGISTERED_EXIT:
        raise KitError(
            f"the aggregator at {kit.address} refused this node (Flower exit {code}): "
            f"its key {kit.file('node/auth.pub')} is not registered there. "
            "The aggregator registers provisioned sites when it starts (`secure-fl aggregator start`); "
            f"a kit from another provisioning of federation {kit.federation!r} is never registered"
        )
    return code


def cmd_site_approve(args: argparse.Namespace) -> int:
    from ..deploy.kit import load_kit
    from ..protocol.spec import load_protocol

    kit = load_kit(args.kit, role="site")
    spec = load_protocol(args.spec)
    kit.approve(spec.spec_hash, spec.name, str(args.spec))
    print(f"site {kit.name!r} approved protocol spec {spec.name!r} (spec hash {spec.spec_hash})")
    print(f"  aggregator sees: {spec.threat_model.aggregator_sees}; adversary: {spec.threat_model.adversary}")
    return 0


def cmd_deploy_run(args: argparse.Namespace) -> int:
    from ..deploy.kit import load_kit
    from ..engine.flower.launch import CONNECTION, bin_path, build_app, check_insecure, flwr_env, write_flwr_config
    from ..errors import SpecError
    from ..run.experiment import load_experiment

    kit = load_kit(args.federation, role="aggregator")
    exp = load_experiment(args.experiment)
    if args.rounds:
        exp.rounds = args.rounds
    labels = [v.label for v in exp.variants if v.spec is not None]
    label = args.protocol or (labels[0] if labels else None)
    chosen = [v for v in exp.variants if v.label == label and v.spec is not None]
    if not chosen:
        raise SpecError(f"--protocol {label!r}: not a protocol of {exp.source} (it lists {labels})")
    variant = chosen[0]
    seed = args.seed if args.seed is not None else exp.seeds[0]
    raw = dict(exp.raw)
    raw["rounds"] = exp.rounds
    out = (Path(args.out) / exp.name / variant.label / f"seed{seed}").resolve()
    if args.resume:
        previous = out / "summary.json"
        if previous.exists() and json.loads(previous.read_text()).get("status") == "finished":
            print(f"{out}: the run already finished; nothing to resume")
            return 0
        if not (out / "checkpoint.pt").exists():
            raise SpecError(f"--resume: {out} holds no checkpoint of a deployed run (start it without --resume)")
        (out / "error.txt").unlink(missing_ok=True)
    elif out.exists():
        for name in ("rounds.jsonl", "views.jsonl", "summary.json", "model.pt", "model.json", "error.txt",
                     "checkpoint.pt"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    assert variant.spec is not None
    cfg = {"kit": str(kit.path), "experiment": raw, "experiment_source": exp.source, "protocol": variant.spec.raw,
           "protocol_source": f"{variant.label}.toml", "seed": seed, "out": str(out),
           "stage_timeout": args.stage_timeout, "resume": bool(args.resume), "variant": variant.label}
    resolved = {"experiment": raw, "variant": variant.label, "protocol": variant.spec.raw, "seed": seed,
                "engine": "flower", "federation": kit.federation}
    if not (out / "resolved.json").exists() or not args.resume:
        (out / "resolved.json").write_text(json.dumps(resolved, indent=2, default=str))
    if args.insecure:
        check_insecure(kit.address, "deploy run")
    write_flwr_config(kit, kit.address, args.insecure)
    app = build_app(kit.state_dir / "apps" / secrets.token_hex(8), cfg)
    t0 = time.time()
    cmd = [bin_path("flwr"), "run", str(app), CONNECTION, "--stream"]
    res = subprocess.run(cmd, env=flwr_env(kit))
    summary_path = out / "summary.json"
    if not summary_path.exists():
        err_file = out / "error.txt"
        err = err_file.read_text() if err_file.exists() else f"flwr run exited with code {res.returncode}"
        print(f"error: the deployed run wrote no summary: {err.strip()}", file=sys.stderr)
        return 2
    summary = json.loads(summary_path.read_text())
    print(f"{variant.label} over Flower: {summary['rounds_done']} rounds in {time.time() - t0:.1f} s "
          f"(trips per round {summary['trips_per_round']}); run folder {out}")
    for k in sorted(summary["metrics"]):
        if k.startswith(("pooled/", "site-mean/")):
            print(f"  {k} = {summary['metrics'][k]:.4f}")
    return 0
