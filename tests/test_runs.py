"""Whole federations on small settings: each task, determinism, run folders, CLI, views."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tomllib

from secure_fl.cli import main
from secure_fl.protocol.spec import list_protocols
from secure_fl.run.compare import run_experiment
from secure_fl.run.experiment import parse_experiment
from secure_fl.run.records import read_rounds
from secure_fl.tasks.registry import build_task
from secure_fl.training.config import TrainingConfig
from secure_fl.training.flat import flatten, load_flat
from secure_fl.training.local import train_local


def _exp(text: str):
    return parse_experiment(tomllib.loads(text), "tiny.toml")


def test_local_training_is_deterministic_under_a_seed():
    task = build_task("synthetic-faces", {"n_sites": 2})
    site = task.sites[0]
    cfg = TrainingConfig(local_epochs=2, batch_size=8, lr=0.05)
    deltas = []
    for seed in (5, 5, 6):
        model = task.make_model(0)
        deltas.append(train_local(model, site.x_train, site.y_train, cfg, task.loss_fn(), seed).delta)
    np.testing.assert_array_equal(deltas[0], deltas[1])
    assert not np.array_equal(deltas[0], deltas[2])
    assert deltas[0].dtype == np.float32 and deltas[0].shape == (sum(p.numel() for p in model.parameters()),)


def test_local_steps_override_epochs():
    task = build_task("synthetic-tabular", {"n_sites": 1, "n_per_site": 40})
    s = task.sites[0]
    res = train_local(
        task.make_model(0), s.x_train, s.y_train, TrainingConfig(local_steps=7, batch_size=4), task.loss_fn(), 0
    )
    assert res.steps == 7


def test_flat_round_trip():
    model = build_task("synthetic-tabular", {}).make_model(1)
    v = flatten(model)
    load_flat(model, v * 2)
    np.testing.assert_allclose(flatten(model), v * 2)
    with pytest.raises(ValueError, match="the model needs"):
        load_flat(model, v[:-1])


@pytest.mark.parametrize(
    "task",
    [
        'name = "heart-disease"\nmodel = "mlp"',
        'name = "synthetic-tabular"',
        'name = "faces"\nn_sites = 3\npartition = "dirichlet"\nalpha = 1.0\nimage_size = [28, 23]',
        'name = "synthetic-faces"\nn_sites = 2',
    ],
)
def test_whole_run_of_each_task(tmp_path, tiny_experiment_toml, task):
    exp = _exp(tiny_experiment_toml(task=task, rounds=2))
    result = run_experiment(exp, tmp_path, show_progress=False)
    assert [r.status for r in result.runs] == ["finished"] * 3
    fed = result.runs[0]
    assert fed.rounds_done == 2 and fed.bytes_up_per_site_round > 0
    run_dir = Path(fed.path)
    rounds = read_rounds(run_dir)
    assert [r["round"] for r in rounds] == [0, 1]
    assert all(r["applied"] for r in rounds)
    assert (run_dir / "model.pt").exists() and (run_dir / "resolved.json").exists()
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"
    assert (tmp_path / "tiny" / "latest" / "compare.md").read_text().count("\n") >= 4
    assert result.out_dir.parent == tmp_path / "tiny" and run_dir.parent.parent == result.out_dir


def test_fedavg_learns_and_is_close_to_pooled_on_heart_disease(tmp_path, tiny_experiment_toml):
    exp = _exp(tiny_experiment_toml(task='name = "heart-disease"', rounds=15))
    result = run_experiment(exp, tmp_path, show_progress=False)
    auc = {r.variant: r.metrics["pooled/auc"] for r in result.runs}
    assert auc["plain-fedavg"] > 0.8
    assert abs(auc["plain-fedavg"] - auc["pooled"]) < 0.05


def test_same_seed_same_run(tmp_path, tiny_experiment_toml):
    text = tiny_experiment_toml(protocols='["plain-fedavg"]', extra="[federation]\nfraction = 0.5\ndropout = 0.2")
    a = run_experiment(_exp(text), tmp_path / "a", show_progress=False).runs[0]
    b = run_experiment(_exp(text), tmp_path / "b", show_progress=False).runs[0]
    assert a.metrics == b.metrics
    ra, rb = read_rounds(Path(a.path)), read_rounds(Path(b.path))
    assert [r["participants"] for r in ra] == [r["participants"] for r in rb]


def test_dropouts_and_min_sites_are_recorded(tmp_path, tiny_experiment_toml):
    text = tiny_experiment_toml(
        protocols='["plain-fedavg"]', rounds=4, extra="[federation]\ndropout = 0.6\nmin_sites = 3"
    )
    run = run_experiment(_exp(text), tmp_path, show_progress=False).runs[0]
    rounds = read_rounds(Path(run.path))
    assert any(r["dropped"] for r in rounds)
    for r in rounds:
        if len(r["participants"]) < 3:
            assert not r["applied"] and "min_sites" in r["aborted"]
    assert run.aborted_rounds == sum(not r["applied"] for r in rounds)


def test_crashed_run_leaves_finished_rounds_readable(tmp_path, tiny_experiment_toml, monkeypatch):
    from secure_fl.tasks import base

    exp = _exp(tiny_experiment_toml(protocols='["plain-fedavg"]', rounds=3))
    calls = {"n": 0}
    real = base.Task.evaluate

    def flaky(self, model):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("power cut")
        return real(self, model)

    monkeypatch.setattr(base.Task, "evaluate", flaky)
    with pytest.raises(RuntimeError, match="power cut"):
        run_experiment(exp, tmp_path, show_progress=False)
    run_dir = tmp_path / "tiny" / "latest" / "plain-fedavg" / "seed0"
    assert [r["round"] for r in read_rounds(run_dir)] == [0, 1]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"].startswith("failed: RuntimeError: power cut") and summary["rounds_done"] == 2
    assert "power cut" in (run_dir / "error.txt").read_text()


def test_cli_compare_prints_the_table(tmp_path, tiny_experiment_toml, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich sizes tables to the terminal; a wide one keeps headers on one line
    path = tmp_path / "tiny.toml"
    path.write_text(tiny_experiment_toml())
    assert main(["compare", str(path), "--out", str(tmp_path / "runs"), "--quiet"]) == 0
    out = capsys.readouterr().out
    for word in ("plain-fedavg", "pooled", "local-only", "auc", "KB up", "s/round"):
        assert word in out
    assert main(["run", str(path), "--protocol", "pooled", "--out", str(tmp_path / "runs"), "--quiet"]) == 0


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "missing.toml")]) == 2
    assert "experiment spec not found" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'name = "x"\nprotocols = ["plain-fedavg"]\n[task]\nname = "synthetic-tabular"\n[training]\nlr = -1\n'
    )
    assert main(["compare", str(bad), "--quiet"]) == 2
    assert "[training].lr: must be > 0, found -1" in capsys.readouterr().err


def test_cli_protocols_lists_catalogue(capsys):
    assert main(["protocols"]) == 0
    out = capsys.readouterr().out
    assert "plain-fedavg" in out and "local-only" in out and "invalid" not in out


@pytest.mark.parametrize("name", list_protocols())
def test_aggregator_never_sees_a_plain_site_update_unless_the_spec_says_so(tmp_path, tiny_experiment_toml, name):
    """docs/architecture.md, "Rules" (views are explicit): checked for every protocol in protocols/."""
    exp = _exp(
        tiny_experiment_toml(
            protocols=f'["{name}"]', rounds=1, task='name = "synthetic-tabular"\nn_sites = 3\nn_per_site = 40'
        )
    )
    spec = exp.variants[0].spec
    run = run_experiment(exp, tmp_path, show_progress=False).runs[0]
    views = [json.loads(line) for line in (Path(run.path) / "views.jsonl").read_text().splitlines()]
    site_views = [v for v in views if v["sender"] != "aggregator"]
    assert site_views, "the aggregator carried no site message"
    kinds = {v["kind"] for v in site_views}
    if spec.threat_model.aggregator_sees != "plain":
        assert "plain" not in kinds, (
            f"{name}: aggregator saw plain site messages but the spec says {spec.threat_model.aggregator_sees!r}"
        )
        assert spec.threat_model.aggregator_sees in kinds


def test_a_failing_site_is_dropped_and_the_round_goes_on(tmp_path, tiny_experiment_toml, monkeypatch):
    from secure_fl.run import federation

    real = federation.train_local

    def flaky(model, x, y, *a, **k):
        if len(y) == 90 and flaky.calls == 0:  # the first site's first round
            flaky.calls += 1
            raise OSError("site disk unreadable")
        return real(model, x, y, *a, **k)

    flaky.calls = 0
    monkeypatch.setattr(federation, "train_local", flaky)
    run = run_experiment(_exp(tiny_experiment_toml(protocols='["plain-fedavg"]')), tmp_path, show_progress=False).runs[
        0
    ]
    first = read_rounds(Path(run.path))[0]
    assert first["applied"] and first["dropped"] == {"site1": "OSError in local training: site disk unreadable"}
    assert first["participants"] == ["site2", "site3", "site4"]


def test_rerun_starts_a_new_run_folder_with_fresh_simulated_ledgers(tmp_path, tiny_experiment_toml):
    text = tiny_experiment_toml(protocols='["dp-sgd-local"]', rounds=2)
    first = run_experiment(_exp(text), tmp_path, show_progress=False).runs[0]
    again = run_experiment(_exp(text), tmp_path, show_progress=False).runs[0]
    assert first.epsilon and first.epsilon == again.epsilon
    assert first.path != again.path and len(read_rounds(Path(first.path))) == 2  # the first run is kept


@pytest.mark.parametrize("protected", ["ckks-fedavg", "secagg-fedavg", "secagg-plus-fedavg"])
def test_protected_round_gives_the_plaintext_model(tmp_path, tiny_experiment_toml, protected):
    """From the same global model, one protected round gives the plaintext FedAvg model up to
    CKKS precision (measured on faces: 2.6e-7 relative) or one quantisation step per coordinate
    (stochastic rounding of each site's update to 16 bits over [-clip_range, clip_range])."""
    from secure_fl.run.federation import Federation

    text = tiny_experiment_toml(
        protocols=f'["plain-fedavg", "{protected}"]', task='name = "synthetic-faces"\nn_sites = 3'
    )
    exp = _exp(text)
    task = build_task(exp.task_name, exp.task_params)
    plain = Federation(exp, task, exp.variants[0], 0, tmp_path / "a")
    other = Federation(exp, task, exp.variants[1], 0, tmp_path / "b")
    for r in range(2):
        other.weights = plain.weights.copy()
        start = plain.weights.copy()
        plain.round(r)
        other.round(r)
        d_plain, d_other = plain.weights - start, other.weights - start
        if protected == "ckks-fedavg":
            rel = np.linalg.norm(d_plain - d_other) / np.linalg.norm(d_plain)
            assert rel < 1e-5, rel
        else:
            params = exp.variants[1].spec.secure_sum_table
            step = 2 * params["clip_range"] / (2 ** params["bits"] - 1)
            assert np.abs(d_plain).max() < params["clip_range"]  # nothing was clipped
            assert np.abs(d_plain - d_other).max() <= step * 1.001
            assert np.abs(d_plain - d_other).max() > 0  # quantisation did happen
