"""Run folders that never lose anything: ids, the lock, ``latest``, resolved.json, summary.json, resume.

The concurrency and kill cases run real processes (``python -m secure_fl.cli``) on a tiny
synthetic experiment; the DP protocol is local-noise DP-FedAvg with seeded noise, so a resumed
run can be compared with an uninterrupted one bit for bit, and its Gaussian-event ledger is cheap.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import secure_fl
from secure_fl.cli import main
from secure_fl.privacy.ledger import PrivacyLedger
from secure_fl.protocol.spec import PROTOCOLS_DIR
from secure_fl.run.compare import resume_experiment, run_experiment
from secure_fl.run.experiment import load_experiment
from secure_fl.run.provenance import data_digests, git_info
from secure_fl.run.records import RunLock, RunLocked, read_rounds, resolve_latest, run_status, strict_json
from secure_fl.tasks.registry import build_task

ROOT = Path(__file__).resolve().parents[1]
SITES = ["site1", "site2", "site3"]


def _seeded_dp_protocol(path: Path) -> Path:
    """dp-fedavg with local noise, a fixed noise multiplier (no calibration) and seeded noise."""
    text = (PROTOCOLS_DIR / "dp-fedavg-central.toml").read_text()
    for old, new in [('name = "dp-fedavg-central"', 'name = "dp-seeded"'), ('noise = "central"', 'noise = "local"'),
                     ('noise_adder = "aggregator"', ""), ("target_epsilon = 4.0", "noise_multiplier = 2.0"),
                     ("secure_noise = true", "secure_noise = false"),
                     ('aggregator_sees = "plain"', 'aggregator_sees = "noised"')]:
        assert old in text, old
        text = text.replace(old, new)
    out = path / "dp-seeded.toml"
    out.write_text(text)
    return out


@pytest.fixture
def experiment(tmp_path) -> Path:
    _seeded_dp_protocol(tmp_path)
    path = tmp_path / "tiny.toml"
    path.write_text("""
