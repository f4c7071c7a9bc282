"""One-run privacy audit: an empirical ε lower bound from a single training run (Steinke, Nasr,
Jagielski, NeurIPS 2023, "Privacy Auditing with One (1) Training Run").

m canaries are each included in one site's training data independently with probability 1/2
(Sec. 3). After training, the auditor scores every canary from what the threat model gives it
(here: the released models before and after training), guesses "in" for the k+ highest scores and
"out" for the k- lowest, abstains on the rest, and counts v correct guesses out of r = k+ + k-.

If training is (ε, δ)-DP with respect to the canaries, Theorem 5.2 (Appendix D's code) bounds

    P[v correct] <= P[Binomial(r, e^ε/(1+e^ε)) >= v] + 2 m δ max_{i=1..v} P[v > Binomial(...) >= v - i] / i,

so the largest ε whose bound is below 1 - confidence is an ε that the mechanism does *not* satisfy,
with that confidence: an empirical lower bound. A lower bound above the accountant's ε means the
implementation (or its accounting) is wrong.

Assumptions: the canary inclusions are independent fair coins drawn by the auditor, and the guess
sizes k+ and k- are fixed before the scores are seen.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

__all__ = ["p_value", "epsilon_lower_bound", "guesses"]


def p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """P[at least v of r guesses correct] for an (ε, δ)-DP mechanism (Steinke et al., Theorem 5.2)."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"p_value: need 0 <= v <= r <= m, found v={v}, r={r}, m={m}")
    if eps < 0 or not 0 <= delta <= 1:
        raise ValueError(f"p_value: need eps >= 0 and delta in [0, 1], found eps={eps}, delta={delta}")
    q = 1.0 / (1.0 + math.exp(-eps))
    beta = float(stats.binom.sf(v - 1, r, q))
    if delta == 0:
        return min(beta, 1.0)
    if v == 0:
        return min(beta, 1.0)
    i = np.arange(1, v + 1)
    acc = np.cumsum(stats.binom.pmf(v - i, r, q))  # P[v > Binomial(r, q) >= v - i]
    alpha = float(np.max(acc / i))
    return min(beta + alpha * delta * 2 * m, 1.0)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, confidence: float = 0.95, eps_max: float = 50.0) -> float:
    """The largest ε (to 1e-4, by bisection) that v correct guesses out of r reject at ``confidence``; 0 if none."""
    if not 0 < confidence < 1:
        raise ValueError(f"epsilon_lower_bound: confidence must be in (0, 1), found {confidence}")
    alpha = 1.0 - confidence
    if p_value(m, r, v, 0.0, delta) >= alpha:
        return 0.0
    lo, hi = 0.0, eps_max
    if p_value(m, r, v, hi, delta) < alpha:
        return hi
    while hi - lo > 1e-4:
        mid = (lo + hi) / 2
        if p_value(m, r, v, mid, delta) < alpha:
            lo = mid
        else:
            hi = mid
    return lo


def guesses(scores: np.ndarray, included: np.ndarray, k_pos: int, k_neg: int) -> tuple[int, int]:
    """(r, v): guess "in" for the k_pos highest scores and "out" for the k_neg lowest."""
    scores, included = np.asarray(scores, dtype=np.float64), np.asarray(included).astype(bool)
    m = len(scores)
    if k_pos < 0 or k_neg < 0 or k_pos + k_neg > m:
        raise ValueError(f"guesses: need k_pos, k_neg >= 0 and k_pos + k_neg <= m = {m}, found {k_pos}, {k_neg}")
    order = np.argsort(-scores, kind="mergesort")
    v = int(included[order[:k_pos]].sum()) + int((~included[order[m - k_neg:]]).sum() if k_neg else 0)
    return k_pos + k_neg, v
