"""Splitting one labelled pool across sites: IID, Dirichlet over classes, or disjoint classes.

The split is a matrix ``P[class, site]`` of proportions; applying the same matrix to the
training and test pools keeps each site's test set drawn from its own label distribution.
"""

from __future__ import annotations

import numpy as np

from ..errors import SpecError

__all__ = ["class_proportions", "split_by_proportions", "SCHEMES"]

SCHEMES = ("iid", "dirichlet", "disjoint")


def class_proportions(
    num_classes: int, n_sites: int, scheme: str, rng: np.random.Generator, alpha: float = 0.5
) -> np.ndarray:
    """Proportions ``P[c, s]`` of class ``c`` that go to site ``s`` (rows sum to 1)."""
    if n_sites < 1:
        raise SpecError(f"n_sites must be >= 1, found {n_sites}")
    if scheme == "iid":
        return np.full((num_classes, n_sites), 1.0 / n_sites)
    if scheme == "dirichlet":
        if alpha <= 0:
            raise SpecError(f"dirichlet alpha must be > 0, found {alpha}")
        return rng.dirichlet(np.full(n_sites, alpha), size=num_classes)
    if scheme == "disjoint":
        if n_sites > num_classes:
            raise SpecError(
                f"disjoint split needs n_sites <= number of classes ({num_classes}), found n_sites={n_sites}"
            )
        owners = np.array_split(rng.permutation(num_classes), n_sites)
        P = np.zeros((num_classes, n_sites))
        for s, classes in enumerate(owners):
            P[classes, s] = 1.0
        return P
    raise SpecError(f"unknown partition scheme {scheme!r}; expected one of {list(SCHEMES)}")


def split_by_proportions(labels: np.ndarray, P: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Indices of ``labels`` for each site, following ``P`` (largest-remainder rounding per class)."""
    n_sites = P.shape[1]
    parts: list[list[int]] = [[] for _ in range(n_sites)]
    for c in range(P.shape[0]):
        idx = rng.permutation(np.flatnonzero(labels == c))
        raw = P[c] * len(idx)
        counts = np.floor(raw).astype(int)
        # the leftover examples go to the largest remainders, ties broken at random (not always site 0)
        tiebreak = rng.permutation(n_sites)
        leftover = np.lexsort((tiebreak, -(raw - counts)))[: len(idx) - counts.sum()]
        counts[leftover] += 1
        start = 0
        for s in range(n_sites):
            parts[s].extend(idx[start : start + counts[s]].tolist())
            start += counts[s]
    return [np.sort(np.array(p, dtype=np.int64)) for p in parts]
