"""Metrics in plain numpy: accuracy, top-k, ROC AUC, gallery matching by cosine distance."""

from __future__ import annotations

import numpy as np

__all__ = ["accuracy", "topk_accuracy", "roc_auc", "gallery_topk"]


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    if len(y) == 0:
        return float("nan")
    return float(np.mean(np.argmax(logits, axis=1) == y))


def topk_accuracy(logits: np.ndarray, y: np.ndarray, k: int) -> float:
    if len(y) == 0:
        return float("nan")
    k = min(k, logits.shape[1])
    top = np.argsort(-logits, axis=1)[:, :k]
    return float(np.mean(np.any(top == y[:, None], axis=1)))


def roc_auc(scores: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney U with average ranks for ties); NaN with one class."""
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = np.asarray(scores)[order]
    i = 0
    while i < len(sorted_scores):
        j = i
        while j + 1 < len(sorted_scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def gallery_topk(
    gallery: np.ndarray,
    gallery_ids: np.ndarray,
    probes: np.ndarray,
    probe_ids: np.ndarray,
    ks: tuple[int, ...] = (1, 5),
) -> dict[int, float]:
    """Identify each probe embedding among gallery embeddings by cosine similarity.

    Returns, for each k, the fraction of probes whose identity is among the k nearest gallery
    identities (GestaltMatcher-style matching of identities unseen in training).
    """

    def normalise(a: np.ndarray) -> np.ndarray:
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    sims = normalise(probes) @ normalise(gallery).T
    order = np.argsort(-sims, axis=1)
    ranked_ids = gallery_ids[order]
    out = {}
    for k in ks:
        out[k] = float(np.mean(np.any(ranked_ids[:, :k] == probe_ids[:, None], axis=1)))
    return out
