"""Synthetic variants of the real tasks, for fast tests. Same code paths, generated data."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..speccheck import check_keys, get, in_range
from .faces import FacesTask, build_faces_from_arrays, faces_params
from .heart import HeartTask, split_site, tabular_params

__all__ = ["build_synthetic_tabular", "build_synthetic_faces"]


def build_synthetic_tabular(params: Mapping[str, Any], where: str) -> HeartTask:
    """A logistic ground truth with a per-site covariate shift (sites differ, as hospitals do)."""
    extra = ("n_sites", "n_per_site", "n_features", "seed")
    check_keys(params, [*extra, "model", "hidden", "test_fraction", "split_seed"], where)  # before the base keys' check
    p = tabular_params({k: v for k, v in params.items() if k not in extra}, where)
    n_sites = get(params, "n_sites", int, where, 4, in_range(1))
    n = get(params, "n_per_site", int, where, 120, in_range(8))
    d = get(params, "n_features", int, where, 13, in_range(1))
    rng = np.random.default_rng(get(params, "seed", int, where, 0))
    w = rng.normal(size=d)
    sites = []
    for s in range(n_sites):
        x = rng.normal(size=(n, d)) + rng.normal(scale=0.5, size=d)
        y = (x @ w + rng.normal(scale=1.0, size=n) > 0).astype(np.int64)
        sites.append(split_site(f"site{s + 1}", x, y, p["test_fraction"], rng))
    return HeartTask("synthetic-tabular", 2, sites, {}, model=p["model"], hidden=p["hidden"])


def build_synthetic_faces(params: Mapping[str, Any], where: str) -> FacesTask:
    """Identities are random smooth templates; photographs are noisy, shifted copies."""
    extra = ("n_identities", "per_identity", "seed")
    check_keys(params, ["n_sites", "partition", "alpha", "image_size", "heldout_identities", "test_per_identity",
                        "embedding_dim", "split_seed", "encoder", *extra], where)
    n_ids = get(params, "n_identities", int, where, 12, in_range(4))
    per_id = get(params, "per_identity", int, where, 8, in_range(3))
    base = {k: v for k, v in params.items() if k not in extra}
    base.setdefault("image_size", [16, 16])
    base.setdefault("heldout_identities", 2)
    base.setdefault("test_per_identity", 2)
    p = faces_params(base, where, n_ids, per_id)
    rng = np.random.default_rng(get(params, "seed", int, where, 0))
    h, w = p["image_size"]
    templates: np.ndarray = rng.normal(size=(n_ids, h // 4 + 1, w // 4 + 1))
    templates = np.kron(templates, np.ones((4, 4)))[:, :h, :w]
    xs, ids = [], []
    for i in range(n_ids):
        for _ in range(per_id):
            shifted = np.roll(templates[i], rng.integers(-1, 2, size=2), axis=(0, 1))
            xs.append(shifted + rng.normal(scale=0.5, size=(h, w)))
            ids.append(i)
    x = np.stack(xs)[:, None].astype(np.float32)
    return build_faces_from_arrays("synthetic-faces", x, np.array(ids, dtype=np.int64), p)
