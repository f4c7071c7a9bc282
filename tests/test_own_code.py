"""Tasks and models from the user's own code; RGB image folders; the worked examples build."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tomllib
from torch import nn

from secure_fl.errors import SpecError
from secure_fl.tasks.registry import build_task

ROOT = Path(__file__).resolve().parents[1]
RISK = str(ROOT / "examples" / "own_code" / "risk.py")
HOSP = ROOT / "examples" / "hospital_csv"


def _example_task(name: str) -> dict:
    return tomllib.loads((ROOT / "examples" / name).read_text())["task"]


def _example(name: str):
    """The example's task, its paths resolved as `secure-fl compare` resolves them (from the TOML's folder)."""
    from secure_fl.run.experiment import load_experiment

    exp = load_experiment(ROOT / "examples" / name)
    return build_task(exp.task_name, exp.task_params)


def test_hospital_csv_example_builds(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the example's paths start at its own folder, not the working folder
    task = _example("hospital_csv/experiment.toml")
    sizes = [(s.name, s.n_train, s.n_test) for s in task.sites]
    assert sizes == [("hospA", 120, 40), ("hospB", 75, 25), ("hospC", 60, 20)]
    features = ["age", "sex=M", "cp=atypical", "cp=non-anginal", "cp=asymptomatic", "chol", "restecg"]
    assert task.info["features"] == features


def test_own_model_in_the_csv_task(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    task = _example("own_code/own-model.toml")
    model = task.make_model(0)
    assert isinstance(model, nn.Sequential) and model[0].out_features == 8
    target, kwargs = task.model_spec()
    assert target == f"{RISK}:make_model"  # resolved from the TOML's folder: model.json works from anywhere
    assert kwargs == {"n_features": 7, "num_classes": 2, "hidden": 8}


def test_own_task_builder(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    task = _example("own_code/own-task.toml")
    assert task.name == "age-risk" and [s.name for s in task.sites] == ["hospA", "hospC"]
    assert task.sites[0].x_train.shape[1] == 2


def test_own_code_errors_name_the_target(tmp_path):
    with pytest.raises(SpecError, match=r"'nowhere.py:build': file nowhere.py not found"):
        build_task("nowhere.py:build", {})
    with pytest.raises(SpecError, match=r"has no callable 'missing'"):
        build_task(f"{RISK}:missing", {})
    with pytest.raises(SpecError, match=r"no module 'no_such_pkg'"):
        build_task("no_such_pkg.tasks:build", {})
    bad = tmp_path / "bad.py"
    bad.write_text("def build(params, where):\n    return 42\n")
    with pytest.raises(SpecError, match="returned int, not a secure_fl Task"):
        build_task(f"{bad}:build", {})
    with pytest.raises(SpecError, match=r"model: expected one of \['logreg', 'sigmoid', 'mlp'\] or \"module:"):
        build_task("synthetic-tabular", {"model": "forest"})


def test_rgb_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, colour in (("red", 0), ("blue", 2)):
        for i in range(4):
            img = np.zeros((12, 12, 3), dtype=np.uint8)
            img[..., colour] = 200 + i
            p = tmp_path / "A" / c / f"{i}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img + rng.integers(0, 20, img.shape, dtype=np.uint8)).save(p)
    task = build_task("image-folder", {"sites": [{"name": "A", "data": str(tmp_path / "A")}], "image_size": [8, 8],
                                       "channels": 3})
    x = task.sites[0].x_train[:]  # kept on disk (load = "lazy"); [:] decodes every image
    assert x.shape[1:] == (3, 8, 8)
    red = task.sites[0].y_train == task.info["classes"].index("red")
    assert float(x[red][:, 0].mean()) > 0.7 and float(x[red][:, 2].mean()) < 0.1
    assert task.make_model(0)(x).shape == (len(x), 2)
    assert task.model_spec()[1]["in_channels"] == 3


def test_image_folder_example_builds(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_images", ROOT / "examples" / "image_folder" / "make_images.py")
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    rng = np.random.default_rng(0)
    make.folder(tmp_path / "hospA" / "train", rng, 3)
    make.folder(tmp_path / "hospA" / "test", rng, 2)
    make.folder(tmp_path / "hospB", rng, 4)
    params = _example_task("image_folder/experiment.toml")
    for site in params["sites"]:
        for key in ("train", "test", "data"):
            if key in site:
                site[key] = site[key].replace("data", str(tmp_path), 1)
    task = build_task(params.pop("name"), params)
    assert [(s.name, s.n_train, s.n_test) for s in task.sites] == [("hospA", 6, 4), ("hospB", 6, 2)]
    assert task.sites[0].x_train.shape[1:] == (3, 32, 32) and task.info["classes"] == ["lesion-blue", "lesion-red"]


def test_predict_scores_an_image_folder(tmp_path, capsys):
    import csv

    import tomllib as toml
    from PIL import Image

    from secure_fl.cli import main
    from secure_fl.run.compare import run_experiment
    from secure_fl.run.experiment import parse_experiment

    for site in ("A", "B"):
        for c, colour in (("red", 0), ("blue", 2)):
            for i in range(4):
                img = np.zeros((10, 10, 3), dtype=np.uint8)
                img[..., colour] = 150 + 20 * i
                p = tmp_path / site / c / f"{i}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(p)
    text = f"""
name = "img"
protocols = ["plain-fedavg"]
rounds = 1
[task]
name = "image-folder"
image_size = [8, 8]
channels = 3
sites = [{{name = "A", data = "{tmp_path / 'A'}"}}, {{name = "B", data = "{tmp_path / 'B'}"}}]
[training]
local_epochs = 1
batch_size = 4
lr = 0.01
optimizer = "adam"
"""
    result = run_experiment(parse_experiment(toml.loads(text), "img.toml"), tmp_path / "runs", show_progress=False)
    run_dir = result.runs[0].path
    assert main(["predict", run_dir, "--data", str(tmp_path / "A" / "red")]) == 0
    rows = list(csv.reader(capsys.readouterr().out.splitlines()))
    assert rows[0] == ["file", "p(blue)", "p(red)", "predicted"] and len(rows) == 5
    assert rows[1][0].endswith("0.png") and abs(float(rows[1][1]) + float(rows[1][2]) - 1) < 1e-5
