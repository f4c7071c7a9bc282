"""Print the README table of CKKS presets: size, precision and speed, measured in one run.

    python benchmarks/ckks_table.py [--params 1000000] [--sites 100] [--error-dim 20000]

For each preset (and two variants that isolate symmetric vs public-key encryption):
bytes per parameter of a site's update message (the framed chunks of a ``--params``
update), that size as a multiple of fp32 and against NVFlare's parameters, the largest
relative error of the decrypted weighted mean over ``--sites`` sites (a full CkksSum round
on ``--error-dim`` parameters; two update distributions, the worse one is reported; the
error is ``max|mean - plain mean| / max|plain mean|``), and the seconds to encrypt
(+ serialise) and to decrypt a ``--params`` update on this machine (best of ``--repeats``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import numpy as np
import tenseal as ts

from secure_fl.crypto.ckks import CkksKeys, decrypt_chunks, encrypt_chunks, generate_keys
from secure_fl.crypto.ckks_frame import FrameKind, pack_frame
from secure_fl.crypto.ckks_params import PRESETS, REFERENCE_PRESET, CkksPreset
from secure_fl.protocol.base import AGGREGATOR
from secure_fl.protocol.ckks import CkksSum

__all__ = ["VARIANTS", "measure_size_speed", "measure_error", "main"]

VARIANTS: dict[str, CkksPreset] = {
    **PRESETS,
    "nvflare-symmetric": CkksPreset(
        "nvflare-symmetric",
        8192,
        (60, 40, 40),
        encryption="symmetric",
        scale_bits=40,
        note="NVFlare's moduli, symmetric",
    ),
    "compact-public-key": CkksPreset(
        "compact-public-key", 8192, (38, 38), encryption="public-key", note="compact, public-key"
    ),
}


def measure_size_speed(keys: CkksKeys, n_params: int, seed: int = 0, repeats: int = 3) -> dict[str, float]:
    """Bytes of one framed update and the best of ``repeats`` timings (a shared machine is noisy)."""
    x = np.random.default_rng(seed).uniform(-1, 1, size=n_params + 1)  # + the weight slot
    ctx = keys.secret()
    t_enc = t_dec = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        chunks = encrypt_chunks(ctx, x)
        t_enc = min(t_enc, time.perf_counter() - t0)
    payload = pack_frame(FrameKind.UPDATE, keys.fingerprint, 0, chunks)
    vecs = [ts.ckks_vector_from(ctx.context, c) for c in chunks]
    for _ in range(repeats):
        t0 = time.perf_counter()
        y = decrypt_chunks(ctx, vecs)
        t_dec = min(t_dec, time.perf_counter() - t0)
    assert np.max(np.abs(y - x)) < 1e-3
    return {"bytes_per_param": len(payload) / n_params, "encrypt_s": t_enc, "decrypt_s": t_dec}


def _run_round(proto: CkksSum, values: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    ids = list(values)
    dim = len(next(iter(values.values())))
    sites = {s: proto.site(s, 0, values[s], weights[s]) for s in ids}
    agg = proto.aggregator(0, ids, dim)
    inbox: dict[str, list] = {s: [] for s in ids}
    agg_inbox: list = []
    for stage in proto.stages:
        if stage.actor == "sites":
            for s, party in sites.items():
                agg_inbox += party.step(stage.name, inbox[s])
                inbox[s] = []
        else:
            for msg in agg.step(stage.name, agg_inbox):
                if msg.receiver != AGGREGATOR:
                    inbox[msg.receiver].append(msg)
            agg_inbox = []
    if agg.rejected:
        raise RuntimeError(f"unexpected rejections: {agg.rejected}")
    result = sites[ids[0]].result()
    assert result is not None
    return result.mean


def measure_error(preset: CkksPreset, n_sites: int, dim: int, seed: int = 0) -> float:
    """Largest relative error of the decrypted weighted mean over two update distributions.

    ``correlated``: site deltas share a direction (what FL rounds look like);
    ``independent``: zero-mean deltas that cancel (the mean is ~sqrt(n) times smaller than
    the sum of magnitudes: the hard case for fixed-point encodings). Weights are example
    counts in [10, 5000).
    """
    rng = np.random.default_rng(seed)
    ids = [f"site-{i:03d}" for i in range(n_sites)]
    proto = CkksSum.__new__(CkksSum)
    CkksSum.__init__(proto, preset="compact")
    proto._preset = preset  # variants outside the catalogue are measured the same way
    proto.setup(ids, dim)
    worst = 0.0
    for shared in (1.0, 0.0):
        weights = {s: float(rng.integers(10, 5000)) for s in ids}
        base = rng.normal(size=dim) * 0.01
        values = {s: (shared * base + rng.normal(size=dim) * 0.01) * weights[s] for s in ids}
        want = sum(values.values()) / sum(weights.values())
        got = _run_round(proto, values, weights)
        worst = max(worst, float(np.max(np.abs(got - want)) / np.max(np.abs(want))))
    return worst


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=int, default=1_000_000)
    ap.add_argument("--sites", type=int, default=100)
    ap.add_argument("--error-dim", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=3, help="timings: best of this many")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = ap.parse_args(argv)
    rows = []
    for name in args.variants:
        p = VARIANTS[name]
        keys = generate_keys(p)
        m = measure_size_speed(keys, args.params, repeats=args.repeats)
        m["error"] = measure_error(p, args.sites, args.error_dim)
        rows.append((p, m))
    ref = next((m["bytes_per_param"] for p, m in rows if p.name == REFERENCE_PRESET), None)
    print(
        f"CKKS presets: a {args.params:,}-parameter update per site (encrypt/decrypt: best of {args.repeats}); "
        f"error of the mean over {args.sites} sites ({args.error_dim:,} parameters)\n"
    )
    print(
        "| preset | N | moduli (bits) | encryption | security (bits) | bytes/param | × fp32 | × smaller than NVFlare | max rel. error of mean | encrypt s | decrypt s |"  # noqa: E501 (a table row or a translated phrase reads best whole)
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for p, m in rows:
        bpp = m["bytes_per_param"]
        smaller = f"{ref / bpp:.2f}" if ref else "–"
        print(
            f"| {p.name} | {p.poly_degree} | {list(p.coeff_mod_bit_sizes)} | {p.encryption} | {p.security} | {bpp:.2f} | {bpp / 4:.2f} | "  # noqa: E501 (a table row or a translated phrase reads best whole)
            f"{smaller} | {m['error']:.1e} | {m['encrypt_s']:.2f} | {m['decrypt_s']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
