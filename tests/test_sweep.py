"""``secure-fl sweep``: grid planning, bad keys, resume, and the CSV a sweep writes."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest

from secure_fl.cli import main
from secure_fl.errors import SpecError
from secure_fl.run.experiment import parse_experiment
from secure_fl.run.federation import RunSummary
from secure_fl.run.sweep import grid_from, parse_set, plan_cells, run_sweep

EXP = {
    "name": "sw", "protocols": ["plain-fedavg", "dp-sgd-local", "pooled"], "seeds": [0, 1], "rounds": 1,
    "task": {"name": "synthetic-tabular", "n_sites": 2, "n_per_site": 40},
    "training": {"local_epochs": 1, "batch_size": 8, "lr": 0.1},
    "sweep": {"privacy.target_epsilon": [1.0, 4.0]},
}


def _exp() -> object:
    return parse_experiment(EXP, "sw.toml")


def test_parse_set_reads_toml_literals_and_bare_words() -> None:
    grid = parse_set(["privacy.target_epsilon=0.5,1,inf", "training.optimizer=sgd,adam"])
    assert grid["privacy.target_epsilon"][0] == 0.5 and grid["privacy.target_epsilon"][1] == 1
    assert math.isinf(grid["privacy.target_epsilon"][2])
    assert grid["training.optimizer"] == ["sgd", "adam"]
    with pytest.raises(SpecError, match="KEY=V1,V2"):
        parse_set(["privacy.target_epsilon"])


def test_grid_is_protocols_x_settings_x_seeds_and_privacy_keys_skip_plain_protocols() -> None:
    exp = _exp()
    cells = plan_cells(exp, grid_from(exp, parse_set(["training.lr=0.1,0.5"])))
    # plain-fedavg and pooled: 2 lrs x 2 seeds; dp-sgd-local: 2 ε x 2 lrs x 2 seeds
    assert len(cells) == 2 * 2 + 2 * 2 + 2 * 2 * 2
    dp = [c for c in cells if c.protocol == "dp-sgd-local"]
    assert {(c.settings["privacy.target_epsilon"], c.settings["training.lr"]) for c in dp} == {
        (1.0, 0.1), (1.0, 0.5), (4.0, 0.1), (4.0, 0.5)}
    assert all(c.variant.spec.privacy.target_epsilon == c.settings["privacy.target_epsilon"] for c in dp)
    assert {c.experiment.training.lr for c in cells} == {0.1, 0.5}
    assert all("privacy.target_epsilon" not in c.settings for c in cells if c.protocol != "dp-sgd-local")
    assert len({c.cell_id for c in cells}) == len(cells)


@pytest.mark.parametrize("item, match", [
    ("training.learning_rate=0.1", "learning_rate"),          # unknown key of an experiment table
    ("privacy.target_epsilonn=1", "target_epsilonn"),         # unknown key of a protocol table
    ("optimiser.lr=0.1", "no listed protocol has a table 'optimiser'"),
    ("lr=0.1", "sweep key 'lr': unknown key"),
    ("privacy.target_epsilon=-1", "target_epsilon"),          # out of range
    ("privacy.target_epsilon=inf", "plain-fedavg"),           # ε = ∞ is the protocol without DP
])
def test_bad_sweep_key_or_value_is_a_clear_error_before_anything_runs(tmp_path: Path, item: str, match: str) -> None:
    exp = _exp()
    ran = []
    with pytest.raises(SpecError, match=match):
        run_sweep(exp, grid_from(exp, parse_set([item])), tmp_path / "s", log=None,
                  run_cell=lambda cell, task, d: ran.append(cell))
    assert ran == []


def _fake(calls: list[str], fail: set[str] = frozenset()):  # type: ignore[no-untyped-def]
    def run_cell(cell, task, run_dir):  # type: ignore[no-untyped-def]
        calls.append(cell.cell_id)
        if cell.label in fail:
            raise RuntimeError("boom")
        eps = {"site-0": {"epsilon": 0.9 * cell.settings.get("privacy.target_epsilon", 0), "adjacency": "x"}} \
            if "privacy.target_epsilon" in cell.settings else {}
        return RunSummary(cell.protocol, cell.seed, "finished", 1, metrics={"pooled/auc": 0.5 + cell.seed / 10},
                          epsilon=eps, bytes_up_per_site_round=100.0, seconds_per_round=0.2)
    return run_cell


def test_resume_skips_finished_cells_and_retries_failed_ones(tmp_path: Path) -> None:
    exp = _exp()
    grid = grid_from(exp)
    failing = "dp-sgd-local target_epsilon=4 seed 1"
    first: list[str] = []
    r1 = run_sweep(exp, grid, tmp_path / "s", log=None, figures=False, run_cell=_fake(first, {failing}))
    assert len(first) == 8 and r1.ran == 7 and len(r1.failed) == 1 and failing in r1.failed[0]
    second: list[str] = []
    log = io.StringIO()
    r2 = run_sweep(exp, grid, tmp_path / "s", log=log, figures=False, run_cell=_fake(second))
    assert len(second) == 1 and second[0].startswith("dp-sgd-local_privacy.target_epsilon=4_seed1")
    assert r2.skipped == 7 and r2.ran == 1 and len(r2.rows) == 8
    assert "1 to run, 7 finished" in log.getvalue() and "0 left, done" in log.getvalue()
    third: list[str] = []
    run_sweep(exp, grid, tmp_path / "s", log=None, figures=False, run_cell=_fake(third))
    assert third == []
    # --collect gathers without running, even where cells are missing
    collected = run_sweep(exp, grid_from(exp, parse_set(["training.lr=0.3"])), tmp_path / "s", log=None,
                          figures=False, run_cell=_fake(third), collect_only=True)
    assert third == [] and collected.rows == []
    # a changed setting is a new cell, never the stale one
    fourth: list[str] = []
    run_sweep(exp, grid_from(exp, parse_set(["training.lr=0.2"])), tmp_path / "s", log=None, figures=False,
              run_cell=_fake(fourth))
    assert len(fourth) == 8


def test_csv_has_one_row_per_cell_with_settings_metrics_epsilon_and_costs(tmp_path: Path) -> None:
    exp = _exp()
    log = io.StringIO()
    res = run_sweep(exp, grid_from(exp), tmp_path / "s", log=log, figures=True, run_cell=_fake([]))
    rows = list(csv.DictReader((tmp_path / "s" / "results.csv").open()))
    assert len(rows) == 8
    dp = sorted((r for r in rows if r["protocol"] == "dp-sgd-local"), key=lambda r: (r["privacy.target_epsilon"],
                                                                                      r["seed"]))
    assert [(float(r["privacy.target_epsilon"]), int(r["seed"])) for r in dp] == [(1, 0), (1, 1), (4, 0), (4, 1)]
    assert [float(r["epsilon_spent_max"]) for r in dp] == pytest.approx([0.9, 0.9, 3.6, 3.6])
    assert [float(r["pooled/auc"]) for r in dp] == pytest.approx([0.5, 0.6, 0.5, 0.6])
    plain = [r for r in rows if r["protocol"] == "plain-fedavg"]
    assert len(plain) == 2 and all(r["privacy.target_epsilon"] == "" and r["epsilon_spent_max"] == "" for r in plain)
    assert all(float(r["bytes_up_per_site_round"]) == 100.0 and r["status"] == "finished" for r in rows)
    assert "ETA" in log.getvalue()
    assert {p.name for p in res.figures} == {"metric-vs-target_epsilon.png", "cost.png"}
    assert all(p.stat().st_size > 1000 for p in res.figures)


def test_sweep_command_runs_real_cells(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "sw.toml"
    spec.write_text('name = "sw"\nprotocols = ["plain-fedavg", "pooled"]\nseeds = [0]\nrounds = 1\n'
                    '[task]\nname = "synthetic-tabular"\nn_sites = 2\nn_per_site = 40\n'
                    '[training]\nlocal_epochs = 1\nbatch_size = 8\nlr = 0.1\n')
    args = ["sweep", str(spec), "--out", str(tmp_path / "runs"), "--set", "training.lr=0.1,0.3", "--no-figures"]
    assert main(args) == 0
    rows = list(csv.DictReader((tmp_path / "runs" / "sw" / "sweep" / "results.csv").open()))
    assert sorted((r["protocol"], r["training.lr"]) for r in rows) == [
        ("plain-fedavg", "0.1"), ("plain-fedavg", "0.3"), ("pooled", "0.1"), ("pooled", "0.3")]
    assert all(0.0 <= float(r["pooled/auc"]) <= 1.0 and int(r["rounds"]) == 1 for r in rows)
    capsys.readouterr()
    assert main(args) == 0
    assert "0 run now, 4 already finished" in capsys.readouterr().out
    assert main(["sweep", str(spec), "--out", str(tmp_path / "runs"), "--set", "training.lrr=0.1"]) == 2


def test_metric_over_rounds_is_read_from_each_cells_round_record_and_drawn(tmp_path: Path) -> None:
    from secure_fl.report.sweep_figures import round_curves

    inner = _fake([])

    def run_cell(cell, task, run_dir):  # type: ignore[no-untyped-def]
        run_dir.mkdir(parents=True, exist_ok=True)
        base = cell.settings.get("privacy.target_epsilon", 10) / 10 + cell.seed
        lines = [json.dumps({"round": i, "metrics": {"pooled/auc": base + i}}) for i in range(3)]
        lines.insert(1, json.dumps({"round": 9, "aborted": "x", "metrics": {}}))  # a round that released nothing
        (run_dir / "rounds.jsonl").write_text("\n".join(lines) + "\n")
        return inner(cell, task, run_dir)

    exp = _exp()
    res = run_sweep(exp, grid_from(exp), tmp_path / "s", log=None, figures=True, run_cell=run_cell)
    assert "rounds.png" in {p.name for p in res.figures}
    curves = round_curves(res.rows, tmp_path / "s", "privacy.target_epsilon", "pooled/auc")
    assert set(curves) == {1.0, 4.0, math.inf}
    seeds = sorted(curves[4.0]["dp-sgd-local"])
    assert seeds[0][0] == pytest.approx(0.4) and math.isnan(seeds[0][1]) and seeds[1][3] == pytest.approx(3.4)
    assert sorted(c[0] for c in curves[math.inf]["plain-fedavg"]) == pytest.approx([1.0, 2.0])
    from secure_fl.report.sweep_figures import rounds_figure

    only_dp = [r for r in res.rows if r["protocol"] == "dp-sgd-local"]  # a sweep without a no-DP protocol
    assert rounds_figure(only_dp, tmp_path / "s", "privacy.target_epsilon", "pooled/auc", tmp_path / "r.png", "t")
