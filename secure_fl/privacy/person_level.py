"""Person-level DP-SGD building blocks: Poisson sampling and clipping with a *person* as the unit.

A patient with several photographs is one privacy unit. Per-example DP-SGD (Abadi et al. 2016,
Alg. 1) protects one photograph; a person with k photographs then gets only group privacy
(roughly k·ε). User-level DP-SGD (McMahan et al. 2018, "Learning Differentially Private
Recurrent Language Models", Sec. 2, Alg. 1 with each user's data as one unit; Levy et al. 2021
"Learning with User-Level Privacy") samples *people* and clips each person's summed gradient:

1. each person is included with probability q, independently (Poisson sampling of units), and
   all of that person's examples come with them;
2. a sampled person's gradients are summed, and the *sum* is clipped to L2 norm C;
3. the clipped per-person sums are added and Gaussian noise N(0, σ²C²) is added to the total.

Adding or removing one person changes the clipped sum by at most C, whatever their number of
photographs (:func:`clipped_person_sum`), so the sampled Gaussian mechanism and its accountant
apply unchanged with q = the person sampling rate and N = the number of people: the ε reported
is then per person. Assumption: person identifiers are correct and complete (two records of one
person under two ids are two units, and the guarantee for that person degrades to group privacy
over the ids it has).

Pure math on arrays: the noise source is injected (see :mod:`secure_fl.privacy.noise`).
"""

from __future__ import annotations

import numpy as np

from .noise import NoiseSource

__all__ = ["sample_people", "clipped_person_sum", "noisy_person_sum"]


def _check_ids(person_ids: np.ndarray, n: int | None = None) -> np.ndarray:
    ids = np.asarray(person_ids)
    if ids.ndim != 1:
        raise ValueError(f"person_ids: expected a 1-d array, found shape {ids.shape}")
    if n is not None and len(ids) != n:
        raise ValueError(f"person_ids: {len(ids)} ids for {n} examples")
    return ids


def sample_people(person_ids: np.ndarray, q: float, noise: NoiseSource) -> np.ndarray:
    """Boolean mask over examples: each *person* is kept with probability ``q``, with all their examples."""
    if not 0.0 < q <= 1.0:
        raise ValueError(f"sampling rate q must be in (0, 1], found {q}")
    ids = _check_ids(person_ids)
    people, inverse = np.unique(ids, return_inverse=True)
    keep = noise.bernoulli(q, len(people)).astype(bool)
    return keep[inverse]


def clipped_person_sum(grads: np.ndarray, person_ids: np.ndarray, clip: float) -> np.ndarray:
    """``Σ_person clip_C(Σ_{examples of person} g)``: per-example gradients [n, d] grouped by person.

    Each person's contribution has L2 norm <= ``clip``, so one person moves the result by at
    most ``clip`` however many examples they have.
    """
    if not clip > 0:
        raise ValueError(f"clip norm C must be > 0, found {clip}")
    g = np.asarray(grads, dtype=np.float64)
    if g.ndim != 2:
        raise ValueError(f"grads: expected per-example gradients [n, d], found shape {g.shape}")
    ids = _check_ids(person_ids, len(g))
    if len(g) == 0:
        return np.zeros(g.shape[1])
    _, inverse = np.unique(ids, return_inverse=True)
    per_person = np.zeros((int(inverse.max()) + 1, g.shape[1]))
    np.add.at(per_person, inverse, g)
    norms = np.linalg.norm(per_person, axis=1)
    scale = np.minimum(1.0, clip / np.maximum(norms, 1e-12))
    return (per_person * scale[:, None]).sum(axis=0)  # type: ignore[no-any-return]


def noisy_person_sum(grads: np.ndarray, person_ids: np.ndarray, clip: float, noise_multiplier: float,
                     noise: NoiseSource) -> np.ndarray:
    """The clipped per-person sum plus Gaussian noise of standard deviation ``noise_multiplier · clip``."""
    if noise_multiplier < 0:
        raise ValueError(f"noise_multiplier must be >= 0, found {noise_multiplier}")
    total = clipped_person_sum(grads, person_ids, clip)
    noisy: np.ndarray = total + noise.normal(noise_multiplier * clip, total.shape)
    return noisy
