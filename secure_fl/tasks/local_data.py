"""A hospital's own data: a folder of images per class, or a CSV table with a label column.

Sites are named with ``[[task.sites]]`` (see :mod:`secure_fl.tasks.sites`); the older ``paths``
list names each site after its file or folder and refuses two paths giving one name. Errors
name the file or folder at fault, for every bad site at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..errors import DataError, SpecError
from ..speccheck import check_keys, get, in_range, one_of
from .base import SiteData, Task
from .csv_task import _collect, _per_site, _raise
from .heart import HeartTask
from .images import IMAGE_SUFFIXES, ImageFiles, load_image
from .models import FaceEncoder
from .plugins import is_import_path, load_callable
from .sites import fraction_split, parse_sites

__all__ = ["ImageFolderTask", "build_image_folder", "build_csv", "read_image_folder", "list_image_folder"]


def list_image_folder(root: Path) -> tuple[list[Path], list[str]]:
    """Image files and their class names from ``root/<class>/<image>``, in class then file order.

    Every empty class folder is named, not only the first."""
    if not root.exists():
        raise DataError(f"image folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"not a folder: {root} (expected one sub-folder per class)")
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root} has no class sub-folders (expected {root}/<class>/<image>)")
    files, labels, empty = [], [], []
    for d in classes:
        found = sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            empty.append(f"class folder {d} is empty (no image files with suffix {sorted(IMAGE_SUFFIXES)})")
        files += found
        labels += [d.name] * len(found)
    if empty:
        raise DataError("\n".join(empty))
    return files, labels


def read_image_folder(root: Path, size: tuple[int, int], channels: int = 1) -> tuple[np.ndarray, list[str]]:
    """Images [n, C, H, W] (C = ``channels``: 1 grey, 3 RGB) and their class names from ``root/<class>/<image>``,
    all in memory; every unreadable image is named."""
    files, labels = list_image_folder(root)
    x = _decode_all(files, size, channels, keep=True)
    assert x is not None
    return x, labels


def _decode_all(files: list[Path], size: tuple[int, int], channels: int, keep: bool) -> np.ndarray | None:
    """Decode every file (each once, in order); raise one DataError naming every unreadable one.

    ``keep``: return the images [n, C, H, W]; otherwise only check them (memory: one image)."""
    xs, errors = [], []
    for f in files:
        try:
            img = load_image(f, size, channels)
        except DataError as exc:
            errors.append(str(exc))
            continue
        if keep:
            xs.append(img)
    if errors:
        head = f"{len(errors)} problems:\n  " if len(errors) > 1 else ""
        raise DataError(head + "\n  ".join(errors))
    if not keep:
        return None
    x = np.stack(xs)
    return x[:, None] if channels == 1 else x


@dataclass
class ImageFolderTask(Task):
    """Images per class. ``model``: "cnn" (the small NormFace CNN of tasks/models.py) or the user's
    ``"module:make_model"``, called as ``make_model(num_classes=..., in_channels=..., image_size=[h, w],
    **model_args)``."""

    record: ClassVar[str] = "image"  # a patient may have several images: example-level DP protects one

    embedding_dim: int = 64
    in_channels: int = 1
    model: str = "cnn"
    model_args: dict[str, Any] = field(default_factory=dict)

    def _kwargs(self) -> dict[str, Any]:
        if self.model == "cnn":
            return {"num_classes": self.num_classes, "embedding_dim": self.embedding_dim,
                    "in_channels": self.in_channels}
        size = list(self.sites[0].x_train.shape[2:])
        return {"num_classes": self.num_classes, "in_channels": self.in_channels, "image_size": size, **self.model_args}

    def make_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        if self.model == "cnn":
            return FaceEncoder(**self._kwargs())
        model = load_callable(self.model, "[task].model")(**self._kwargs())
        if not isinstance(model, nn.Module):
            raise SpecError(f"[task].model: {self.model!r} returned {type(model).__name__}, not a torch.nn.Module")
        return model  # type: ignore[no-any-return]

    def model_spec(self) -> tuple[str, dict[str, Any]]:
        target = "secure_fl.tasks.models:FaceEncoder" if self.model == "cnn" else self.model
        return target, self._kwargs()


def build_image_folder(params: Mapping[str, Any], where: str) -> ImageFolderTask:
    """Sites from ``[[task.sites]]`` (``name``, ``data`` folder, or ``train`` + ``test`` folders) or ``paths``.

    A site without a test folder is split per class by a seeded fraction
    (:func:`secure_fl.tasks.sites.fraction_split`). ``load = "lazy"`` (the default) keeps the
    images on disk and decodes each batch when it is used (:class:`~secure_fl.tasks.images.ImageFiles`),
    so a folder larger than memory trains; ``load = "memory"`` decodes every image once into a tensor
    (faster on small folders). Both give the same batches, values and results under one seed.
    Every unreadable image and empty class folder, at every site, is named in one error.
    """
    keys = ["paths", "sites", "image_size", "channels", "model", "model_args", "test_fraction", "split_seed",
            "embedding_dim", "load"]
    check_keys(params, keys, where)
    load = get(params, "load", str, where, "lazy", one_of("lazy", "memory"))
    decoded: dict[int, np.ndarray] = {}
    channels = get(params, "channels", int, where, 1, one_of(1, 3))
    model = get(params, "model", str, where, "cnn")
    if model != "cnn" and not is_import_path(model):
        raise SpecError(f"{where}.model: expected \"cnn\" or \"module:function\", found {model!r}")
    size = get(params, "image_size", list, where, [56, 46])
    if len(size) != 2 or not all(isinstance(v, int) and v >= 8 for v in size):
        raise DataError(f"{where}.image_size: expected [height, width] with integers >= 8, found {size!r}")
    test_fraction = get(params, "test_fraction", float, where, 0.25, in_range(0, 1, lo_open=True, hi_open=True))
    split_seed = get(params, "split_seed", int, where, 0)
    sources = parse_sites(params, where, test_fraction, name_from="name")
    for s in sources:
        if s.split_column is not None:
            raise SpecError(f"{where}.sites: site {s.name!r}: split_column applies to tables; "
                            "give a test folder or test_fraction")
    shape = (size[0], size[1])
    errors: list[str] = []
    listing: dict[str, Any] = {}

    def list_site(s: Any) -> None:
        listing[s.name] = _collect([s.train] + ([s.test] if s.test else []), list_image_folder)

    # every image is decoded once here, so every unreadable one (and every empty class folder) is named
    # before training starts; with load = "lazy" (the default) the pixels are then dropped and decoded
    # again batch by batch
    good = _per_site(sources, list_site, errors)
    _per_site([part for s in good for part in listing[s.name]],
              lambda part: _checked(part, shape, channels, load, decoded), errors)
    _raise(errors)
    listed = [(listing[s.name][0], listing[s.name][1] if s.test else None) for s in sources]
    classes = sorted({c for tr, te in listed for _, labels in ([tr] + ([te] if te else [])) for c in labels})
    index = {c: i for i, c in enumerate(classes)}

    def images(files: list[Path], mask: np.ndarray | None = None) -> Any:
        if load == "lazy":
            data = ImageFiles(files, shape, channels)
            return data if mask is None else data.subset(mask)
        x = decoded[id(files)]
        return torch.tensor(x if mask is None else x[mask])

    sites = []
    for src, (tr, te) in zip(sources, listed):
        y = np.array([index[c] for c in tr[1]], dtype=np.int64)
        t = torch.tensor
        if te is None:
            test = fraction_split(y, src.test_fraction or test_fraction, split_seed, src.name)
            sites.append(SiteData(src.name, images(tr[0], ~test), t(y[~test]), images(tr[0], test), t(y[test])))
        else:
            yte = np.array([index[c] for c in te[1]], dtype=np.int64)
            sites.append(SiteData(src.name, images(tr[0]), t(y), images(te[0]), t(yte)))
    emb = get(params, "embedding_dim", int, where, 64, in_range(2))
    info = {"classes": classes, "sites": {s.name: {"data": str(s.train), "split": s.split} for s in sources},
            "preprocessing": {"kind": "images", "image_size": list(shape), "channels": channels}}
    args = get(params, "model_args", dict, where, {})
    return ImageFolderTask("image-folder", len(classes), sites, info, embedding_dim=emb, in_channels=channels,
                           model=model, model_args=args)


def _checked(listed: tuple[list[Path], list[str]], shape: tuple[int, int], channels: int, load: str,
             decoded: dict[int, np.ndarray]) -> None:
    x = _decode_all(listed[0], shape, channels, keep=load == "memory")
    if x is not None:
        decoded[id(listed[0])] = x


def build_csv(params: Mapping[str, Any], where: str) -> HeartTask:
    """The ``csv`` task (see :mod:`secure_fl.tasks.csv_task`)."""
    from .csv_task import build_csv as build

    return build(params, where)
