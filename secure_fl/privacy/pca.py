"""Differentially private PCA: Gaussian noise on the second-moment matrix of unit-norm rows.

Abadi et al., "Deep Learning with Differential Privacy", CCS 2016, Sec. 4 ("Differentially
private PCA") and Sec. 5.2 (MNIST): the rows of the data matrix ``A`` are scaled to unit ℓ2 norm,
Gaussian noise is added to ``AᵀA``, and the principal directions of the noisy matrix project the
inputs (60 dimensions on MNIST). Their Sec. 5.2 runs it at ``σ_p`` = 16 / 7 / 4 beside DP-SGD's
σ = 8 / 4 / 2 and counts its privacy cost in the reported ε.

Privacy. With add/remove-one-row adjacency, one unit-norm row ``x`` changes ``AᵀA`` by ``xxᵀ``,
whose Frobenius norm is ``‖x‖² ≤ 1``. The noise is one independent ``N(0, σ_p²)`` per entry of the
upper triangle (diagonal included), mirrored below, so the released matrix is a function of the
upper triangle alone, whose ℓ2 sensitivity is at most 1: the release is the Gaussian mechanism
with noise multiplier ``σ_p`` (:func:`pca_event`, a ``dp_accounting`` ``GaussianDpEvent``), to be
composed with whatever else touches the same rows (DP-SGD). Everything computed from the noisy
matrix (eigenvectors, projected features) is post-processing. Assumption: each row is one
individual (one patient; one image on MNIST), and rows are normalised by a function of the row
alone (:func:`normalise_rows`), so no statistic of other rows enters.

Sums over sites. ``AᵀA`` of the union is the sum of the sites' own matrices
(:func:`second_moment`); a site that noises its own matrix with ``σ_p`` (:func:`noisy_second_moment`)
releases an (ε, δ)-DP matrix by itself, so the sum of the sites' noised matrices needs no trust in
anyone, at ``√k`` times the noise of one central release (negligible beside ``AᵀA`` of thousands
of rows). Floating-point Gaussians: the ε is that of the ideal mechanism (see
:mod:`secure_fl.privacy.noise`).
"""

from __future__ import annotations

import numpy as np
from dp_accounting import dp_event

from .accounting import gaussian_event
from .noise import NoiseSource

__all__ = ["normalise_rows", "second_moment", "symmetric_noise", "noisy_second_moment", "principal_directions",
           "pca_event", "dp_pca"]


def normalise_rows(x: np.ndarray) -> np.ndarray:
    """Each row scaled to unit ℓ2 norm (all-zero rows stay zero), as float64."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-d matrix of rows, found shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    out: np.ndarray = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    return out


def second_moment(x: np.ndarray) -> np.ndarray:
    """``AᵀA`` [d, d] of the unit-norm rows ``A`` of ``x``: what one site contributes to the sum."""
    a = normalise_rows(x)
    out: np.ndarray = a.T @ a
    return out


def symmetric_noise(d: int, sigma: float, source: NoiseSource) -> np.ndarray:
    """A symmetric [d, d] matrix with i.i.d. ``N(0, σ²)`` entries on and above the diagonal."""
    if d < 1:
        raise ValueError(f"matrix dimension must be >= 1, found {d}")
    if not (np.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"PCA noise multiplier must be finite and >= 0, found {sigma}")
    iu = np.triu_indices(d)
    upper = np.zeros((d, d))
    upper[iu] = source.normal(sigma, len(iu[0]))
    return upper + np.triu(upper, 1).T


def noisy_second_moment(x: np.ndarray, sigma: float, source: NoiseSource) -> np.ndarray:
    """``AᵀA + E`` with ``E`` from :func:`symmetric_noise`: the Gaussian mechanism of :func:`pca_event`."""
    m = second_moment(x)
    out: np.ndarray = m + symmetric_noise(m.shape[0], sigma, source)
    return out


def principal_directions(matrix: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` leading eigenvectors [d, k] of a symmetric matrix, largest eigenvalue first, each with
    its largest-magnitude entry positive (a fixed sign, so equal inputs give equal projections)."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"expected a square matrix, found shape {m.shape}")
    if not 1 <= k <= m.shape[0]:
        raise ValueError(f"number of components must be in [1, {m.shape[0]}], found {k}")
    from scipy.linalg import eigh  # a dependency of Opacus; computes only the k eigenpairs asked for

    d = m.shape[0]
    vals, vecs = eigh((m + m.T) / 2, subset_by_index=[d - k, d - 1], driver="evr")
    top = vecs[:, np.argsort(vals)[::-1]]
    signs = np.sign(top[np.abs(top).argmax(axis=0), np.arange(k)])
    out: np.ndarray = top * np.where(signs == 0, 1.0, signs)
    return out


def pca_event(sigma: float) -> dp_event.DpEvent:
    """The privacy cost of one noisy ``AᵀA`` release: a Gaussian mechanism, sensitivity 1, multiplier σ_p."""
    return gaussian_event(sigma)


def dp_pca(x: np.ndarray, k: int, sigma: float, source: NoiseSource) -> tuple[np.ndarray, dp_event.DpEvent]:
    """(projection [d, k], its DpEvent): the ``k`` principal directions of the noised ``AᵀA`` of ``x``."""
    return principal_directions(noisy_second_moment(x, sigma, source), k), pca_event(sigma)
