"""Bytes per parameter of a CKKS upload, per preset: what TenSEAL sends today and what each encoding would send.

    python scripts/ckks_bytes_options.py [--params 200000]

``zstd (measured)`` is the framed update one site sends today (TenSEAL 0.3.18 serialises SEAL
ciphertexts with zstd), for ``--params`` values. The other columns are computed exactly from the
preset, per ciphertext of ``N/2`` real slots holding two polynomials of ``N`` coefficients, each
coefficient one residue per data prime (every prime but the special one):

* ``raw``: SEAL's uncompressed form, one 64-bit word per residue: ``2 N L 8`` bytes;
* ``bit-packed``: each residue in exactly as many bits as its prime (``2 N Σ bits_i / 8``);
* ``+ complex``: two real values per complex slot (real and imaginary parts), ``N`` values per
  ciphertext instead of ``N/2``: half the bytes, the same noise per slot;
* ``+ seeded``: a fresh symmetric ciphertext sent as ``c0`` and the 32-byte seed of its uniform
  ``c1`` (what SEAL's own ``encrypt_symmetric`` serialisation does): half the upload. Not for
  public-key presets (their ``c1`` is not uniform from a seed); the download (a sum) stays full.

Frame and SEAL headers (~100 bytes per ciphertext) are left out of the computed columns.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package

from secure_fl.crypto.ckks import encrypt_chunks, generate_keys  # noqa: E402
from secure_fl.crypto.ckks_frame import FrameKind, pack_frame  # noqa: E402
from secure_fl.crypto.ckks_params import PRESETS, CkksPreset  # noqa: E402


def computed(p: CkksPreset) -> dict[str, float]:
    """Bytes per parameter of each encoding of one fresh ciphertext (no headers)."""
    n, data = p.poly_degree, p.coeff_mod_bit_sizes[:-1]
    slots = n // 2
    raw = 2 * n * len(data) * 8 / slots
    packed = 2 * n * sum(data) / 8 / slots
    out = {"raw": raw, "bit-packed": packed, "bit-packed + complex": packed / 2}
    if p.encryption == "symmetric":
        out["bit-packed + complex + seeded"] = packed / 4
    return out


def measured_zstd(p: CkksPreset, n_params: int) -> float:
    keys = generate_keys(p)
    x = np.random.default_rng(0).uniform(-1, 1, n_params)
    return len(pack_frame(FrameKind.UPDATE, keys.fingerprint, 0, encrypt_chunks(keys.secret(), x))) / n_params


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", type=int, default=200_000)
    args = ap.parse_args(argv)
    nvflare = measured_zstd(PRESETS["nvflare"], args.params)
    print("| preset | moduli | encryption | zstd (measured) | raw | bit-packed | + complex | + complex + seeded |"
          " best × fp32 | best × fewer than NVFlare today |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, p in PRESETS.items():
        z = nvflare if name == "nvflare" else measured_zstd(p, args.params)
        c = computed(p)
        best = c.get("bit-packed + complex + seeded", c["bit-packed + complex"])
        seeded = c.get("bit-packed + complex + seeded")
        print(f"| {name} | {list(p.coeff_mod_bit_sizes)} | {p.encryption} | {z:.2f} | {c['raw']:.2f} | "
              f"{c['bit-packed']:.2f} | {c['bit-packed + complex']:.2f} | "
              f"{'n/a (public key)' if seeded is None else f'{seeded:.2f}'} | {best / 4:.2f} | {nvflare / best:.1f} |")


if __name__ == "__main__":
    main()
