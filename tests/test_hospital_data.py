"""A hospital's own data: paths from the TOML's folder, federated standardisation, lazy images, every bad file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch

from secure_fl.errors import DataError, SpecError
from secure_fl.run.compare import run_experiment
from secure_fl.run.experiment import load_experiment, parse_experiment
from secure_fl.run.provenance import data_digests
from secure_fl.tasks.images import ImageFiles
from secure_fl.tasks.registry import build_task
from secure_fl.tasks.tabular import Preprocessor, moment_sums


def _table(path: Path, n: int, seed: int, shift: float = 0.0, scale: float = 1.0) -> str:
    rng = np.random.default_rng(seed)
    rows = ["age,chol,y"]
    for _ in range(n):
        age, chol = shift + scale * rng.normal(), 200 + shift + 40 * scale * rng.normal()
        rows.append(f"{age:.4f},{chol:.3f},{int(age - shift + 0.3 * rng.normal() > 0)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")
    return str(path)


_EXPERIMENT = """
name = "{name}"
protocols = {protocols}
rounds = 1
[task]
name = "csv"
label_column = "y"
standardise = "{standardise}"
[[task.sites]]
name = "hospA"
data = "{a}"
[[task.sites]]
name = "hospB"
data = "{b}"
[training]
local_epochs = 1
batch_size = 8
lr = 0.1
"""


# -- paths ------------------------------------------------------------------------------------


def test_data_paths_start_at_the_toml_folder(tmp_path, monkeypatch):
    exp_dir, elsewhere = tmp_path / "study", tmp_path / "elsewhere"
    _table(exp_dir / "data" / "a.csv", 30, 0)
    _table(exp_dir / "data" / "b.csv", 30, 1)
    (exp_dir / "study.toml").write_text(_EXPERIMENT.format(name="paths", protocols='["plain-fedavg"]',
                                                             standardise="site", a="data/a.csv", b="data/b.csv"))
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # neither data/a.csv nor the TOML is here
    exp = load_experiment(exp_dir / "study.toml")
    assert exp.task_params["sites"][0]["data"] == str(exp_dir / "data" / "a.csv")
    result = run_experiment(exp, elsewhere / "runs", show_progress=False)
    assert [r.status for r in result.runs] == ["finished"]
    # a missing file is named where it was looked for: under the TOML's folder
    (exp_dir / "bad.toml").write_text(_EXPERIMENT.format(name="bad", protocols='["plain-fedavg"]',
                                                           standardise="site", a="data/a.csv", b="data/nope.csv"))
    with pytest.raises(DataError, match=f"CSV file not found: {exp_dir / 'data' / 'nope.csv'}"):
        run_experiment(load_experiment(exp_dir / "bad.toml"), elsewhere / "runs", show_progress=False)


# -- standardisation --------------------------------------------------------------------------


def _two_sites(tmp_path: Path) -> list[dict[str, str]]:
    a = _table(tmp_path / "a.csv", 40, 0, shift=50.0, scale=5.0)
    b = _table(tmp_path / "b.csv", 60, 1, shift=70.0, scale=10.0)
    return [{"name": "hospA", "data": a}, {"name": "hospB", "data": b}]


def test_federated_standardisation_uses_the_pooled_training_rows(tmp_path):
    sites = _two_sites(tmp_path)
    raw = build_task("csv", {"sites": sites, "label_column": "y", "standardise": "none"})
    fed = build_task("csv", {"sites": sites, "label_column": "y", "standardise": "federated"})
    pooled = np.concatenate([s.x_train.numpy() for s in raw.sites]).astype(np.float64)
    mu, sd = pooled.mean(0), pooled.std(0)
    pre = fed.info["preprocessing"]
    np.testing.assert_allclose(pre["pooled"]["mean"], mu, rtol=1e-6)  # tensors are float32
    np.testing.assert_allclose(pre["pooled"]["sd"], sd, rtol=1e-5)
    assert pre["pooled"]["n"] == len(pooled)
    for r, f in zip(raw.sites, fed.sites):  # every site applies the same pooled statistics, to train and test
        np.testing.assert_allclose(f.x_train.numpy(), (r.x_train.numpy() - mu) / sd, atol=1e-5)
        np.testing.assert_allclose(f.x_test.numpy(), (r.x_test.numpy() - mu) / sd, atol=1e-5)
    # the sites' own statistics are not kept: only imputation values (none here)
    assert pre["sites"] == {"hospA": {"impute": {}}, "hospB": {"impute": {}}}
    site = build_task("csv", {"sites": sites, "label_column": "y"})  # "site": each its own (the default)
    np.testing.assert_allclose(site.sites[1].x_train.numpy().mean(0), 0, atol=1e-5)
    assert abs(float(fed.sites[1].x_train.numpy().mean(0)[0])) > 0.3  # hospB is older than the pool


def test_pooled_statistics_follow_from_the_summed_moments_alone():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 3)) * [1.0, 10.0, 100.0] + [0.0, 5.0, 250.0]
    pre = Preprocessor([], "federated")
    pre._scaled_mask = lambda: np.ones(3, dtype=bool)  # type: ignore[method-assign]
    stats = []
    for cuts in ([30, 60], [5, 80], [45, 46]):  # three different ways to split the same rows among three sites
        parts = np.split(x, cuts)
        pre.pool(np.sum([moment_sums(p) for p in parts], axis=0))
        stats.append(pre.pooled)
    assert stats[0] == stats[1] == stats[2] or all(
        np.allclose(s["mean"], stats[0]["mean"], rtol=1e-12) and np.allclose(s["sd"], stats[0]["sd"], rtol=1e-12)
        for s in stats)
    np.testing.assert_allclose(stats[0]["mean"], x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats[0]["sd"], x.std(0), rtol=1e-9)
    with pytest.raises(DataError, match=r"expected \[n, sum x"):
        pre.pool(np.zeros(4))


def test_federated_standardisation_refused_where_it_would_reveal_more(tmp_path):
    sites = _two_sites(tmp_path)
    with pytest.raises(SpecError, match=r'standardise: "federated" pools the statistics of two or more sites'):
        build_task("csv", {"sites": sites[:1], "label_column": "y", "standardise": "federated"})
    with pytest.raises(SpecError, match=r"standardise: expected one of \['site', 'federated', 'none'\]"):
        build_task("csv", {"sites": sites, "label_column": "y", "standardise": "global"})
    for protocol, why in (("ckks-fedavg", r"sums the sites' feature moments securely, which needs a public range "
                                          r"for every numeric column; give range = \[lowest, highest\] in "
                                          r"\[task.columns\] for \['age', 'chol'\]"),
                          ("dp-sgd-local", "has a DP layer and the pooled feature moments are released without noise")):
        text = _EXPERIMENT.format(name="fed", protocols=f'["{protocol}"]', standardise="federated",
                                  a=sites[0]["data"], b=sites[1]["data"])
        with pytest.raises(SpecError, match=rf"protocol '{protocol}' {why}"):
            run_experiment(parse_experiment(tomllib.loads(text), "fed.toml"), tmp_path / "runs", show_progress=False)


_RANGES = """
[task.columns]
age = {type = "numeric", range = [0, 150]}
chol = {type = "numeric", range = [-3000, 3000]}
"""


def test_federated_standardisation_through_the_protocols_secure_sum(tmp_path):
    from secure_fl.protocol.spec import load_protocol
    from secure_fl.run.standardise import standardise_through_protocol

    sites = _two_sites(tmp_path) + [{"name": "hospC", "data": _table(tmp_path / "c.csv", 30, 2, 60.0, 3.0)}]
    columns = {"age": {"type": "numeric", "range": [0, 150]}, "chol": {"type": "numeric", "range": [-3000, 3000]}}
    task = build_task("csv", {"sites": sites, "label_column": "y", "standardise": "federated", "columns": columns})
    raw = build_task("csv", {"sites": sites, "label_column": "y", "standardise": "none", "columns": columns})
    exact = task.info["preprocessing"]["pooled"]  # from the summed moments, in the clear (the simulation's)
    for name, kind in (("plain-fedavg", "plain"), ("ckks-fedavg", "ciphertext"), ("secagg-plus-fedavg", "masked")):
        run_dir = tmp_path / name
        run_dir.mkdir()
        out = standardise_through_protocol(task, load_protocol(name), run_dir)
        record = json.loads((run_dir / "standardisation.json").read_text())
        assert record["contributors"] == ["hospA", "hospB", "hospC"] and record["pooled"]["n"] == exact["n"]
        seen = {k.split(":")[1] for k in record["views"]}
        assert kind in seen and (kind == "plain" or "plain" not in seen), seen  # no site's moments in the clear
        np.testing.assert_allclose(record["pooled"]["mean"], exact["mean"], rtol=1e-3)
        np.testing.assert_allclose(record["pooled"]["sd"], exact["sd"], rtol=3e-2)  # 16-bit SecAgg quantization
        mu, sd = np.array(record["pooled"]["mean"]), np.array(record["pooled"]["sd"])
        for r, s in zip(raw.sites, out.sites):  # every site's features now use the released statistics
            np.testing.assert_allclose(s.x_train.numpy(), (r.x_train.numpy() - mu) / sd, atol=1e-4)
        assert out.info["preprocessing"]["pooled"] == record["pooled"] and task.sites[0] is not out.sites[0]
        again = standardise_through_protocol(task, load_protocol(name), run_dir)  # a resumed run: read, not re-summed
        assert again.info["preprocessing"]["pooled"] == record["pooled"]


def test_a_run_saves_the_statistics_its_secure_sum_released(tmp_path):
    sites = _two_sites(tmp_path)
    text = _EXPERIMENT.format(name="fed-secure", protocols='["secagg-plus-fedavg"]', standardise="federated",
                              a=sites[0]["data"], b=sites[1]["data"])
    c = _table(tmp_path / "c.csv", 30, 2, shift=60.0, scale=3.0)
    text = text.replace("[[task.sites]]", _RANGES + "[[task.sites]]", 1)  # SecAgg+ sums over 3 or more sites
    text = text.replace("[training]", f'[[task.sites]]\nname = "hospC"\ndata = "{c}"\n[training]')
    result = run_experiment(parse_experiment(tomllib.loads(text), "fed.toml"), tmp_path / "runs", show_progress=False)
    run_dir = Path(result.runs[0].path)
    record = json.loads((run_dir / "standardisation.json").read_text())
    assert json.loads((run_dir / "model.json").read_text())["preprocessing"]["pooled"] == record["pooled"]


def test_federated_example_prepares_from_another_folder(tmp_path, monkeypatch):
    from secure_fl.run.compare import prepare

    monkeypatch.chdir(tmp_path)
    exp = load_experiment(Path(__file__).resolve().parents[1] / "examples" / "hospital_csv" / "federated.toml")
    chosen, task = prepare(exp)  # every protocol accepted: ranges given, no DP layer
    assert [v.label for v in chosen] == ["plain-fedavg", "ckks-fedavg", "secagg-plus-fedavg"]
    assert task.federated is not None and task.federated.dim == 2 * 3  # age, chol, restecg: mean and mean square


def test_a_value_outside_its_public_range_is_refused(tmp_path):
    sites = _two_sites(tmp_path)
    columns = {"age": {"type": "numeric", "range": [0, 60]}, "chol": {"type": "numeric", "range": [-3000, 3000]}}
    with pytest.raises(DataError, match=r"b.csv: column 'age' has values outside its range \[0, 60\] at line\(s\)"):
        build_task("csv", {"sites": sites, "label_column": "y", "standardise": "federated", "columns": columns})
    with pytest.raises(SpecError, match=r"range: expected \[lowest, highest\]"):
        build_task("csv", {"sites": sites, "label_column": "y", "columns": {**columns, "age": {"type": "numeric",
                                                                                              "range": [5, 1]}}})


def test_federated_statistics_saved_with_the_model_and_applied_by_predict(tmp_path, capsys):
    from secure_fl.cli import main
    from secure_fl.tasks.export import load_model

    sites = _two_sites(tmp_path)
    text = _EXPERIMENT.format(name="fed", protocols='["plain-fedavg", "local-only"]', standardise="federated",
                              a=sites[0]["data"], b=sites[1]["data"])
    result = run_experiment(parse_experiment(tomllib.loads(text), "fed.toml"), tmp_path / "runs", show_progress=False)
    run_dir = Path(result.runs[0].path)
    card = json.loads((run_dir / "model.json").read_text())
    assert card["preprocessing"]["standardise"] == "federated" and "sites" not in card["preprocessing"]
    assert card["preprocessing"]["pooled"] == result.task.info["preprocessing"]["pooled"]
    # no --site needed: the pooled statistics are the model's; the scores equal the model on the task's features
    assert main(["predict", str(run_dir), "--data", sites[1]["data"]]) == 0
    rows = [r.split(",") for r in capsys.readouterr().out.splitlines()]
    model, _ = load_model(run_dir)
    site = result.task.sites[1]
    x_all = torch.cat([site.x_train, site.x_test])  # predict scores every row of the file
    got = np.array([float(r[2]) for r in rows[1:]])
    want = torch.softmax(model(x_all).double(), 1)[:, 1].detach().numpy()
    assert len(got) == 60
    np.testing.assert_allclose(np.sort(got), np.sort(want), atol=1e-5)


def test_site_standardisation_keeps_each_sites_statistics_in_its_own_file(tmp_path, capsys):
    from secure_fl.cli import main

    sites = _two_sites(tmp_path)
    text = _EXPERIMENT.format(name="site", protocols='["plain-fedavg"]', standardise="site",
                              a=sites[0]["data"], b=sites[1]["data"])
    result = run_experiment(parse_experiment(tomllib.loads(text), "s.toml"), tmp_path / "runs", show_progress=False)
    run_dir = Path(result.runs[0].path)
    model_json = (run_dir / "model.json").read_bytes()
    for name in ("hospA", "hospB"):
        own = json.loads((run_dir / "sites" / name / "preprocessing.json").read_text())
        for v in own["mean"] + own["sd"]:  # no digit string of a site's statistic in the shared file
            assert repr(v).encode() not in model_json
    assert main(["predict", str(run_dir), "--data", sites[0]["data"]]) == 2
    assert "say whose to apply with --site (one of ['hospA', 'hospB'])" in capsys.readouterr().err
    assert main(["predict", str(run_dir), "--data", sites[0]["data"], "--site", "hospX"]) == 2
    assert "no preprocessing statistics of site 'hospX' here (sites with their own: ['hospA', 'hospB'])" in \
        capsys.readouterr().err


# -- every bad file at once -------------------------------------------------------------------


def test_every_bad_csv_file_is_named_in_one_error(tmp_path):
    good = _table(tmp_path / "good.csv", 20, 0)
    inf = tmp_path / "inf.csv"
    inf.write_text(Path(good).read_text().replace("\n", "\ninf,200,1\n", 1))
    nolabel = tmp_path / "nolabel.csv"
    nolabel.write_text("age,chol,outcome\n1,2,0\n3,4,1\n")
    sites = [{"name": "A", "data": good}, {"name": "B", "data": str(tmp_path / "missing.csv")},
             {"name": "C", "data": str(inf)}, {"name": "D", "data": str(nolabel)},
             {"name": "E", "train": good.replace("good", "gone"), "test": str(tmp_path / "gone_test.csv")}]
    with pytest.raises(DataError) as err:
        build_task("csv", {"sites": sites, "label_column": "y"})
    msg = str(err.value)
    assert msg.startswith("5 problems:")
    for part in (f"CSV file not found: {tmp_path / 'missing.csv'}", f"CSV file not found: {tmp_path / 'gone.csv'}",
                 f"CSV file not found: {tmp_path / 'gone_test.csv'}", f"{nolabel}: no label column 'y'",
                 f"{inf}: column 'age' has non-finite values at line(s) 2"):
        assert part in msg, part


# -- images kept on disk ----------------------------------------------------------------------


def _images(root: Path, n: int, seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, colour in (("blue", 2), ("red", 0)):
        for i in range(n):
            img = rng.integers(0, 60, (12, 10, 3), dtype=np.uint8)
            img[..., colour] = 150 + rng.integers(0, 100)
            p = root / c / f"{i:02d}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(p)


def test_lazy_images_train_exactly_as_images_in_memory(tmp_path):
    _images(tmp_path / "A" / "train", 6, 0)
    _images(tmp_path / "A" / "test", 2, 1)
    _images(tmp_path / "B", 8, 2)
    results = {}
    for load in ("lazy", "memory"):
        text = f"""
