"""The Flower engine over real processes on loopback: a SuperLink and four SuperNodes (one per
heart-disease hospital) with TLS and SuperNode authentication, started by the same functions
``secure-fl aggregator start`` / ``secure-fl site start`` use, and runs launched with
``secure-fl deploy run``. Slow (a few minutes on a loaded 2-core machine): marked ``slow``.

Kept cheap: one federation (SuperLink + SuperNodes) serves every test; each run has one round;
the refused nodes (unregistered, other federation) start in the background while the runs go on;
the unapproved spec is one that no site approved, so that run stops after its first trip (that a
run goes on without one refusing site is tested in-process, tests/test_deploy.py).

Dropout: a SuperNode killed mid-round never answers. Whichever comes first declares it dropped:
Flower's own error reply (NODE_UNAVAILABLE, about 2 x its 30 s heartbeat after the kill) or the
engine's per-trip timeout (``--stage-timeout``, 600 s here: on a 2-core machine shared with other
jobs (load average 30 and more) a healthy trip, with four fresh ClientApp processes importing torch,
has taken minutes, so a shorter timeout would drop healthy sites too; the timeout only bounds the
wait, Flower reports the dead node first). The masking protocol then recovers the round from the
survivors' shares.
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

from secure_fl.deploy.kit import load_kit
from secure_fl.deploy.provision import federation_toml, provision, site_names
from secure_fl.engine.flower.launch import (
    free_port,
    register_sites,
    start_superlink,
    start_supernode,
    stop_process_group,
    wait_for_port,
)
from secure_fl.protocol.spec import load_protocol
from secure_fl.run.experiment import load_experiment
from secure_fl.run.federation import Federation
from secure_fl.tasks.export import load_model
from secure_fl.tasks.registry import build_task
from secure_fl.training.flat import flatten

pytestmark = pytest.mark.slow
pytest.importorskip("flwr", reason="the Flower engine needs flwr==1.40.* (pip install secure-fl[flower])")

REPO = Path(__file__).resolve().parents[1]
#: site name -> heart-disease hospital, as scripts/measure_flower.py names a task's sites
HOSPITALS = site_names(["Cleveland", "Hungary", "VA Long Beach", "Switzerland"])
ENV = {"PYTHONPATH": str(REPO), "SECURE_FL_THREADS": "1"}


def _fed_toml(path: Path, name: str, port: int, sites: dict[str, str]) -> Path:
    path.write_text(federation_toml(name, f"127.0.0.1:{port}", sites))
    return path


def _site_start(kit: Path, log: Path) -> subprocess.Popen:
    """``secure-fl site start KIT`` in the background (its output in ``log``)."""
    return subprocess.Popen(
        [sys.executable, "-m", "secure_fl.cli", "site", "start", str(kit), "--runtime-port", str(free_port())],
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,  # noqa: SIM115
        env={**os.environ, **ENV},
        cwd=REPO,
        start_new_session=True,
    )


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    root = tmp_path_factory.mktemp("flower")
    port = free_port()
    # a fifth provisioned site that the aggregator does not register: an unregistered node
    sites = {**HOSPITALS, "intruder": "Cleveland"}
    kits = root / "kits"
    provision(_fed_toml(root / "federation.toml", "heart-test", port, sites), kits)
    # the same federation name and address, provisioned again: another federation (other CA, other id)
    other = root / "other"
    provision(_fed_toml(root / "other.toml", "heart-test", port, HOSPITALS), other)
    agg = load_kit(kits / "aggregator", role="aggregator")
    procs: dict[str, subprocess.Popen] = {}
    try:
        procs["superlink"] = start_superlink(agg, log=root / "superlink.log", env=ENV)
        wait_for_port("127.0.0.1", port, 90, procs["superlink"])
        time.sleep(1.0)
        register_sites(agg, env=ENV, only=sorted(HOSPITALS))
        # the nodes that must be refused start now and are checked at the end (they run beside the runs)
        procs["intruder"] = _site_start(kits / "sites" / "intruder", root / "intruder.log")
        procs["other"] = _site_start(other / "sites" / "cleveland", root / "other.log")
        for s in HOSPITALS:
            kit = load_kit(kits / "sites" / s, role="site")
            for spec in ("ckks-fedavg", "secagg-plus-fedavg"):  # plain-fedavg: approved by no site
                p = load_protocol(spec)
                kit.approve(p.spec_hash, p.name, spec)
            procs[s] = start_supernode(kit, free_port(), log=root / f"{s}.log", env=ENV)
        yield {"root": root, "kits": kits, "procs": procs, "port": port}
    finally:
        for _name, proc in procs.items():
            stop_process_group(proc)


def _deploy(
    fed,
    protocol: str,
    rounds: int,
    stage_timeout: float = 600,
    on_line=None,
    limit: float = 1200,
    expect_summary: bool = True,
) -> tuple[dict, Path, list[str]]:
    cmd = [
        sys.executable,
        "-m",
        "secure_fl.cli",
        "deploy",
        "run",
        "heart-protocols",
        "--federation",
        str(fed["kits"] / "aggregator"),
        "--protocol",
        protocol,
        "--rounds",
        str(rounds),
        "--out",
        str(fed["root"] / "runs"),
        "--stage-timeout",
        str(stage_timeout),
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **ENV},
        start_new_session=True,
        cwd=REPO,
    )
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
    if not expect_summary:
        return {}, out, lines
    assert (out / "summary.json").exists(), "\n".join(lines[-40:])
    import json

    return json.loads((out / "summary.json").read_text()), out, lines


def _rounds(out: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]


def _local_federation(protocol: str, rounds: int = 1):
    exp = load_experiment("heart-protocols")
    exp.rounds = rounds
    task = build_task(exp.task_name, exp.task_params)
    variant = next(v for v in exp.variants if v.label == protocol)
    return Federation(exp, task, variant, 0, Path("/nonexistent-unused"))


def test_ckks_over_flower_gives_the_local_engines_model(fed):
    summary, out, lines = _deploy(fed, "ckks-fedavg", 1)
    (rec,) = _rounds(out)
    assert rec["applied"], lines[-20:]
    assert rec["participants"] == sorted(HOSPITALS)
    peaks = rec["peak_rss_bytes"]  # the ServerApp's and, per trip, the largest ClientApp process's peak memory
    assert "site:final" in peaks and min(peaks.values()) > 50 * 2**20 and len(peaks) == 1 + rec["trips"]
    assert summary["trips_per_round"] == [3]  # 2 server round trips per CKKS round (the 2nd with the final evaluation)
    local = _local_federation("ckks-fedavg")
    local.round(0)
    deployed, card = load_model(out)  # the local engine's run-folder format: state_dict + model.json
    assert np.allclose(flatten(deployed), local.weights, atol=1e-5, rtol=0)
    views = (out / "views.jsonl").read_text()
    assert '"kind": "plain"' not in views and '"kind": "ciphertext"' in views
    assert "Cleveland/auc" in rec["metrics"] and "pooled/auc" in rec["metrics"]


def test_an_unapproved_spec_is_refused_by_every_site_with_the_command_to_approve_it(fed):
    spec = load_protocol("plain-fedavg")
    _, out, lines = _deploy(fed, "plain-fedavg", 1, expect_summary=False)
    text = "\n".join(lines)
    assert "only 0 site(s) joined" in text, lines[-20:]
    for s in HOSPITALS:  # the aggregator reports each site's refusal, naming the spec, its hash and the command
        assert f"site {s!r} has not approved protocol spec 'plain-fedavg' (spec hash {spec.spec_hash})" in text
    assert "secure-fl site approve" in text
    log = (fed["root"] / "cleveland.log").read_text(errors="replace")  # and the site says it, on its side
    assert "has not approved protocol spec 'plain-fedavg'" in log


def test_an_unregistered_node_is_refused(fed):
    proc = fed["procs"]["intruder"]
    assert proc.wait(timeout=180) == 2
    assert "is not registered there" in (fed["root"] / "intruder.log").read_text(errors="replace")


def test_a_wrong_certificate_or_a_kit_from_another_federation_is_refused(fed):
    proc = fed["procs"]["other"]
    assert proc.wait(timeout=120) == 2
    log = (fed["root"] / "other.log").read_text(errors="replace")
    assert "did not sign" in log and "another federation" in log


def test_secagg_plus_round_survives_a_supernode_killed_mid_round(fed):
    # last in this file: hungary's SuperNode stays dead
    killed: list[float] = []

    def on_line(line: str) -> None:
        # round 0 has advertised keys: kill hungary's SuperNode while the masking round runs
        if not killed and "round 0: trip begin+advertise_keys done" in line:
            os.killpg(fed["procs"]["hungary"].pid, signal.SIGKILL)
            killed.append(time.monotonic())

    summary, out, lines = _deploy(fed, "secagg-plus-fedavg", 1, on_line=on_line)
    assert killed, lines[-30:]
    (rec,) = _rounds(out)
    assert rec["applied"], (rec["aborted"], rec["dropped"], lines[-30:])
    assert rec["participants"] == ["cleveland", "switzerland", "va-long-beach"]
    assert "no reply" in rec["dropped"]["hungary"] or "Node Unavailable" in rec["dropped"]["hungary"]
    assert rec["trips"] <= 5  # 4 server round trips per SecAgg+ round, + the final evaluation
    # the model is the initial one plus the survivors' mean (up to quantisation: one step is 3e-5)
    local = _local_federation("secagg-plus-fedavg")
    w0 = local.weights.copy()
    ups = {i: local._site_update(i, 0) for i, s in enumerate(local.task.sites) if s.name != "Hungary"}
    mean = sum(v for v, _, _ in ups.values()) / sum(w for _, w, _ in ups.values())
    deployed, _ = load_model(out)
    assert np.allclose(flatten(deployed), w0 + mean, atol=2e-3, rtol=0)
