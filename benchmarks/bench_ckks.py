"""Costs of the CKKS secure sum: encrypt, serialise, sum over n sites, decrypt.

    python -m pytest benchmarks/bench_ckks.py --benchmark-enable [-k compact]

Every preset is measured beside NVFlare's parameters in the same run. Each benchmark's
``extra_info`` holds the bytes of one site's update message per parameter, that size as a
multiple of fp32, and how many times smaller it is than NVFlare's. 100k and 1M parameters
are timed over a few rounds; 10M parameters is a single shot (``test_10m_single_shot``).
The README table comes from ``benchmarks/ckks_table.py``.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
import tenseal as ts

from secure_fl.crypto.ckks import CkksKeys, decrypt_chunks, encrypt_chunks, generate_keys
from secure_fl.crypto.ckks_frame import FrameKind, load_vectors, pack_frame, unpack_frame
from secure_fl.crypto.ckks_params import PRESETS, REFERENCE_PRESET
from secure_fl.protocol.ckks import update_layout

PRESET_NAMES = sorted(PRESETS)
SIZES = [100_000, 1_000_000]
N_SITES = 10


@cache
def _keys(preset: str) -> CkksKeys:
    return generate_keys(preset)


@cache
def _update(n_params: int) -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, size=n_params + 1)  # + the weight slot


@cache
def _payload(preset: str, n_params: int) -> bytes:
    keys = _keys(preset)
    return pack_frame(FrameKind.UPDATE, keys.fingerprint, 0, encrypt_chunks(keys.secret(), _update(n_params)))


def _size_info(benchmark, preset: str, n_params: int) -> None:
    bpp = len(_payload(preset, n_params)) / n_params
    ref = len(_payload(REFERENCE_PRESET, n_params)) / n_params
    benchmark.extra_info.update(
        {
            "preset": preset,
            "params": n_params,
            "bytes_per_param": round(bpp, 3),
            "x_fp32": round(bpp / 4, 3),
            "x_smaller_than_nvflare": round(ref / bpp, 3),
        }
    )


@pytest.mark.parametrize("n_params", SIZES)
@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_encrypt(benchmark, preset: str, n_params: int) -> None:
    ctx = _keys(preset).secret()
    x = _update(n_params)
    chunks = benchmark.pedantic(encrypt_chunks, args=(ctx, x), rounds=3, iterations=1)
    assert len(chunks) == len(update_layout(n_params, ctx.preset.slots))
    _size_info(benchmark, preset, n_params)


@pytest.mark.parametrize("n_params", SIZES)
@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_serialize(benchmark, preset: str, n_params: int) -> None:
    ctx = _keys(preset).secret()
    frame = unpack_frame(_payload(preset, n_params), kind=FrameKind.UPDATE, fingerprint=ctx.fingerprint, round=0)
    vecs = [ts.ckks_vector_from(ctx.context, c) for c in frame.chunks]
    out = benchmark.pedantic(lambda: [v.serialize() for v in vecs], rounds=3, iterations=1)
    assert len(out) == len(vecs)
    _size_info(benchmark, preset, n_params)


@pytest.mark.parametrize("n_params", SIZES)
@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_sum(benchmark, preset: str, n_params: int) -> None:
    """The aggregator's work for N_SITES sites: check frames, load chunks, add (public context)."""
    keys = _keys(preset)
    public = keys.public()
    payload = _payload(preset, n_params)
    layout = update_layout(n_params, public.preset.slots)

    def aggregate() -> list[ts.CKKSVector]:
        total = None
        for _ in range(N_SITES):
            frame = unpack_frame(
                payload, kind=FrameKind.UPDATE, fingerprint=public.fingerprint, round=0, n_chunks=len(layout)
            )
            vecs = load_vectors(public, frame.chunks, layout)
            total = vecs if total is None else [t.add_(v) for t, v in zip(total, vecs)]
        assert total is not None
        return total

    total = benchmark.pedantic(aggregate, rounds=2, iterations=1)
    secret = keys.secret()
    got = decrypt_chunks(secret, [ts.ckks_vector_from(secret.context, t.serialize()) for t in total])
    assert np.max(np.abs(got - N_SITES * _update(n_params))) < 1e-3
    _size_info(benchmark, preset, n_params)
    benchmark.extra_info["sites"] = N_SITES


@pytest.mark.parametrize("n_params", SIZES)
@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_decrypt(benchmark, preset: str, n_params: int) -> None:
    ctx = _keys(preset).secret()
    frame = unpack_frame(_payload(preset, n_params), kind=FrameKind.UPDATE, fingerprint=ctx.fingerprint, round=0)
    vecs = [ts.ckks_vector_from(ctx.context, c) for c in frame.chunks]
    y = benchmark.pedantic(decrypt_chunks, args=(ctx, vecs), rounds=3, iterations=1)
    assert np.max(np.abs(y - _update(n_params))) < 1e-3
    _size_info(benchmark, preset, n_params)


@pytest.mark.parametrize("preset", ["compact", REFERENCE_PRESET])
def test_10m_single_shot(benchmark, preset: str) -> None:
    """10M parameters, once: encrypt + frame at a site (the time); bytes in extra_info."""
    n_params = 10_000_000
    keys = _keys(preset)
    ctx = keys.secret()
    x = np.random.default_rng(1).uniform(-1, 1, size=n_params + 1)

    def site() -> bytes:
        return pack_frame(FrameKind.UPDATE, keys.fingerprint, 0, encrypt_chunks(ctx, x))

    payload = benchmark.pedantic(site, rounds=1, iterations=1)
    bpp = len(payload) / n_params
    benchmark.extra_info.update(
        {"preset": preset, "params": n_params, "bytes_per_param": round(bpp, 3), "x_fp32": round(bpp / 4, 3)}
    )