name = "tiny"
protocols = ["dp-seeded.toml", "pooled"]
seeds = [0]
rounds = 3
[task]
name = "synthetic-tabular"
n_sites = 3
n_per_site = 40
[training]
local_epochs = 1
batch_size = 16
lr = 0.1
""")
    return path


def _cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SECURE_FL_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "secure_fl.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _ledger(run_dir: Path, site: str) -> list[tuple[int, str, float]]:
    path = run_dir / "sites" / site / "ledger.sqlite"
    return [(r.round, r.mechanism, round(r.epsilon_pld, 9)) for r in PrivacyLedger(path, site).records()]


def test_two_processes_into_the_same_experiment_lose_nothing(tmp_path, experiment):
    procs = [_cli("run", str(experiment), "--protocol", "dp-seeded", "--out", str(tmp_path / "runs"), "--quiet")
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    exp_dir = tmp_path / "runs" / "tiny"
    runs = sorted(p for p in exp_dir.iterdir() if p.is_dir() and not p.is_symlink())
    assert len(runs) == 2 and runs[0].name != runs[1].name
    assert resolve_latest(exp_dir) in runs
    ledgers = []
    for run in runs:
        seed_dir = run / "dp-seeded" / "seed0"
        assert [r["round"] for r in read_rounds(seed_dir)] == [0, 1, 2]
        assert run_status(run) == "finished" and run_status(seed_dir) == "finished"
        assert not (run / "lock").exists()
        ledgers.append({s: _ledger(seed_dir, s) for s in SITES})
        for s in SITES:
            assert [r[0] for r in ledgers[-1][s]] == [0, 1, 2]  # one charge per round, none lost
    assert ledgers[0] == ledgers[1]  # same seeds, same spend


def test_a_live_writer_holds_the_lock_and_a_dead_ones_lock_is_taken_over(tmp_path, experiment, capsys):
    run_dir = tmp_path / "runs" / "tiny" / "mine"
    run_dir.mkdir(parents=True)
    code = ("import sys, pathlib; from secure_fl.run.records import RunLock; "
            f"RunLock(pathlib.Path({str(run_dir)!r})).acquire(); print('held', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code],
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        args = ["run", str(experiment), "--protocol", "pooled", "--out", str(tmp_path / "runs"), "--run-id", "mine",
                "--quiet"]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"is being written by pid {holder.pid} on host {socket.gethostname()!r}" in err
        assert sorted(p.name for p in run_dir.iterdir()) == ["lock"]  # nothing written beside the holder's lock
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    # the holder died without releasing: its lock is stale and the next writer takes it over
    assert (run_dir / "lock").exists()
    assert main(args) == 0
    assert not (run_dir / "lock").exists() and run_status(run_dir) == "finished"


def test_lock_refuses_a_second_holder_in_process(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunLocked, match=f"pid {os.getpid()}"):
            RunLock(tmp_path).acquire()
    RunLock(tmp_path).acquire().release()


def test_nothing_is_deleted_without_overwrite(tmp_path, experiment, capsys):
    out = str(tmp_path / "runs")
    base = ["run", str(experiment), "--protocol", "pooled", "--out", out, "--run-id", "r1", "--quiet", "--rounds", "1"]
    assert main(base) == 0
    run_dir = tmp_path / "runs" / "tiny" / "r1"
    before = (run_dir / "pooled" / "seed0" / "rounds.jsonl").read_text()
    assert main(base) == 2
    assert "already holds a run (finished); nothing was changed" in capsys.readouterr().err
    assert (run_dir / "pooled" / "seed0" / "rounds.jsonl").read_text() == before
    assert main([*base[:-2], "--rounds", "2", "--overwrite"]) == 0
    assert [r["round"] for r in read_rounds(run_dir / "pooled" / "seed0")] == [0, 1]
    assert main([*base, "--run-id", "latest"]) == 2  # argparse keeps the last --run-id
    assert "--run-id: expected a plain folder name" in capsys.readouterr().err


def test_resolved_json_is_the_effective_config_with_versions_and_data_digests(tmp_path, experiment):
    assert main(["run", str(experiment), "--protocol", "pooled", "--rounds", "1", "--seeds", "7",
                 "--out", str(tmp_path / "runs"), "--quiet"]) == 0
    run_dir = resolve_latest(tmp_path / "runs" / "tiny")
    resolved = json.loads((run_dir / "resolved.json").read_text())
    assert resolved["experiment"]["rounds"] == 1 and resolved["experiment"]["seeds"] == [7]
    assert resolved["chosen"] == ["pooled"] and resolved["run_id"] == run_dir.name
    env = resolved["environment"]
    for name in ("secure-fl", "torch", "tenseal", "opacus", "dp-accounting", "cryptography", "flwr"):
        assert name in env["versions"]
    assert env["versions"]["secure-fl"] == secure_fl.__version__ and env["versions"]["torch"]
    assert env["python"] and env["platform"]
    commit = env["git"]["commit"]
    assert commit is None or len(commit) == 40
    exp = load_experiment(experiment)
    assert resolved["data"] == data_digests(build_task(exp.task_name, exp.task_params))
    assert set(resolved["data"]) == set(SITES) and all(len(d["sha256"]) == 64 for d in resolved["data"].values())
    other = data_digests(build_task("synthetic-tabular", {"n_sites": 3, "n_per_site": 40, "seed": 1}))
    assert other["site1"]["sha256"] != resolved["data"]["site1"]["sha256"]


def test_git_info_outside_a_checkout_is_null(tmp_path):
    assert git_info(tmp_path) == {"commit": None, "dirty": None}


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"secure-fl {secure_fl.__version__}"


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, experiment):
    """SIGKILL a real run mid-round, see it reported as crashed, resume it: rounds, ledgers and final
    weights equal those of a run that was never interrupted."""
    out = tmp_path / "runs"
    args = ["run", str(experiment), "--protocol", "dp-seeded", "--rounds", "6", "--out", str(out), "--quiet"]
    proc = _cli(*args, "--run-id", "killed")
    seed_dir = out / "tiny" / "killed" / "dp-seeded" / "seed0"
    deadline = time.monotonic() + 240
    while not read_rounds(seed_dir) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    done = len(read_rounds(seed_dir))
    assert 1 <= done < 6, "the run was not killed mid-run"
    summary = json.loads((seed_dir / "summary.json").read_text())
    assert summary["status"] == "running" and summary["pid"] == proc.pid
    assert run_status(seed_dir) == "crashed" and run_status(out / "tiny" / "killed") == "crashed"
    assert main(["run", "--resume", str(out / "tiny" / "killed"), "--quiet"]) == 0
    assert main([*args, "--run-id", "whole"]) == 0
    whole_dir = out / "tiny" / "whole" / "dp-seeded" / "seed0"
    assert [r["round"] for r in read_rounds(seed_dir)] == list(range(6))
    for s in SITES:
        assert _ledger(seed_dir, s) == _ledger(whole_dir, s)
    killed_w, whole_w = torch.load(seed_dir / "model.pt"), torch.load(whole_dir / "model.pt")  # state_dicts
    assert killed_w.keys() == whole_w.keys()
    for name in killed_w:
        np.testing.assert_array_equal(killed_w[name].numpy(), whole_w[name].numpy())
    summary = json.loads((seed_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["resumed"][0]["previous_status"] == "crashed"
    assert summary["resumed"][0]["from_round"] == done
    views = [json.loads(line) for line in (seed_dir / "views.jsonl").read_text().splitlines()]
    whole_views = [json.loads(line) for line in (whole_dir / "views.jsonl").read_text().splitlines()]
    def keys(vs):
        return [(v["round"], v["stage"], v["sender"]) for v in vs]

    assert keys(views) == keys(whole_views)


def test_a_crash_after_charging_is_not_charged_twice_on_resume(tmp_path, experiment, monkeypatch):
    """Deterministic version of the kill case: the run dies in round 1 after every site's ledger was
    charged for it; the resumed round 1 replaces that charge (kept in the file as superseded)."""
    from secure_fl.tasks import base

    exp = load_experiment(experiment)
    calls = {"n": 0}
    real = base.Task.evaluate

    def flaky(self, model):
        calls["n"] += 1
        if calls["n"] == 2:  # the evaluation of round 1: its charges are already in the ledgers
            raise RuntimeError("power cut")
        return real(self, model)

    monkeypatch.setattr(base.Task, "evaluate", flaky)
    with pytest.raises(RuntimeError, match="power cut"):
        run_experiment(exp, tmp_path / "runs", ["dp-seeded"], show_progress=False, run_id="crashed")
    monkeypatch.setattr(base.Task, "evaluate", real)
    run_dir = tmp_path / "runs" / "tiny" / "crashed"
    seed_dir = run_dir / "dp-seeded" / "seed0"
    assert [r.round for r in PrivacyLedger(seed_dir / "sites/site1/ledger.sqlite", "site1").records()] == [0, 1]
    assert run_status(seed_dir).startswith("failed: RuntimeError: power cut")
    result = resume_experiment(run_dir, show_progress=False)
    whole = run_experiment(exp, tmp_path / "runs", ["dp-seeded"], show_progress=False, run_id="whole")
    assert result.runs[0].status == "finished" and result.runs[0].metrics == whole.runs[0].metrics
    whole_dir = Path(whole.runs[0].path)
    for s in SITES:
        assert _ledger(seed_dir, s) == _ledger(whole_dir, s)
        history = PrivacyLedger(seed_dir / "sites" / s / "ledger.sqlite", s).records(include_superseded=True)
        got = [(r.round, r.superseded_by is not None) for r in history]
        assert got == [(0, False), (1, True), (1, False), (2, False)]
    resume_experiment(run_dir, show_progress=False)  # finished: nothing runs again, nothing is charged
    assert [r[0] for r in _ledger(seed_dir, "site1")] == [0, 1, 2]


def test_resume_refuses_a_changed_protocol_and_a_missing_folder(tmp_path, experiment, capsys):
    out = tmp_path / "runs"
    assert main(["run", str(experiment), "--protocol", "dp-seeded", "--rounds", "1", "--out", str(out),
                 "--run-id", "r", "--quiet"]) == 0
    proto = tmp_path / "dp-seeded.toml"
    proto.write_text(proto.read_text().replace("noise_multiplier = 2.0", "noise_multiplier = 3.0"))
    assert main(["run", "--resume", str(out / "tiny" / "r"), "--quiet"]) == 2
    assert "changed since the run started" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path / "nowhere"), "--quiet"]) == 2
    assert "no resolved.json there" in capsys.readouterr().err
    assert main(["run", str(experiment), "--resume", str(out / "tiny" / "r")]) == 2
    assert "--resume continues a run with its own settings" in capsys.readouterr().err


def test_summary_is_written_at_start_and_each_round(tmp_path, experiment, monkeypatch):
    from secure_fl.run import federation

    seen = []
    real = federation._write_summary

    def spy(folder, summary):
        real(folder, summary)
        seen.append(json.loads((folder.path / "summary.json").read_text()))

    monkeypatch.setattr(federation, "_write_summary", spy)
    run_experiment(load_experiment(experiment), tmp_path, ["dp-seeded"], show_progress=False)
    assert [(s["status"], s["rounds_done"]) for s in seen] == [("running", 0), ("running", 1), ("running", 2),
                                                               ("running", 3), ("finished", 3)]
    assert all(s["pid"] == os.getpid() for s in seen)


def test_per_site_table_says_who_took_part_and_why_not(tmp_path, capsys, monkeypatch):
    """site1's budget is below one round's cost: refused every round, never charged; site3's lasts one
    round of two. The table and compare.json say so."""
    monkeypatch.setenv("COLUMNS", "250")
    _seeded_dp_protocol(tmp_path)
    proto = tmp_path / "dp-seeded.toml"
    budget = "secure_noise = false\nsite_budgets = { site1 = 1.0 }"
    proto.write_text(proto.read_text().replace("secure_noise = false", budget))
    path = tmp_path / "e.toml"
    path.write_text('name = "e"\nprotocols = ["dp-seeded.toml"]\nrounds = 2\n[task]\nname = "synthetic-tabular"\n'
                    'n_sites = 3\nn_per_site = 40\n[training]\nbatch_size = 16\n')
    assert main(["run", str(path), "--out", str(tmp_path / "runs"), "--quiet"]) == 0
    out = capsys.readouterr().out
    site1 = next(line for line in out.splitlines() if "site1" in line and "dp-seeded" in line)
    assert [c.strip() for c in site1.split("│")[3:6]] == ["0/2", "0", "2"]  # took part, released, budget exhausted
    data = json.loads((resolve_latest(tmp_path / "runs" / "e") / "compare.json").read_text())
    sites = data["sites"]["dp-seeded"]
    assert sites["site1"]["took_part"] == 0 and sites["site1"]["refused"]["budget exhausted"] == 2
    assert sites["site1"]["epsilon"] is None and "privacy budget exhausted" in sites["site1"]["last_refusal"]
    assert sites["site2"]["took_part"] == 2 and sites["site2"]["epsilon"] > 0
    row = next(r for r in data["site_table"]["rows"] if r[1] == "site1")
    assert row[2] == "0/2" and row[-1] == "–"
    # site3 with a budget between its spend after one round and after two: takes part once, then refused
    spent = [r["privacy_spent"]["site3"]["epsilon"] for r in read_rounds(resolve_latest(tmp_path / "runs" / "e")
                                                                          / "dp-seeded" / "seed0")]
    proto.write_text(proto.read_text().replace("site1 = 1.0", f"site1 = 1.0, site3 = {sum(spent) / 2!r}"))
    assert main(["run", str(path), "--out", str(tmp_path / "runs"), "--quiet"]) == 0
    out = capsys.readouterr().out
    site3 = next(line for line in out.splitlines() if "│ site3 " in line and "dp-seeded" in line)
    assert [c.strip() for c in site3.split("│")[3:6]] == ["1/2", "1", "1"], out
    assert float(site3.split("│")[-2]) == pytest.approx(spent[0], abs=5e-3)  # the ε it did spend
    sites = json.loads((resolve_latest(tmp_path / "runs" / "e") / "compare.json").read_text())["sites"]["dp-seeded"]
    assert sites["site3"]["took_part"] == 1 and sites["site3"]["refused"]["budget exhausted"] == 1
    assert sites["site3"]["epsilon"] == pytest.approx(spent[0])


def test_compare_json_is_strict(tmp_path, experiment):
    assert strict_json({"a": float("nan"), "b": [float("inf")]}) == '{"a": null, "b": [null]}'
    run_experiment(load_experiment(experiment), tmp_path, ["pooled"], show_progress=False)
    text = (resolve_latest(tmp_path / "tiny") / "compare.json").read_text()

    def refuse(name):
        raise ValueError(f"non-strict JSON constant {name}")

    data = json.loads(text, parse_constant=refuse)
    assert data["runs"][0]["variant"] == "pooled" and data["table"]["header"][0] == "protocol"


@pytest.mark.parametrize("command", ["run", "compare"])
def test_cli_json_prints_strict_json(tmp_path, experiment, capsys, command):
    assert main([command, str(experiment), "--protocol", "pooled", "--rounds", "1", "--json", "--quiet",
                 "--out", str(tmp_path / "runs")]) == 0

    def refuse(name):
        raise ValueError(f"non-strict JSON constant {name}")

    data = json.loads(capsys.readouterr().out, parse_constant=refuse)  # stdout holds the JSON and nothing else
    assert data["runs"][0]["variant"] == "pooled" and data["rounds"] == 1


def test_tables_fit_an_80_column_terminal(tmp_path, experiment, capsys, monkeypatch):
    """rich sizes the tables to the terminal (COLUMNS here): cells fold, protocol names stay whole."""
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["run", str(experiment), "--protocol", "dp-seeded", "--rounds", "1", "--quiet",
                 "--out", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "dp-seeded" in out and "per site" in out and "site3" in out


def test_progress_goes_to_stderr_with_an_eta(tmp_path, experiment, capsys):
    run_experiment(load_experiment(experiment), tmp_path, ["pooled"], show_progress=True)
    captured = capsys.readouterr()
    assert "ETA" in captured.err and "round 3/3" in captured.err
    assert "round 3/3" not in captured.out


def test_a_library_warning_is_shown_once_even_when_filters_change_between_rounds():
    """The "once" filter action forgets what it showed whenever a catch_warnings block changes the
    filters (the accountants use one per round); the CLI drops repeats itself."""
    import warnings

    from secure_fl.cli import _quiet_library_warnings

    with warnings.catch_warnings(record=True) as log:
        warnings.simplefilter("always")
        _quiet_library_warnings()
        _quiet_library_warnings()  # idempotent: main() may run many times in one process
        for _ in range(4):
            warnings.warn("Full backward hook is firing when gradients are computed", UserWarning, stacklevel=1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
        warnings.warn("another warning", UserWarning, stacklevel=1)
    shown = [str(w.message) for w in log]
    assert shown == ["Full backward hook is firing when gradients are computed", "another warning"]


def test_reports_read_run_folders_through_the_run_records_reader(tmp_path):
    """One reader of run folders: the report's loader uses run/records.py, torn last line and all."""
    from secure_fl.report import runs as report_runs
    from secure_fl.run import records

    assert report_runs.read_jsonl is records.read_jsonl and report_runs.find_runs is records.find_runs
    exp = tmp_path / "exp"
    run = exp / "20261123T000000Z-abcdef" / "plain-fedavg" / "seed0"
    folder = records.RunFolder(run)
    folder.append("rounds.jsonl", {"round": 0, "metrics": {"pooled/auc": 0.5}}, {"round": 1})
    with open(run / "rounds.jsonl", "a") as fh:
        fh.write('[1, 2]\n{"round": 2, "metr')  # a line that is no record, then a torn last line
    (run / "summary.json").write_text("{torn")
    records.point_latest(exp, "20261123T000000Z-abcdef")
    assert records.find_runs(exp) == [run]
    loaded = report_runs.load_run(records.find_runs(exp)[0])
    assert [r["round"] for r in loaded.rounds] == [0, 1] == [r["round"] for r in records.read_rounds(run)]
    assert loaded.summary == {} and loaded.variant == "plain-fedavg"
