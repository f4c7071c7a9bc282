"""Augmentation: deterministic under a seed; augmentation multiplicity keeps one example within C."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from torch import nn

from secure_fl.errors import SpecError
from secure_fl.privacy.noise import NoiseSource
from secure_fl.training.augment import AugmentConfig, augment_images, average_grad_samples, expand_batch
from secure_fl.training.config import TrainingConfig
from secure_fl.training.dp_sgd import DpSgdHook, SourcedDPOptimizer
from secure_fl.training.local import train_local


def _images(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))


def test_augmentation_is_deterministic_under_a_seed():
    x, cfg = _images(), AugmentConfig(flip=True, shift=2, brightness=0.2)
    a = augment_images(x, cfg, torch.Generator().manual_seed(7))
    b = augment_images(x, cfg, torch.Generator().manual_seed(7))
    c = augment_images(x, cfg, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape


def test_each_augmentation_does_what_it_says():
    x = _images()
    flipped = augment_images(x, AugmentConfig(flip=True, shift=0, brightness=0.0), torch.Generator().manual_seed(1))
    for i in range(len(x)):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(-1))
    assert any(not torch.equal(flipped[i], x[i]) for i in range(len(x)))
    bright = augment_images(x, AugmentConfig(flip=False, shift=0, brightness=0.2), torch.Generator().manual_seed(1))
    ratio = (bright / x).flatten(1)
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), atol=1e-5)  # one factor per image
    assert float(ratio.min()) >= 0.8 - 1e-6 and float(ratio.max()) <= 1.2 + 1e-6
    shifted = augment_images(x, AugmentConfig(flip=False, shift=1, brightness=0.0), torch.Generator().manual_seed(1))
    for i in range(len(x)):  # a shift by (dy, dx) in [-1, 1]²: some window of the image matches exactly
        assert any(torch.equal(shifted[i, :, 1:-1, 1:-1], x[i, :, 1 + dy:7 + dy, 1 + dx:7 + dx])
                   for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def _clipped_sum(rows_x: torch.Tensor, rows_y: torch.Tensor, clip: float, multiplicity: int) -> torch.Tensor:
    """Opacus's clipped per-sample sum (no noise) for the given rows, grouped by ``multiplicity``."""
    model = _net()
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    opt = SourcedDPOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), noise_multiplier=1.0, max_grad_norm=clip,
                             expected_batch_size=1, source=NoiseSource.seeded(np.random.default_rng(0)))
    nn.functional.cross_entropy(gsm(rows_x), rows_y).backward()
    average_grad_samples(model.parameters(), multiplicity)
    opt.clip_and_accumulate()
    out = torch.cat([p.summed_grad.reshape(-1) for p in model.parameters()])
    gsm._close()
    return out


def test_multiplicity_keeps_one_examples_clipped_contribution_within_c():
    clip, k = 0.5, 4
    cfg = AugmentConfig(flip=True, shift=2, brightness=0.3, multiplicity=k)
    x = 50.0 * _images(1)  # one example with a large gradient: every copy's own norm exceeds C
    rows_x, rows_y = expand_batch(x, torch.tensor([2]), cfg, torch.Generator().manual_seed(3))
    assert rows_x.shape[0] == k and not torch.equal(rows_x[0], rows_x[1])
    # per-copy gradients by plain autograd: the K copies differ, each has norm > C
    per_copy = []
    for j in range(k):
        m = _net()
        nn.functional.cross_entropy(m(rows_x[j : j + 1]), rows_y[j : j + 1]).backward()
        per_copy.append(torch.cat([p.grad.reshape(-1) for p in m.parameters()]))
    assert min(float(g.norm()) for g in per_copy) > clip
    mean = torch.stack(per_copy).mean(0)
    with_mult = _clipped_sum(rows_x, rows_y, clip, k)
    # the example enters once: its mean gradient, clipped to C
    assert float(with_mult.norm()) <= clip * (1 + 1e-5)
    torch.testing.assert_close(with_mult, mean * (clip / float(mean.norm())), rtol=1e-4, atol=1e-6)
    # clipping each copy separately (no multiplicity averaging) lets the same example move the sum by more than C
    separately = _clipped_sum(rows_x, rows_y, clip, 1)
    assert float(separately.norm()) > 1.5 * clip


def test_dp_sgd_training_with_multiplicity_runs_and_is_reproducible():
    x, y = _images(12), torch.arange(12) % 3
    cfg = TrainingConfig(local_epochs=1, batch_size=4, lr=0.1, augment=AugmentConfig(multiplicity=3))
    deltas = []
    for _ in range(2):
        hook = DpSgdHook(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=1 / 3,
                         source=NoiseSource.seeded(np.random.default_rng(5)))
        res = train_local(_net(), x, y, cfg, nn.CrossEntropyLoss(), seed=11, hook=hook)
        assert res.steps == hook.round_steps == 3
        deltas.append(res.delta)
    np.testing.assert_array_equal(deltas[0], deltas[1])
    plain = train_local(_net(), x, y, cfg, nn.CrossEntropyLoss(), seed=11)  # without DP: a K-times larger batch
    assert np.isfinite(plain.delta).all() and plain.steps == 3


def test_augment_table_errors_name_the_key():
    cfg = TrainingConfig.from_table({"augment": {"flip": False, "multiplicity": 2}}, "[training]")
    assert cfg.augment == AugmentConfig(flip=False, shift=2, brightness=0.1, multiplicity=2)
    with pytest.raises(SpecError, match=r"\[training\]\.augment: unknown key\(s\) \['rotate'\]"):
        TrainingConfig.from_table({"augment": {"rotate": 10}}, "[training]")
    with pytest.raises(SpecError, match=r"\[training\]\.augment\.multiplicity"):
        TrainingConfig.from_table({"augment": {"multiplicity": 0}}, "[training]")
    with pytest.raises(ValueError, match="image batches"):
        augment_images(torch.zeros(3, 4), AugmentConfig(), torch.Generator())


def test_distributed_dp_refuses_augmentation_it_would_ignore(tmp_path, tiny_experiment_toml):
    """Distributed DP takes one noisy gradient per round without local training: an augment table would be
    silently ignored, so the run is refused with a message naming [training].augment."""
    import tomllib

    from secure_fl.run.experiment import parse_experiment
    from secure_fl.run.federation import Federation
    from secure_fl.tasks.registry import build_task

    augment = "[training.augment]\nmultiplicity = 2"
    text = tiny_experiment_toml(protocols='["dp-distributed-ckks"]', rounds=1, extra=augment)
    exp = parse_experiment(tomllib.loads(text), "tiny.toml", tmp_path)
    with pytest.raises(SpecError, match=r"\[training\]\.augment has no effect"):
        Federation(exp, build_task(exp.task_name, exp.task_params), exp.variants[0], 0, tmp_path / "run")
