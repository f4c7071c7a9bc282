"""Reading images from disk with errors that name the file; a lazily decoded image dataset."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError

__all__ = ["IMAGE_SUFFIXES", "ImageFiles", "load_image"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".pgm", ".bmp", ".tif", ".tiff", ".gif", ".webp"}


def load_image(path: Path, size: tuple[int, int], channels: int = 1) -> np.ndarray:
    """An image resized to ``size`` = (height, width), float32 in [0, 1]: [H, W] grey
    (``channels=1``) or [3, H, W] RGB (``channels=3``)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            mode = "L" if channels == 1 else "RGB"
            arr = (
                np.asarray(img.convert(mode).resize((size[1], size[0]), Image.Resampling.BILINEAR), dtype=np.float32)
                / 255.0
            )
            return arr if channels == 1 else arr.transpose(2, 0, 1)
    except FileNotFoundError as exc:
        raise DataError(f"image not found: {path}") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"unreadable image {path}: {exc}") from exc


class ImageFiles(Dataset):  # type: ignore[type-arg]
    """Images on disk, decoded on access: a torch ``Dataset`` that stands where a site's tensor of
    images would (``len``, ``shape``, ``size(0)``, ``x[i]``, ``x[a:b]``, ``x[indices]``).

    ``x[i]`` is one image ``[C, H, W]`` float32 exactly as :func:`load_image` gives it (grey gets
    ``C = 1``); a slice or an index array gives the stacked batch. Nothing is cached: memory holds
    one batch at a time, whatever the folder's size, and a ``DataLoader`` over
    ``TensorDataset(x, y)`` draws the same batches, with the same values, as over the tensor of
    all images (per-index fetch, then stacking, in both cases).
    """

    def __init__(self, files: Sequence[Path], size: tuple[int, int], channels: int = 1) -> None:
        self.files = [Path(f) for f in files]
        self.image_size = (int(size[0]), int(size[1]))
        self.channels = int(channels)
        self.dtype = torch.float32

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.files), self.channels, *self.image_size))

    def size(self, dim: int | None = None) -> Any:
        return self.shape if dim is None else self.shape[dim]

    def _load(self, i: int) -> torch.Tensor:
        arr = load_image(self.files[i], self.image_size, self.channels)
        return torch.from_numpy(arr[None] if self.channels == 1 else arr)

    def __getitem__(self, index: Any) -> torch.Tensor:
        if isinstance(index, (int, np.integer)) or (isinstance(index, torch.Tensor) and index.ndim == 0):
            i = int(index)
            if not -len(self) <= i < len(self):
                raise IndexError(f"image {i} of {len(self)}")
            return self._load(i % len(self))
        rows = self._rows(index)
        if rows is None:  # e.g. x[:, 0]: needs every image
            return self.materialise()[index]
        if not rows:
            return torch.empty((0, self.channels, *self.image_size), dtype=self.dtype)
        return torch.stack([self._load(i) for i in rows])

    def _rows(self, index: Any) -> list[int] | None:
        if isinstance(index, slice):
            return list(range(len(self)))[index]
        if isinstance(index, (list, tuple)) and all(isinstance(i, (int, np.integer)) for i in index):
            return [int(i) for i in index]
        if isinstance(index, (np.ndarray, torch.Tensor)) and index.ndim == 1:
            arr = np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index)
            return np.flatnonzero(arr).tolist() if arr.dtype == bool else arr.astype(np.int64).tolist()
        return None

    def subset(self, index: Any) -> ImageFiles:
        """The images at ``index`` (an index or boolean array), still on disk."""
        rows = self._rows(index)
        if rows is None:
            raise TypeError(f"subset: expected an index or boolean array, found {type(index).__name__}")
        return ImageFiles([self.files[i] for i in rows], self.image_size, self.channels)

    @classmethod
    def concat(cls, parts: Sequence[ImageFiles]) -> ImageFiles:
        if not parts or any((p.image_size, p.channels) != (parts[0].image_size, parts[0].channels) for p in parts):
            raise ValueError("ImageFiles.concat: expected one or more parts with one image size and channel count")
        return cls([f for p in parts for f in p.files], parts[0].image_size, parts[0].channels)

    def materialise(self) -> torch.Tensor:
        """Every image in memory, ``[n, C, H, W]`` (what ``load = "memory"`` holds)."""
        return self[:]

    def update_digest(self, h: Any) -> None:
        """Feed ``h`` exactly the bytes the digest of :meth:`materialise` would get, one image at a time."""
        h.update(f"{self.dtype}{tuple(self.shape)}".encode())
        for i in range(len(self)):
            h.update(self._load(i).numpy().tobytes())
