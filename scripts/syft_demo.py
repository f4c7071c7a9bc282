"""Three hospitals as PySyft datasites on one machine: each steward approves the secure-fl site step,
then a secure-sum federation runs through syft jobs and ends with the local engine's model.

Run in the syft environment (``bash scripts/setup.sh --syft``)::

    .venv-syft/bin/python scripts/syft_demo.py                        # CKKS, 3 sites, 2 rounds
    .venv-syft/bin/python scripts/syft_demo.py --protocol secagg-plus-fedavg --sites 2

What it shows, in order: provisioning kits (as ``secure-fl provision``); three in-memory datasites,
each steward uploading the site's data as an asset (private + mock); the researcher's code request
for the pinned site step; the job refused before approval; each steward's review and approval; the
rounds (only protected messages leave each datasite); the final model against the local engine's.
Exit status 0 when the two models agree (CKKS within 1e-6, SecAgg+ within its quantisation, 1e-3).
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from secure_fl.deploy.kit import load_kit
from secure_fl.deploy.provision import provision
from secure_fl.engine import syft as sfl_syft
from secure_fl.engine.flower.codec import encode
from secure_fl.engine.flower.server import DeployedRun
from secure_fl.protocol.base import AGGREGATOR
from secure_fl.run.experiment import parse_experiment
from secure_fl.run.federation import Federation
from secure_fl.tasks.registry import build_task

TOLERANCE = {"ckks-fedavg": 1e-6, "secagg-plus-fedavg": 1e-3}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--protocol", choices=sorted(TOLERANCE), default="ckks-fedavg")
    ap.add_argument("--sites", type=int, choices=[2, 3], default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error(f"--rounds must be at least 1, found {args.rounds}")

    exp = parse_experiment({
        "name": "syft-demo", "protocols": [args.protocol], "rounds": args.rounds, "seeds": [args.seed],
        "task": {"name": "synthetic-tabular", "n_sites": args.sites, "n_per_site": 60},
        "training": {"local_epochs": 1, "batch_size": 16, "lr": 0.1},
    }, "syft-demo")
    spec = exp.variants[0].spec
    task = build_task(exp.task_name, exp.task_params)
    sites = {f"hospital-{chr(ord('a') + i)}": s for i, s in enumerate(task.sites)}

    with tempfile.TemporaryDirectory(prefix="secure-fl-syft-") as tmp:
        root = Path(tmp)
        lines = ['name = "syft-demo"', 'address = "127.0.0.1:19999"']  # the address is unused: syft carries
        for name, data in sites.items():
            lines += [f"[sites.{name}]", f'data = "{data.name}"']
        (root / "federation.toml").write_text("\n".join(lines) + "\n")
        provision(root / "federation.toml", root / "kits")
        print(f"provisioned kits for {sorted(sites)} and the aggregator")

        tag = secrets.token_hex(3)
        handles, stewards, clients, assets = {}, {}, {}, {}
        researcher = {"email": "researcher@example.org", "password": secrets.token_urlsafe(12)}
        for name, data in sites.items():
            handles[name], admin = sfl_syft.launch_datasite(f"{name}-{tag}")
            stewards[name] = sfl_syft.Steward(admin, root / "kits" / "sites" / name)
            stewards[name].upload(data)
            admin.register(name="Researcher", password_verify=researcher["password"], **researcher)
            clients[name] = handles[name].login(**researcher)
            assets[name] = clients[name].datasets[f"secure-fl {name}"].assets["site-data"]
            print(f"{name}: datasite up, data uploaded as a syft asset (private + mock), researcher account made")
        try:
            requests = {s: sfl_syft.submit_site_step(clients[s], assets[s], spec, args.rounds) for s in sites}
            print(f"researcher: code request for {sfl_syft.site_step_name(spec.spec_hash)} at every datasite")
            transport = sfl_syft.SyftTransport(clients, assets, spec.spec_hash)
            probe = encode({"run": "0" * 32, "federation_id": "-", "ops": [{"op": "hello"}]})
            first = sorted(sites)[0]
            (refused,) = transport.exchange({first: probe}, 10.0).values()
            print(f"before approval, {first} runs nothing: {getattr(refused, 'error', refused)!s:.160}")
            for s, request in requests.items():
                print(f"--- steward of {s} reviews:\n{stewards[s].approve(request, spec)}\n--- approved")
            t0 = time.perf_counter()
            run = DeployedRun(load_kit(root / "kits" / "aggregator"), exp, spec, args.seed, transport,
                              tap=lambda m: None, log=lambda s: None)
            for rec in run.run():
                print(f"round {rec['round']}: applied={rec['applied']} participants={rec['participants']} "
                      f"bytes up per site {rec['bytes_up_per_site']:.0f} trips {rec['trips']}")
            seconds = time.perf_counter() - t0
            kinds = sorted({v.kind for v in run.all_views if v.receiver == AGGREGATOR and v.stage != "final_model"})
            print(f"the aggregator saw message kinds {kinds} ({spec.threat_model.aggregator_sees} promised); "
                  f"{len(transport.replies)} syft trips in {seconds:.1f} s")
        finally:
            for h in handles.values():
                h.land()

    local = Federation(exp, task, exp.variants[0], args.seed, Path("/nonexistent-unused"))
    for r in range(exp.rounds):
        local.round(r)
    assert run.weights is not None
    gap = float(np.max(np.abs(run.weights - local.weights)))
    ok = gap <= TOLERANCE[args.protocol]
    print(f"final model vs the local engine's: max |difference| = {gap:.2e} "
          f"({'equal' if ok else 'DIFFERENT'} within {TOLERANCE[args.protocol]:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
