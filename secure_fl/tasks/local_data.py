"""A hospital's own data: a folder of images per class, or a CSV table with a label column.

Each entry of ``paths`` is one site's data (a real deployment has one per hospital). Errors
name the file or folder at fault.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import DataError
from ..speccheck import check_keys, get, in_range
from .base import SiteData, Task
from .heart import HeartTask, split_site, tabular_params
from .images import IMAGE_SUFFIXES, load_image
from .models import FaceEncoder

__all__ = ["ImageFolderTask", "build_image_folder", "build_csv", "read_image_folder", "read_csv_site"]


def _paths(params: Mapping[str, Any], where: str) -> list[Path]:
    raw = get(params, "paths", list, where)
    if not raw:
        raise DataError(f"{where}.paths: give at least one site folder or file")
    paths = []
    for i, p in enumerate(raw):
        if not isinstance(p, str):
            raise DataError(f"{where}.paths[{i}]: expected a string path, found {p!r}")
        paths.append(Path(p).expanduser())
    return paths


def read_image_folder(root: Path, size: tuple[int, int]) -> tuple[np.ndarray, list[str]]:
    """Images [n, 1, H, W] and their class names from ``root/<class>/<image>``."""
    if not root.exists():
        raise DataError(f"image folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"not a folder: {root} (expected one sub-folder per class)")
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root} has no class sub-folders (expected {root}/<class>/<image>)")
    xs, labels = [], []
    for d in classes:
        files = sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"class folder {d} is empty (no image files with suffix {sorted(IMAGE_SUFFIXES)})")
        for f in files:
            xs.append(load_image(f, size))
            labels.append(d.name)
    return np.stack(xs)[:, None], labels


@dataclass
class ImageFolderTask(Task):
    embedding_dim: int = 64

    def make_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return FaceEncoder(self.num_classes, self.embedding_dim)


def build_image_folder(params: Mapping[str, Any], where: str) -> ImageFolderTask:
    check_keys(params, ["paths", "image_size", "test_fraction", "split_seed", "embedding_dim"], where)
    paths = _paths(params, where)
    size = get(params, "image_size", list, where, [56, 46])
    if len(size) != 2 or not all(isinstance(v, int) and v >= 8 for v in size):
        raise DataError(f"{where}.image_size: expected [height, width] with integers >= 8, found {size!r}")
    test_fraction = get(params, "test_fraction", float, where, 0.25, in_range(0, 1, lo_open=True, hi_open=True))
    rng = np.random.default_rng(get(params, "split_seed", int, where, 0))
    loaded = [read_image_folder(p, (size[0], size[1])) for p in paths]
    classes = sorted({c for _, labels in loaded for c in labels})
    index = {c: i for i, c in enumerate(classes)}
    sites = []
    for path, (x, labels) in zip(paths, loaded):
        y = np.array([index[c] for c in labels], dtype=np.int64)
        sites.append(_split_images(path.name, x, y, test_fraction, rng))
    return ImageFolderTask("image-folder", len(classes), sites, {"classes": classes}, embedding_dim=get(params, "embedding_dim", int, where, 64, in_range(2)))


def _split_images(name: str, x: np.ndarray, y: np.ndarray, test_fraction: float, rng: np.random.Generator) -> SiteData:
    test = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        test[idx[: int(round(test_fraction * len(idx)))]] = True
    t = torch.tensor
    return SiteData(name, t(x[~test]), t(y[~test]), t(x[test]), t(y[test]))


def read_csv_site(path: Path, label_column: str, feature_columns: list[str] | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    import pandas as pd

    if not path.exists():
        raise DataError(f"CSV file not found: {path}")
    try:
        df = pd.read_csv(path)
    except Exception as exc:  # pandas raises many kinds
        raise DataError(f"unreadable CSV {path}: {exc}") from exc
    if label_column not in df.columns:
        raise DataError(f"{path}: no label column {label_column!r}; columns are {list(df.columns)}")
    features = feature_columns or [c for c in df.columns if c != label_column]
    missing = [c for c in features if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing feature column(s) {missing}")
    bad = [c for c in features if not pd.api.types.is_numeric_dtype(df[c])]
    if bad:
        raise DataError(f"{path}: non-numeric feature column(s) {bad}; encode them as numbers first")
    if df[features].isna().any().any():
        cols = [c for c in features if df[c].isna().any()]
        raise DataError(f"{path}: missing values in column(s) {cols}; impute or drop those rows first")
    if len(df) < 4:
        raise DataError(f"{path}: only {len(df)} rows; a site needs at least 4 to split train/test")
    return df[features].to_numpy(dtype=np.float64), df[label_column].to_numpy(), features


def build_csv(params: Mapping[str, Any], where: str) -> HeartTask:
    p = tabular_params(params, where, extra=("paths", "label_column", "feature_columns"))
    paths = _paths(params, where)
    label = get(params, "label_column", str, where)
    feats = get(params, "feature_columns", list, where, None)
    loaded = [read_csv_site(path, label, feats) for path in paths]
    first = loaded[0][2]
    for path, (_, _, cols) in zip(paths[1:], loaded[1:]):
        if cols != first:
            raise DataError(
                f"{path}: feature columns {cols} do not match {paths[0]} {first} "
                f"(missing {sorted(set(first) - set(cols))}, extra {sorted(set(cols) - set(first))})"
            )
    labels = sorted({str(v) for _, y, _ in loaded for v in y})
    index = {v: i for i, v in enumerate(labels)}
    if len(labels) < 2:
        raise DataError(f"{where}: column {label!r} has a single value {labels} across all sites; nothing to learn")
    rng = np.random.default_rng(p["split_seed"])
    sites = [
        split_site(path.stem, x, np.array([index[str(v)] for v in y], dtype=np.int64), p["test_fraction"], rng)
        for path, (x, y, _) in zip(paths, loaded)
    ]
    return HeartTask("csv", len(labels), sites, {"features": first, "labels": labels}, model=p["model"], hidden=p["hidden"])
