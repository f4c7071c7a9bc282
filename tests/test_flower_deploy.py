"""The Flower engine over real processes on loopback: a SuperLink and four SuperNodes (one per
heart-disease hospital) with TLS and SuperNode authentication, started by the same functions
``secure-fl aggregator start`` / ``secure-fl site start`` use, and runs launched with
``secure-fl deploy run``. Slow (minutes on a loaded 2-core machine): marked ``slow``.

Dropout: a SuperNode killed mid-round never answers. Whichever comes first declares it dropped:
Flower's own error reply (NODE_UNAVAILABLE, about 2 x its 30 s heartbeat after the kill) or the
engine's per-trip timeout (``--stage-timeout``, 150 s here: on a loaded 2-core machine a healthy
trip takes up to a minute, so a shorter timeout would drop healthy sites too). The masking
protocol then recovers the round from the survivors' shares.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from secure_fl.deploy.kit import load_kit
from secure_fl.deploy.provision import provision
from secure_fl.engine.flower.launch import (
    free_port, register_sites, split_address, start_superlink, start_supernode, stop_process_group, wait_for_port,
)
from secure_fl.protocol.spec import load_protocol
from secure_fl.run.experiment import load_experiment
from secure_fl.run.federation import Federation
from secure_fl.tasks.registry import build_task

pytestmark = pytest.mark.slow
pytest.importorskip("flwr", reason="the Flower engine needs flwr==1.40.* (pip install secure-fl[flower])")

REPO = Path(__file__).resolve().parents[1]
HOSPITALS = {"cleveland": "Cleveland", "hungary": "Hungary", "va-long-beach": "VA Long Beach", "switzerland": "Switzerland"}
ENV = {"PYTHONPATH": str(REPO), "SECURE_FL_THREADS": "1"}


def _fed_toml(path: Path, name: str, port: int, sites: dict[str, str]) -> Path:
    lines = [f'name = "{name}"', f'address = "127.0.0.1:{port}"']
    for s, data in sites.items():
        lines += [f"[sites.{s}]", f'data = "{data}"']
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    root = tmp_path_factory.mktemp("flower")
    port = free_port()
    # a fifth provisioned site that the aggregator does not register: an unregistered node
    sites = {**HOSPITALS, "intruder": "Cleveland"}
    kits = root / "kits"
    provision(_fed_toml(root / "federation.toml", "heart-test", port, sites), kits)
    agg = load_kit(kits / "aggregator", role="aggregator")
    procs: dict[str, subprocess.Popen] = {}
    try:
        procs["superlink"] = start_superlink(agg, log=root / "superlink.log", env=ENV)
        wait_for_port("127.0.0.1", port, 90, procs["superlink"])
        time.sleep(1.0)
        register_sites(agg, env=ENV, only=sorted(HOSPITALS))
        for s in HOSPITALS:
            kit = load_kit(kits / "sites" / s, role="site")
            for spec in ("ckks-fedavg", "secagg-plus-fedavg") + (("plain-fedavg",) if s != "switzerland" else ()):
                p = load_protocol(spec)
                kit.approve(p.spec_hash, p.name, spec)
            procs[s] = start_supernode(kit, free_port(), log=root / f"{s}.log", env=ENV)
        yield {"root": root, "kits": kits, "procs": procs, "port": port}
    finally:
        for name, proc in procs.items():
            stop_process_group(proc)


def _deploy(fed, protocol: str, rounds: int, stage_timeout: float = 120, on_line=None, limit: float = 600) -> tuple[dict, Path, list[str]]:
    cmd = [sys.executable, "-m", "secure_fl.cli", "deploy", "run", "heart-protocols", "--federation", str(fed["kits"] / "aggregator"),
           "--protocol", protocol, "--rounds", str(rounds), "--out", str(fed["root"] / "runs"), "--stage-timeout", str(stage_timeout)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **ENV},
                            start_new_session=True, cwd=REPO)
    lines: list[str] = []
    end = time.monotonic() + limit
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip())
            if on_line:
                on_line(line)
            if time.monotonic() > end:
                break
        proc.wait(timeout=max(1, end - time.monotonic()))
    finally:
        stop_process_group(proc)
    out = fed["root"] / "runs" / "heart-protocols" / protocol / "seed0"
    assert (out / "summary.json").exists(), "\n".join(lines[-40:])
    import json

    return json.loads((out / "summary.json").read_text()), out, lines


def _rounds(out: Path) -> list[dict]:
    import json

    return [json.loads(l) for l in (out / "rounds.jsonl").read_text().splitlines()]


def _local_federation(protocol: str):
    exp = load_experiment("heart-protocols")
    exp.rounds = 2
    task = build_task(exp.task_name, exp.task_params)
    variant = next(v for v in exp.variants if v.label == protocol)
    return Federation(exp, task, variant, 0, Path("/nonexistent-unused"))


def test_ckks_over_flower_gives_the_local_engines_model(fed):
    summary, out, lines = _deploy(fed, "ckks-fedavg", 2)
    recs = _rounds(out)
    assert [r["applied"] for r in recs] == [True, True], lines[-20:]
    assert recs[0]["participants"] == sorted(HOSPITALS)
    assert summary["trips_per_round"] == [2, 3]  # 2 server round trips per CKKS round, + the final evaluation
    local = _local_federation("ckks-fedavg")
    for r in range(2):
        local.round(r)
    deployed = torch.load(out / "model.pt")["weights"].numpy()
    assert np.allclose(deployed, local.weights, atol=1e-5, rtol=0)
    views = (out / "views.jsonl").read_text()
    assert '"kind": "plain"' not in views and '"kind": "ciphertext"' in views
    assert "Cleveland/auc" in recs[-1]["metrics"]


def test_an_unapproved_spec_is_refused_by_the_site_and_the_run_goes_on(fed):
    spec = load_protocol("plain-fedavg")
    summary, out, lines = _deploy(fed, "plain-fedavg", 1)
    refused = summary["refused"]["switzerland"]
    assert "'plain-fedavg'" in refused and spec.spec_hash in refused and "secure-fl site approve" in refused
    (rec,) = _rounds(out)
    assert rec["applied"] and rec["participants"] == ["cleveland", "hungary", "va-long-beach"]


def test_an_unregistered_node_is_refused(fed):
    kit = fed["kits"] / "sites" / "intruder"
    res = subprocess.run([sys.executable, "-m", "secure_fl.cli", "site", "start", str(kit), "--runtime-port", str(free_port())],
                         capture_output=True, text=True, timeout=180, env={**os.environ, **ENV}, cwd=REPO)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "is not registered there" in res.stderr


def test_a_wrong_certificate_or_a_kit_from_another_federation_is_refused(fed, tmp_path):
    other = tmp_path / "other"
    provision(_fed_toml(tmp_path / "other.toml", "heart-test", fed["port"], HOSPITALS), other)
    res = subprocess.run([sys.executable, "-m", "secure_fl.cli", "site", "start", str(other / "sites" / "cleveland"),
                          "--runtime-port", str(free_port())], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **ENV}, cwd=REPO)
    assert res.returncode == 2
    assert "did not sign" in res.stderr and "another federation" in res.stderr


def test_secagg_plus_round_survives_a_supernode_killed_mid_round(fed):
    killed: list[float] = []

    def on_line(line: str) -> None:
        # round 1 has advertised keys: kill hungary's SuperNode while the masking round runs
        if not killed and "round 1: trip begin+advertise_keys done" in line:
            os.killpg(fed["procs"]["hungary"].pid, signal.SIGKILL)
            killed.append(time.monotonic())

    summary, out, lines = _deploy(fed, "secagg-plus-fedavg", 2, stage_timeout=150, on_line=on_line, limit=1200)
    assert killed, lines[-30:]
    recs = _rounds(out)
    assert recs[0]["applied"] and recs[0]["participants"] == sorted(HOSPITALS)
    assert recs[1]["applied"], (recs[1], lines[-30:])
    assert recs[1]["participants"] == ["cleveland", "switzerland", "va-long-beach"]
    assert "no reply" in recs[1]["dropped"]["hungary"] or "Node Unavailable" in recs[1]["dropped"]["hungary"]
    assert summary["trips_per_round"][0] == 4
    # round 1's model is round 0's plus the survivors' mean (up to quantisation: one step is 3e-5)
    local = _local_federation("secagg-plus-fedavg")
    local.round(0)
    ups = {i: local._site_update(i, 1) for i, s in enumerate(local.task.sites) if s.name != "Hungary"}
    mean = sum(v for v, _, _ in ups.values()) / sum(w for _, w, _ in ups.values())
    deployed = torch.load(out / "model.pt")["weights"].numpy()
    assert np.allclose(deployed, local.weights + mean, atol=2e-3, rtol=0)
