"""The DP-SGD noise multiplier σ of each reproduction point of Abadi et al. 2016 on MNIST.

The paper (Sec. 5.2) fixes σ = 8 / 4 / 2 with DP-PCA at σ_p = 16 / 7 / 4 and trains until its moments
accountant reaches ε = 0.5 / 2 / 8 (δ = 1e-5). Here the number of steps is fixed by the compute budget, so σ
is the smallest (to 3 decimals, rounded up) for which DP-PCA (one Gaussian release, sensitivity 1, σ_p)
composed with ``steps`` Poisson-subsampled Gaussian steps (rate q) stays within the target ε, with
dp_accounting's PLD accountant (secure_fl.privacy.accounting). It also prints the ε of the paper's own σ
at the same steps, for comparison.

    python experiments/abadi-mnist/calibrate.py                       # centralised: q = 600/60000, 600 steps
    python experiments/abadi-mnist/calibrate.py --rate 0.04 --steps 600   # 4 sites, lot 600 of 15,000 each
"""

from __future__ import annotations

import argparse
import math

from secure_fl.privacy.accounting import compose, dp_sgd_event, epsilon, gaussian_event

POINTS = [("large", 0.5, 16.0, 8.0), ("medium", 2.0, 7.0, 4.0), ("small", 8.0, 4.0, 2.0)]  # (name, ε, σ_p, paper σ)
DELTA = 1e-5


def total_epsilon(sigma: float, pca_sigma: float, rate: float, steps: int, accountant: str = "pld") -> float:
    """ε of DP-PCA (Gaussian, σ_p) followed by ``steps`` DP-SGD steps (σ, Poisson rate)."""
    return epsilon(compose([gaussian_event(pca_sigma), dp_sgd_event(sigma, rate, steps)]), DELTA, accountant)


def calibrate(target: float, pca_sigma: float, rate: float, steps: int) -> float:
    """The smallest σ on a 0.001 grid with total ε <= target (bisection; ε falls as σ grows)."""
    lo, hi = 0.3, 64.0
    if total_epsilon(hi, pca_sigma, rate, steps) > target:
        raise ValueError(f"DP-PCA at σ_p = {pca_sigma} alone exceeds ε = {target}")
    while hi - lo > 1e-4:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if total_epsilon(mid, pca_sigma, rate, steps) > target else (lo, mid)
    return math.ceil(hi * 1000) / 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=0.01, help="Poisson rate q (lot / examples at a site)")
    ap.add_argument("--steps", type=int, default=600, help="DP-SGD steps in all")
    args = ap.parse_args()
    print("point   target ε  σ_p   σ (ours)  ε(ours, PLD)  ε(ours, RDP)  ε(PCA alone)  ε(paper σ, same steps)")
    for name, target, pca_sigma, paper_sigma in POINTS:
        s = calibrate(target, pca_sigma, args.rate, args.steps)
        ours = total_epsilon(s, pca_sigma, args.rate, args.steps)
        print(f"{name:7s} {target:8g}  {pca_sigma:4g}  {s:8.3f}  {ours:12.3f}"
              f"  {total_epsilon(s, pca_sigma, args.rate, args.steps, 'rdp'):12.3f}"
              f"  {epsilon(gaussian_event(pca_sigma), DELTA, 'pld'):12.3f}"
              f"  {total_epsilon(paper_sigma, pca_sigma, args.rate, args.steps):10.3f} (σ = {paper_sigma:g})")


if __name__ == "__main__":
    main()
