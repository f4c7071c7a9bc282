"""Writes small synthetic RGB image folders for experiment.toml (run from the repository root):

    python examples/image_folder/make_images.py

Layout, one folder per class (the class names are the folder names)::

    examples/image_folder/data/hospA/train/<class>/<image>.png
    examples/image_folder/data/hospA/test/<class>/<image>.png
    examples/image_folder/data/hospB/<class>/<image>.png        (split by test_fraction)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent / "data"
CLASSES = {"lesion-red": 0, "lesion-blue": 2}  # class -> colour channel of the blob


def image(rng: np.random.Generator, channel: int) -> Image.Image:
    img = rng.integers(0, 60, size=(32, 32, 3)).astype(np.uint8)
    cy, cx = rng.integers(8, 24, size=2)
    yy, xx = np.mgrid[:32, :32]
    blob = (yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(16, 49)
    img[blob, channel] = 220
    return Image.fromarray(img)


def folder(path: Path, rng: np.random.Generator, per_class: int) -> None:
    for name, channel in CLASSES.items():
        (path / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image(rng, channel).save(path / name / f"{i:03d}.png")


if __name__ == "__main__":
    rng = np.random.default_rng(0)
    folder(ROOT / "hospA" / "train", rng, 30)
    folder(ROOT / "hospA" / "test", rng, 10)
    folder(ROOT / "hospB", rng, 40)
    print(f"wrote {ROOT}")
