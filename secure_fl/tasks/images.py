"""Reading images from disk with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError

__all__ = ["IMAGE_SUFFIXES", "load_image"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".pgm", ".bmp", ".tif", ".tiff", ".gif", ".webp"}


def load_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A grey image resized to ``size`` = (height, width), as float32 in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            grey = img.convert("L").resize((size[1], size[0]), Image.BILINEAR)
            return np.asarray(grey, dtype=np.float32) / 255.0
    except FileNotFoundError as exc:
        raise DataError(f"image not found: {path}") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"unreadable image {path}: {exc}") from exc
