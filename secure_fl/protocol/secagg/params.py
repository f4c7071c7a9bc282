"""SecAgg+ parameters from Bell et al.'s bounds, with failure probabilities computed exactly.

Bell, Bonawitz, Gascón, Lepoint, Raykova, "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead", CCS 2020, §3.3-3.4 (Theorem 3.6, Lemmas 3.7-3.8): with a random
graph of degree k = O(log n) and threshold t, the protocol is secure against an adversary
controlling the server and a fraction γ of the clients, and correct when a fraction δ drops
out, except with probability 2^-σ (security) and 2^-η (correctness), provided

1. no honest client has t or more corrupt neighbours (else the adversary holds t shares of
   its secrets and unmasks it);
2. the graph on the honest surviving clients stays connected (else the server learns the sum
   of each component, Bell et al. Lemma 3.7);
3. every surviving client keeps at least t surviving share holders (else the round aborts).

Bell et al. bound these asymptotically with Chernoff-style constants. Here each is computed
*exactly* for our graph, the Harary graph H(k, n) on a uniformly random permutation of the
sites (:mod:`secure_fl.protocol.secagg.graph`), under Bell et al.'s assumption that the
corrupt set (C = ⌊γn⌋ sites) and the dropout set (D = ⌊δn⌋ sites) are fixed independently of
the graph's permutation:

* a given site's k neighbours are a uniform k-subset of the other n - 1 sites, so its number
  of corrupt (dropped) neighbours is hypergeometric; events 1 and 3 use a union bound over
  the sites;
* the removed sites (corrupt ∪ dropped, m = C + D of them) occupy a uniform m-subset of the
  cycle positions; H(k, n) minus a set of positions is connected iff at most one maximal run
  of removed positions has length >= k/2, which is counted exactly over compositions.

All arithmetic is on exact integers; only the final ratio is taken as log2.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

__all__ = [
    "PlusParameters",
    "hypergeom_log2_sf",
    "harary_disconnect_log2",
    "plus_failure",
    "derive_plus_parameters",
    "NEG_INF",
]

NEG_INF = float("-inf")


def _log2_ratio(num: int, den: int) -> float:
    if num <= 0:
        return NEG_INF
    return math.log2(num) - math.log2(den)


def _log2_add(*xs: float) -> float:
    finite = [x for x in xs if x != NEG_INF]
    if not finite:
        return NEG_INF
    top = max(finite)
    return top + math.log2(sum(2.0 ** (x - top) for x in finite))


def hypergeom_log2_sf(population: int, marked: int, draws: int, at_least: int) -> float:
    """log2 P(X >= at_least), X the marked items among ``draws`` drawn without replacement."""
    if at_least <= 0:
        return 0.0
    hi = min(marked, draws)
    if at_least > hi:
        return NEG_INF
    num = sum(math.comb(marked, i) * math.comb(population - marked, draws - i) for i in range(at_least, hi + 1))
    return _log2_ratio(num, math.comb(population, draws))


def _compositions_below(total: int, parts: int, cap: int) -> int:
    """Compositions of ``total`` into ``parts`` non-negative parts, each < ``cap`` (inclusion-exclusion)."""
    if parts == 0:
        return 1 if total == 0 else 0
    return sum(
        (-1) ** j * math.comb(parts, j) * math.comb(total - j * cap + parts - 1, parts - 1)
        for j in range(0, min(parts, total // cap) + 1)
    )


def harary_disconnect_log2(n: int, degree: int, removed: int) -> float:
    """log2 P(H(degree, n) minus a uniform ``removed``-subset of its positions is disconnected).

    Remaining sites r = n - removed split the cycle into r gaps (runs of removed positions);
    two consecutive remaining sites are adjacent iff their gap is < k/2, and no edge crosses a
    gap of >= k/2, so the rest is connected iff at most one gap is >= k/2. A subset with a
    distinguished remaining site is a cycle position (n choices) times a composition of
    ``removed`` into r gaps, so #subsets with a rotation-invariant property = n/r #compositions.
    """
    r = n - removed
    if degree >= n - 1 or r <= 1:
        return NEG_INF  # complete graph, or at most one site left: nothing to separate
    h = degree // 2
    small = _compositions_below(removed, r, h)  # every gap < k/2
    # exactly one gap >= k/2 (r choices of which): that gap minus h is free, the others < h
    one = 0
    if removed >= h:
        one = r * sum(
            (-1) ** j * math.comb(r - 1, j) * math.comb(removed - h - j * h + r - 1, r - 1)
            for j in range(0, min(r - 1, (removed - h) // h) + 1)
        )
    connected_subsets = n * (small + one)
    total = r * math.comb(n, r)
    return _log2_ratio(total - connected_subsets, total)


@dataclass(frozen=True)
class PlusParameters:
    """SecAgg+ parameters for n sites and the failure probabilities they give (log2)."""

    n: int
    degree: int  # neighbours per site; n - 1 is the complete graph
    threshold: int
    corrupt: int  # C = floor(gamma n) colluding sites assumed
    dropped: int  # D = floor(delta n) dropouts assumed
    security_log2: float  # log2 P(a colluding coalition of C sites learns more than the survivors' sum)
    correctness_log2: float  # log2 P(the round aborts with D dropouts)

    @property
    def complete(self) -> bool:
        return self.degree >= self.n - 1

    @property
    def failure_probability(self) -> float:
        return 2.0**self.security_log2

    @property
    def abort_probability(self) -> float:
        return 2.0**self.correctness_log2

    def describe(self) -> str:
        graph = "complete graph" if self.complete else f"degree {self.degree}"
        return (
            f"n = {self.n}: {graph}, t = {self.threshold}; with C = {self.corrupt} colluding and "
            f"D = {self.dropped} dropped sites, P(security failure) = {_fmt(self.security_log2)}, "
            f"P(abort) = {_fmt(self.correctness_log2)}"
        )


def _count(fraction: float, n: int) -> int:
    """⌊fraction x n⌋, read to 4 decimals (so a spec's 0.333333 means a third of 3 sites is 1)."""
    return math.floor(fraction * n + 1e-4)


def _fmt(log2p: float) -> str:
    if log2p == NEG_INF:
        return "0"
    return f"2^{log2p:.1f}"


def plus_failure(n: int, degree: int, threshold: int, corrupt: int, dropped: int) -> tuple[float, float]:
    """(log2 security failure, log2 abort) of SecAgg+ on H(degree, n) with threshold t.

    Security fails if some honest site has >= t corrupt neighbours (union over the n - C honest
    sites) or the honest survivors' graph is disconnected (m = C + D sites removed). The round
    aborts if some surviving site keeps < t share holders (itself and its surviving neighbours:
    more than k + 1 - t dropped neighbours, union over n - D sites) or the survivors' graph is
    disconnected (the aggregator checks it before unmasking).
    """
    k = min(degree, n - 1)
    honest = n - corrupt
    sec_a = NEG_INF
    if honest > 0 and corrupt > 0:
        sec_a = math.log2(honest) + hypergeom_log2_sf(n - 1, corrupt, k, threshold)
    sec_b = harary_disconnect_log2(n, k, min(corrupt + dropped, n))
    cor_a = NEG_INF
    if dropped > 0:
        cor_a = math.log2(n - dropped) + hypergeom_log2_sf(n - 1, dropped, k, k + 2 - threshold)
    cor_b = harary_disconnect_log2(n, k, dropped)
    return min(0.0, _log2_add(sec_a, sec_b)), min(0.0, _log2_add(cor_a, cor_b))


@functools.lru_cache(maxsize=256)
def derive_plus_parameters(
    n: int,
    corrupt_fraction: float,
    dropout_fraction: float,
    security_bits: int = 40,
    correctness_bits: int = 20,
    degree: int | None = None,
    threshold: int | None = None,
    threshold_fraction: float | None = None,
) -> PlusParameters:
    """The smallest even degree k (then the smallest threshold t > (k + 1)/2) meeting both targets.

    A given ``degree`` / ``threshold`` / ``threshold_fraction`` is kept and the rest searched.
    When no k < n - 1 works, the complete graph (k = n - 1) is used. Raises ``ValueError`` naming
    the numbers when no parameters meet 2^-security_bits and 2^-correctness_bits.
    """
    if n < 3:
        raise ValueError(
            f"pairwise masking needs at least 3 sites (a sum of two reveals each to the other), got n = {n}"
        )
    corrupt, dropped = _count(corrupt_fraction, n), _count(dropout_fraction, n)
    if degree is not None:
        degrees = [min(degree, n - 1)]
    else:
        degrees = list(range(2, n - 1, 2)) + [n - 1]
    best: PlusParameters | None = None
    for k in degrees:
        if threshold is not None:
            ts = [threshold]
        elif threshold_fraction is not None:
            ts = [max(2, math.ceil(threshold_fraction * (k + 1) - 1e-9))]
        else:
            ts = list(range((k + 1) // 2 + 1, k + 2))
        for t in ts:
            if not (k + 1) / 2 < t <= k + 1:
                continue
            sec, cor = plus_failure(n, k, t, corrupt, dropped)
            cand = PlusParameters(n, k, t, corrupt, dropped, sec, cor)
            if best is None or (sec, cor) < (best.security_log2, best.correctness_log2):
                best = cand
            if sec <= -security_bits and cor <= -correctness_bits:
                return cand
    if best is None:
        raise ValueError(
            f"threshold t = {threshold if threshold is not None else threshold_fraction} leaves no t with "
            f"(k + 1)/2 < t <= k + 1 for degree k = {degrees[0]} (n = {n} sites)"
        )
    raise ValueError(
        f"no SecAgg+ parameters for n = {n} sites meet 2^-{security_bits} security and 2^-{correctness_bits} "
        f"correctness with corrupt_fraction = {corrupt_fraction} and dropout_fraction = {dropout_fraction}; "
        f"best found: {best.describe()}"
    )


def _main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="SecAgg+ degree, threshold and failure probabilities (Bell et al. 2020)")
    p.add_argument("n", type=int, nargs="*", default=[4, 10, 100, 1000])
    p.add_argument("--corrupt-fraction", type=float, default=1 / 3)
    p.add_argument("--dropout-fraction", type=float, default=0.1)
    p.add_argument("--security-bits", type=int, default=40)
    p.add_argument("--correctness-bits", type=int, default=20)
    a = p.parse_args(argv)
    for n in a.n:
        try:
            print(
                derive_plus_parameters(
                    n, a.corrupt_fraction, a.dropout_fraction, a.security_bits, a.correctness_bits
                ).describe()
            )
        except ValueError as exc:
            print(f"n = {n}: {exc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
