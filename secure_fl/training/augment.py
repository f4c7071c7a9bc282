"""Image augmentation for local training, and augmentation multiplicity under DP-SGD.

Augmentations (on image batches ``[B, C, H, W]``, each image drawn independently): horizontal
flip with probability 1/2, a shift of up to ``shift`` pixels in each direction (zero padding,
then a crop back to the original size: a small random crop), and a brightness factor drawn
uniformly from ``[1 - brightness, 1 + brightness]``. Every draw comes from one
``torch.Generator`` seeded by the caller, so the same seed gives the same augmented batch.
The draws need not be secret: DP-SGD's bound holds for *any* per-example function of the
example, augmentation included (below).

Augmentation multiplicity (De, Berrada, Hayes, Smith, Balle, "Unlocking High-Accuracy
Differentially Private Image Classification through Scale", arXiv:2204.13650, 2022, Sec. 3.1):
each sampled example is augmented ``K`` times; the gradients of its ``K`` copies are
*averaged* and only then clipped to ``C``. One example therefore still moves the sum of
clipped gradients by at most ``C`` (the sensitivity DP-SGD's accountant assumes: Abadi et al.
2016, Sec. 3.1), whatever ``K`` is, and the Poisson sampling and the noise N(0, (σC)²) are
unchanged. Clipping each copy separately would let one example contribute up to ``K · C``.

How it runs with Opacus (:class:`secure_fl.training.dp_sgd.DpSgdHook`): the batch of ``B``
sampled examples is expanded to ``B · K`` augmented rows (``K`` consecutive copies per example);
Opacus computes one per-sample gradient per row; :func:`average_grad_samples` replaces them by
the ``B`` per-example means before the DP optimiser clips, so clipping, noise and the expected
batch size all count examples, not rows. Where it is hooked: :func:`secure_fl.training.local.train_local`
(``[training].augment`` in an experiment, parsed by :class:`AugmentConfig`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..speccheck import check_keys, get, in_range

__all__ = ["AugmentConfig", "augment_images", "average_grad_samples", "expand_batch"]


@dataclass(frozen=True)
class AugmentConfig:
    """``[training].augment``: which augmentations, and ``multiplicity`` K copies per example."""

    flip: bool = True
    shift: int = 2
    brightness: float = 0.1
    multiplicity: int = 1

    def __post_init__(self) -> None:
        if self.shift < 0:
            raise ValueError(f"augment shift must be >= 0 pixels, found {self.shift}")
        if not 0 <= self.brightness < 1:
            raise ValueError(f"augment brightness must be in [0, 1), found {self.brightness}")
        if self.multiplicity < 1:
            raise ValueError(f"augment multiplicity must be >= 1, found {self.multiplicity}")

    @classmethod
    def from_table(cls, t: Mapping[str, Any], where: str) -> AugmentConfig:
        check_keys(t, ["flip", "shift", "brightness", "multiplicity"], where)
        return cls(
            flip=get(t, "flip", bool, where, True),
            shift=get(t, "shift", int, where, 2, in_range(0, 16)),
            brightness=get(t, "brightness", float, where, 0.1, in_range(0, 1, hi_open=True)),
            multiplicity=get(t, "multiplicity", int, where, 1, in_range(1, 64)),
        )


def augment_images(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """An independently augmented copy of each image of ``x`` ``[B, C, H, W]`` (deterministic in ``gen``)."""
    if x.dim() != 4:
        raise ValueError(f"augmentation expects image batches [B, C, H, W], found shape {tuple(x.shape)}")
    b, _, h, w = x.shape
    out = x
    if cfg.flip:
        flip = torch.rand(b, generator=gen) < 0.5
        out = torch.where(flip[:, None, None, None], out.flip(-1), out)
    if cfg.shift > 0:
        s = cfg.shift
        padded = nn.functional.pad(out, (s, s, s, s))
        dy = torch.randint(0, 2 * s + 1, (b,), generator=gen)
        dx = torch.randint(0, 2 * s + 1, (b,), generator=gen)
        rows = (dy[:, None] + torch.arange(h)[None, :])  # [B, H]
        cols = (dx[:, None] + torch.arange(w)[None, :])  # [B, W]
        idx = torch.arange(b)[:, None, None]
        out = padded.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if cfg.brightness > 0:
        factor = 1.0 + (2 * torch.rand(b, generator=gen) - 1) * cfg.brightness
        out = out * factor[:, None, None, None].to(out.dtype)
    return out.contiguous()


def expand_batch(x: torch.Tensor, y: torch.Tensor, cfg: AugmentConfig,
                 gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``K`` augmented copies of every example, consecutive (rows ``i·K … i·K + K − 1`` are example ``i``)."""
    k = cfg.multiplicity
    return augment_images(x.repeat_interleave(k, dim=0), cfg, gen), y.repeat_interleave(k, dim=0)


def average_grad_samples(params: Iterable[nn.Parameter], multiplicity: int) -> None:
    """Replace Opacus's per-row gradients ``p.grad_sample`` ``[B·K, ...]`` by per-example means ``[B, ...]``.

    Call after ``backward()`` and before the DP optimiser's ``step()`` (which clips each row of
    ``grad_sample`` to C): each example then enters the clipped sum once, as the mean gradient of
    its K augmentations (De et al. 2022, Sec. 3.1).
    """
    if multiplicity < 1:
        raise ValueError(f"multiplicity must be >= 1, found {multiplicity}")
    if multiplicity == 1:
        return
    for p in params:
        gs = getattr(p, "grad_sample", None)
        if gs is None:
            continue
        if isinstance(gs, list):  # Opacus keeps a list when gradients of several passes accumulate
            gs = torch.cat(gs, dim=0)
        rows = gs.shape[0]
        if rows % multiplicity:
            raise ValueError(f"grad_sample has {rows} rows, not a multiple of the multiplicity {multiplicity}")
        p.grad_sample = gs.view(rows // multiplicity, multiplicity, *gs.shape[1:]).mean(dim=1)
