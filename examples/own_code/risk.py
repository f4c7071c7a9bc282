"""Your own model and your own task for secure-fl, named "file.py:function" in the experiment TOML.

Interfaces (secure_fl/tasks/plugins.py):

- model for the csv task:  make_model(n_features, num_classes, **model_args) -> torch.nn.Module
- task:                    build(params, where) -> secure_fl.tasks.base.Task
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from secure_fl.errors import DataError
from secure_fl.tasks.base import SiteData, Task
from secure_fl.tasks.sites import fraction_split


def make_model(n_features: int, num_classes: int, hidden: int = 16) -> nn.Module:
    """A small MLP (no BatchNorm: DP-SGD needs per-example gradients)."""
    return nn.Sequential(nn.Linear(n_features, hidden), nn.Tanh(), nn.Linear(hidden, num_classes))


@dataclass
class AgeRiskTask(Task):
    """Two features computed by the hospital's own code: age in decades and a smoker flag."""

    hidden: int = 8

    def make_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return make_model(2, self.num_classes, self.hidden)

    def model_spec(self) -> tuple[str, dict[str, Any]]:
        # how model.json rebuilds the model for `secure-fl predict`
        return f"{__file__}:make_model", {"n_features": 2, "num_classes": self.num_classes, "hidden": self.hidden}


def _site(name: str, path: Path, seed: int) -> SiteData:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    raw = np.genfromtxt(path, delimiter=",", names=True, dtype=None, encoding="utf-8")
    x = np.stack([raw["age"] / 10.0, (raw["sex"] == "M").astype(float)], axis=1).astype(np.float32)
    y = (raw["num"] > 0).astype(np.int64)
    test = fraction_split(y, 0.25, seed, name)
    t = torch.tensor
    return SiteData(name, t(x[~test]), t(y[~test]), t(x[test]), t(y[test]))


def build(params: Mapping[str, Any], where: str) -> AgeRiskTask:
    """``params`` is the rest of [task]: here ``[[task.sites]]`` (``name`` and ``data``) and ``seed``.

    Relative ``data`` paths were already resolved against the experiment file's folder.
    """
    sites = params.get("sites")
    if not isinstance(sites, list) or not sites:
        raise DataError(f"{where}.sites: list at least one [[task.sites]] with name and data")
    for i, s in enumerate(sites):
        if not isinstance(s, dict) or not isinstance(s.get("name"), str) or not isinstance(s.get("data"), str):
            raise DataError(f"{where}.sites[{i}]: expected name = \"...\" and data = \"path.csv\", found {s!r}")
    seed = int(params.get("seed", 0))
    data = [_site(s["name"], Path(s["data"]), seed) for s in sites]
    return AgeRiskTask("age-risk", 2, data, {"labels": ["0", "1"], "positive": "1", "features": ["age/10", "male"]})
