"""Reading images from disk with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError

__all__ = ["IMAGE_SUFFIXES", "load_image"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".pgm", ".bmp", ".tif", ".tiff", ".gif", ".webp"}


def load_image(path: Path, size: tuple[int, int], channels: int = 1) -> np.ndarray:
    """An image resized to ``size`` = (height, width), float32 in [0, 1]: [H, W] grey
    (``channels=1``) or [3, H, W] RGB (``channels=3``)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            mode = "L" if channels == 1 else "RGB"
            arr = np.asarray(img.convert(mode).resize((size[1], size[0]), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
            return arr if channels == 1 else arr.transpose(2, 0, 1)
    except FileNotFoundError as exc:
        raise DataError(f"image not found: {path}") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"unreadable image {path}: {exc}") from exc