name = "img-{load}"
protocols = ["plain-fedavg", "pooled"]
rounds = 2
[task]
name = "image-folder"
image_size = [8, 8]
channels = 3
load = "{load}"
sites = [{{name = "A", train = "{tmp_path / 'A' / 'train'}", test = "{tmp_path / 'A' / 'test'}"}},
         {{name = "B", data = "{tmp_path / 'B'}"}}]
[training]
local_epochs = 1
batch_size = 4
lr = 0.01
optimizer = "adam"
"""
        results[load] = run_experiment(parse_experiment(tomllib.loads(text), "img.toml"), tmp_path / "runs",
                                       show_progress=False)
    lazy, memory = results["lazy"].task, results["memory"].task
    assert isinstance(lazy.sites[0].x_train, ImageFiles) and isinstance(memory.sites[0].x_train, torch.Tensor)
    for a, b in zip(lazy.sites, memory.sites):
        assert torch.equal(a.x_test[:], b.x_test) and torch.equal(a.y_train, b.y_train)
    assert data_digests(lazy) == data_digests(memory)  # resume checks see the same data
    for ra, rb in zip(results["lazy"].runs, results["memory"].runs):
        assert ra.metrics == rb.metrics
        sa = torch.load(Path(ra.path) / "model.pt", weights_only=True)
        sb = torch.load(Path(rb.path) / "model.pt", weights_only=True)
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_image_files_decode_on_access(tmp_path):
    _images(tmp_path / "A", 3, 0)
    task = build_task("image-folder", {"sites": [{"name": "A", "data": str(tmp_path / "A")}], "image_size": [8, 8],
                                       "channels": 1})
    x = task.sites[0].x_train
    assert isinstance(x, ImageFiles) and x.shape == (len(x), 1, 8, 8) and x.size(0) == len(task.sites[0].y_train)
    assert x[0].shape == (1, 8, 8) and x[0:2].shape == (2, 1, 8, 8)
    assert x[np.array([True, False, True, False])].shape[0] == 2
    h1, h2 = hashlib.sha256(), hashlib.sha256()
    x.update_digest(h1)
    full = x[:]
    h2.update(f"{full.dtype}{tuple(full.shape)}".encode())
    h2.update(full.numpy().tobytes())
    assert h1.hexdigest() == h2.hexdigest()


def test_every_bad_image_and_empty_class_folder_named(tmp_path):
    _images(tmp_path / "A", 3, 0)
    _images(tmp_path / "B", 3, 1)
    (tmp_path / "A" / "red" / "01.png").write_bytes(b"not a png")
    (tmp_path / "B" / "blue" / "02.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "C" / "red").mkdir(parents=True)
    (tmp_path / "C" / "blue").mkdir(parents=True)
    sites = [{"name": n, "data": str(tmp_path / n)} for n in ("A", "B", "C")]
    with pytest.raises(DataError) as err:
        build_task("image-folder", {"sites": sites, "image_size": [8, 8]})
    msg = str(err.value)
    for part in (f"unreadable image {tmp_path / 'A' / 'red' / '01.png'}",
                 f"unreadable image {tmp_path / 'B' / 'blue' / '02.png'}",
                 f"class folder {tmp_path / 'C' / 'blue'} is empty", f"class folder {tmp_path / 'C' / 'red'} is empty"):
        assert part in msg, part
