"""Scores of attacks: image similarity (PSNR, SSIM) and membership ROC (AUC, TPR at fixed FPR).

Pure numpy/torch; no scikit-image or scikit-learn.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["psnr", "ssim", "align_affine", "match_images", "roc_curve", "roc_auc", "tpr_at_fpr"]


def psnr(x: np.ndarray, ref: np.ndarray, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB of ``x`` against ``ref``; the peak is ``ref``'s range by default."""
    x, ref = np.asarray(x, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if x.shape != ref.shape:
        raise ValueError(f"psnr: shapes differ, {x.shape} against {ref.shape}")
    rng = float(ref.max() - ref.min()) if data_range is None else float(data_range)
    mse = float(np.mean((x - ref) ** 2))
    if mse == 0.0:
        return float("inf")
    return 10.0 * float(np.log10(rng**2 / mse))


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(x: np.ndarray, ref: np.ndarray, data_range: float | None = None, win: int = 7, sigma: float = 1.5) -> float:
    """Mean structural similarity of two grey images [H, W] (Wang et al. 2004, IEEE TIP, eq. 13).

    Gaussian window (``win`` x ``win``, ``sigma``; smaller than the paper's 11 x 11 so that
    16 x 16 test images still have valid positions), K1 = 0.01, K2 = 0.03, valid positions only.
    """
    a = torch.as_tensor(np.asarray(x, dtype=np.float64))
    b = torch.as_tensor(np.asarray(ref, dtype=np.float64))
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"ssim: expected two [H, W] images of one shape, found {tuple(a.shape)} and {tuple(b.shape)}")
    win = min(win, a.shape[0], a.shape[1])
    L = float(b.max() - b.min()) if data_range is None else float(data_range)
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    w = _gaussian_window(win, sigma)
    a4, b4 = a[None, None], b[None, None]
    mu_a, mu_b = F.conv2d(a4, w), F.conv2d(b4, w)
    s_aa = F.conv2d(a4 * a4, w) - mu_a**2
    s_bb = F.conv2d(b4 * b4, w) - mu_b**2
    s_ab = F.conv2d(a4 * b4, w) - mu_a * mu_b
    m = ((2 * mu_a * mu_b + c1) * (2 * s_ab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (s_aa + s_bb + c2))
    return float(m.mean())


def align_affine(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``a x + b`` with (a, b) fitted to ``ref`` by least squares.

    The face encoder standardises each image before its first layer, so an update determines an
    image only up to brightness and contrast; both the reconstruction and the mean-image baseline
    (a = 0) get this fit, so it never favours one protocol over another.
    """
    x, ref = np.asarray(x, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    A = np.stack([x.ravel(), np.ones(x.size)], axis=1)
    coef, *_ = np.linalg.lstsq(A, ref.ravel(), rcond=None)
    return (A @ coef).reshape(ref.shape)


def match_images(recon: np.ndarray, originals: np.ndarray) -> tuple[list[int], list[float], list[float]]:
    """Best one-to-one matching of reconstructions [B, H, W] to originals [B, H, W] by PSNR.

    Returns (for each original, the index of its reconstruction), PSNRs and SSIMs of the matched
    pairs after :func:`align_affine`. Brute force over permutations: B is at most a handful.
    """
    B = len(originals)
    if len(recon) != B:
        raise ValueError(f"match_images: {len(recon)} reconstructions for {B} originals")
    if B > 6:
        raise ValueError(f"match_images: at most 6 images (permutations), found {B}")
    aligned = [[align_affine(recon[j], originals[i]) for j in range(B)] for i in range(B)]
    table = np.array([[psnr(aligned[i][j], originals[i]) for j in range(B)] for i in range(B)])
    best = max(itertools.permutations(range(B)), key=lambda p: sum(table[i, p[i]] for i in range(B)))
    ps = [float(table[i, best[i]]) for i in range(B)]
    ss = [ssim(aligned[i][best[i]], originals[i]) for i in range(B)]
    return list(best), ps, ss


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) over every threshold; a higher score means "member" (label 1)."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        raise ValueError("roc_curve: needs both members (1) and non-members (0)")
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each tied score
    tp, fp = np.cumsum(y)[distinct], np.cumsum(~y)[distinct]
    return np.r_[0.0, fp / (~y).sum()], np.r_[0.0, tp / y.sum()]


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    fpr, tpr = roc_curve(scores, labels)
    # np.trapezoid from numpy 2.0; np.trapz before it (the core supports numpy >= 1.24)
    trapezoid = getattr(np, "trapezoid", None) or getattr(np, "trapz")  # noqa: B009 (removed in numpy 2.4)
    return float(trapezoid(tpr, fpr))


def tpr_at_fpr(scores: np.ndarray, labels: np.ndarray, fpr_max: float) -> float:
    """The largest TPR over thresholds whose FPR is at most ``fpr_max`` (Carlini et al. 2022, Sec. 3).

    With N non-members the smallest non-zero FPR is 1/N: below that this is the TPR at FPR = 0.
    """
    fpr, tpr = roc_curve(scores, labels)
    return float(tpr[fpr <= fpr_max + 1e-12].max())
