"""model.pt as a state_dict with model.json; `secure-fl predict` scores new patients."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch

from secure_fl.cli import main
from secure_fl.cli.predict import predict_file
from secure_fl.errors import DataError
from secure_fl.run.compare import run_experiment
from secure_fl.run.experiment import parse_experiment
from secure_fl.tasks.export import load_model


def _site_files(tmp_path: Path, name: str, seed: int) -> tuple[str, str]:
    rng = np.random.default_rng(seed)
    out = []
    for part, n in (("train", 40), ("test", 12)):
        rows = ["age,sex,chol,num"]
        for _ in range(n):
            age, chol = 55 + 10 * rng.normal(), 230 + 40 * rng.normal()
            sex = rng.choice(["M", "F"])
            risk = 0.08 * (age - 55) + (1.0 if sex == "M" else -1.0) + rng.normal()
            num = int(np.clip(np.round(risk + 1), 0, 4))
            rows.append(f"{age:.1f},{sex},{chol:.0f},{num}")
        p = tmp_path / f"{name}_{part}.csv"
        p.write_text("\n".join(rows) + "\n")
        out.append(str(p))
    return out[0], out[1]


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("hosp")
    a_tr, a_te = _site_files(tmp_path, "a", 0)
    b_tr, b_te = _site_files(tmp_path, "b", 1)
    text = f"""
name = "hosp"
protocols = ["plain-fedavg", "local-only"]
rounds = 1
[task]
name = "csv"
label_column = "num"
label_map = {{"0" = 0, "1" = 1, "2" = 1, "3" = 1, "4" = 1}}
positive = 1
[task.columns]
age = "numeric"
sex = {{type = "categorical", levels = ["F", "M"], reference = "F"}}
chol = "numeric"
[[task.sites]]
name = "hospA"
train = "{a_tr}"
test = "{a_te}"
[[task.sites]]
name = "hospB"
train = "{b_tr}"
test = "{b_te}"
[training]
local_epochs = 2
batch_size = 8
lr = 0.1
"""
    exp = parse_experiment(tomllib.loads(text), "hosp.toml")
    result = run_experiment(exp, tmp_path / "runs", show_progress=False)
    assert [r.status for r in result.runs] == ["finished"] * 2
    return result, a_te


def test_model_pt_is_a_state_dict_with_model_json(csv_run):
    result, _ = csv_run
    run_dir = Path(result.runs[0].path)
    state = torch.load(run_dir / "model.pt", weights_only=True)
    assert set(state) == {"linear.weight", "linear.bias"}
    card = json.loads((run_dir / "model.json").read_text())
    assert card["architecture"] == {"class": "secure_fl.tasks.models:LogisticRegression",
                                    "kwargs": {"n_features": 3, "num_classes": 2}}
    assert card["classes"] == ["0", "1"] and card["positive"] == "1"
    assert card["features"] == ["age", "sex=M", "chol"]
    # model.json holds no site's own statistics; each site's are in its own folder of the run
    assert "sites" not in card["preprocessing"] and "pooled" not in card["preprocessing"]
    text = (run_dir / "model.json").read_text()
    for name in ("hospA", "hospB"):
        own = json.loads((run_dir / "sites" / name / "preprocessing.json").read_text())
        assert own["site"] == name and own["mean"] == result.task.info["preprocessing"]["sites"][name]["mean"]
        assert not any(json.dumps(v) in text for v in own["mean"] + own["sd"] if v not in (0.0, 1.0))
    model, _ = load_model(run_dir)
    np.testing.assert_array_equal(model.linear.weight.detach().numpy(), state["linear.weight"].numpy())
    per_site = json.loads((Path(result.runs[1].path) / "model.json").read_text())
    assert per_site["per_site"] is True


def test_predict_matches_the_task_on_a_sites_test_file(csv_run, tmp_path, capsys):
    result, a_test = csv_run
    run_dir = Path(result.runs[0].path)
    with pytest.raises(DataError, match=r"say whose to apply with --site"):
        predict_file(run_dir, Path(a_test))
    assert main(["predict", str(run_dir), "--data", a_test, "--site", "hospA"]) == 0
    rows = list(csv.reader(capsys.readouterr().out.splitlines()))
    assert rows[0] == ["line", "p(0)", "p(1)", "predicted"] and len(rows) == 13
    model, _ = load_model(run_dir)
    site = result.task.sites[0]
    expected = torch.softmax(model(site.x_test).double(), 1)[:, 1].detach().numpy()
    np.testing.assert_allclose([float(r[2]) for r in rows[1:]], expected, atol=1e-5)
    out = tmp_path / "scores.csv"
    assert main(["predict", str(run_dir), "--data", a_test, "--site", "hospA", "--out", str(out)]) == 0
    assert out.read_text().count("\n") == 13
    bad = tmp_path / "new.csv"
    bad.write_text("age,sex,chol\n60,X,200\n")
    assert main(["predict", str(run_dir), "--data", str(bad), "--site", "hospA"]) == 2
    assert "column 'sex' line 2: value 'X' is not one of ['F', 'M']" in capsys.readouterr().err
    bad.write_text("age,sex,chol\n60,M,200\n61,,210\n")  # a blank category must not read as the reference level
    assert main(["predict", str(run_dir), "--data", str(bad), "--site", "hospA"]) == 2
    assert "column 'sex' has missing values at line(s) 3" in capsys.readouterr().err


def test_flamby_preprocessing_saved_for_predict_reproduces_the_features():
    import pandas as pd

    from secure_fl.tasks.flamby_heart import flamby_records, flamby_test_mask
    from secure_fl.tasks.heart import load_heart_frame
    from secure_fl.tasks.registry import build_task
    from secure_fl.tasks.tabular import Preprocessor

    task = build_task("heart-disease", {"split": "flamby"})
    pre = Preprocessor.from_json(task.info["preprocessing"])
    x, num = flamby_records(load_heart_frame())["Hungary"]
    test = flamby_test_mask(num)
    cols = ["age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang", "oldpeak"]
    df = pd.DataFrame(x[test], columns=cols).astype(object)
    got = pre.transform("Hungary", df, Path("hungary.csv"))
    site = next(s for s in task.sites if s.name == "Hungary")
    np.testing.assert_allclose(got, site.x_test.numpy(), atol=1e-5)
