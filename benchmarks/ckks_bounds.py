"""Precision and bytes of the CKKS secure sum: magnitude histogram vs public bounds, on real updates.

    .venv/bin/python benchmarks/ckks_bounds.py [--rounds 3] [--tasks heart-disease faces]

A plaintext FedAvg federation (the ``bench_rounds`` setting: Adam, lr 0.001, one local epoch)
runs ``--rounds`` rounds; at each round the sites' weighted updates are also summed by
``CkksSum`` (preset compact) with ``bounds = "histogram"`` and with ``bounds = "public"``, and
the decrypted mean is compared with the plaintext mean: relative error ``‖m̂ − m‖₂ / ‖m‖₂``
(and the largest coordinate error over ``max|m|``), plus KB up and down per site and round.

Public bounds must be known before any data is seen. Two are measured: "public ×2", twice the
largest |value| any site sent in the run (the best a public bound can do), and "public ×1024",
a bound 2^10 looser (a conservative a-priori guess), so the cost of a loose bound is visible.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_rounds import make_federation  # noqa: E402

from secure_fl.engine.local import drive_round  # noqa: E402
from secure_fl.protocol.ckks import CkksSum  # noqa: E402
from secure_fl.run import federation as federation_module  # noqa: E402


def _record_inputs(task_key: str, rounds: int) -> tuple[list[dict[str, tuple[np.ndarray, float]]], int, list[str]]:
    recorded: list[dict[str, tuple[np.ndarray, float]]] = []
    real = federation_module.drive_round

    def spy(protocol: Any, r: int, inputs: Any, dim: int, drop_before: Any = None) -> Any:
        recorded.append({s: (np.array(v, dtype=np.float64), float(w)) for s, (v, w) in inputs.items()})
        return real(protocol, r, inputs, dim, drop_before)

    federation_module.drive_round = spy  # type: ignore[assignment]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            fed = make_federation(task_key, "plain-fedavg", Path(tmp))
            for r in range(rounds):
                fed.round(r)
            return recorded, fed.dim, [s.name for s in fed.task.sites]
    finally:
        federation_module.drive_round = real  # type: ignore[assignment]


Inputs = dict[str, tuple[np.ndarray, float]]


def _measure(proto: CkksSum, rounds: list[Inputs], dim: int) -> tuple[float, float, float, float]:
    rel2, relmax, up, down = [], [], [], []
    for r, inputs in enumerate(rounds):
        out = drive_round(proto, r, inputs, dim)
        if out.result is None:
            raise SystemExit(f"round {r} released nothing: {out.aborted} {out.dropped}")
        want = sum(v for v, _ in inputs.values()) / sum(w for _, w in inputs.values())
        got = out.result.mean
        rel2.append(float(np.linalg.norm(got - want) / np.linalg.norm(want)))
        relmax.append(float(np.max(np.abs(got - want)) / np.max(np.abs(want))))
        up.append(float(np.mean(list(out.bytes_up.values()))))
        down.append(float(np.mean(list(out.bytes_down.values()))))
    return float(np.max(rel2)), float(np.max(relmax)), float(np.mean(up)) / 1024, float(np.mean(down)) / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tasks", nargs="+", default=["heart-disease", "faces"])
    args = ap.parse_args()
    print(
        "| task | params | bounds | rel. error of the mean (ℓ2, worst round) | max coord. error / max|mean| "
        "| KB up/site/round | KB down/site/round | stages |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for task in args.tasks:
        rounds, dim, sites = _record_inputs(task, args.rounds)
        peak_v = max(float(np.max(np.abs(v))) for inputs in rounds for v, _ in inputs.values())
        peak_w = max(w for inputs in rounds for _, w in inputs.values())
        variants: list[tuple[str, CkksSum]] = [("histogram", CkksSum())]
        for label, margin in (("public ×2", 2.0), ("public ×1024", 1024.0)):
            proto = CkksSum()
            proto.use_public_bounds(margin * peak_v, 2.0 * peak_w)
            variants.append((label, proto))
        for label, proto in variants:
            proto.setup(sites, dim)
            e2, emax, up, down = _measure(proto, rounds, dim)
            print(f"| {task} | {dim} | {label} | {e2:.1e} | {emax:.1e} | {up:.1f} | {down:.1f} | {len(proto.stages)} |")


if __name__ == "__main__":
    main()
