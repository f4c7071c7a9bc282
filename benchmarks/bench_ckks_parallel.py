"""A CKKS site's chunk work on 1 and 2 worker processes: encrypt a 1M-parameter update into a frame, decrypt it.

    python -m pytest benchmarks/bench_ckks_parallel.py --benchmark-enable
    python benchmarks/bench_ckks_parallel.py --table [--params 1000000] [--workers 1 2] [--repeats 3]

The pytest benchmarks time :func:`~secure_fl.crypto.ckks_frame.encrypt_frame` and
:func:`~secure_fl.crypto.ckks_frame.decrypt_frame` (``compact``) with ``workers`` 1 (serial, in
this process) and 2 (the persistent pool, started before timing). ``--table`` prints, in one run,
site seconds per 1M parameters for each worker count (wall clock, best of ``--repeats``; and the CPU
seconds of this process plus its workers, read from ``/proc``), the ratio to serial, the pool's
start-up time, and the warm and cold break-even in chunks, from which
:data:`~secure_fl.crypto.ckks_pool.MIN_PARALLEL_CHUNKS` is set. Run it on a quiet machine (``uptime``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from functools import cache
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package when run as a script

from secure_fl.crypto import ckks_pool  # noqa: E402
from secure_fl.crypto.ckks import CkksContext, CkksKeys, generate_keys  # noqa: E402
from secure_fl.crypto.ckks_frame import FrameKind, decrypt_frame, encrypt_frame, unpack_frame  # noqa: E402

N_PARAMS = 1_000_000


@cache
def _keys() -> CkksKeys:
    return generate_keys("compact")


def _update(n_params: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, size=n_params + 1)  # + the weight slot


def _layout(n: int, slots: int) -> list[int]:
    return [min(slots, n - i) for i in range(0, n, slots)]


def _encrypt(ctx: CkksContext, x: np.ndarray, workers: int) -> bytes:
    return encrypt_frame(ctx, FrameKind.UPDATE, 0, x, workers=workers)


def _decrypt(ctx: CkksContext, payload: bytes, n: int, workers: int) -> np.ndarray:
    frame = unpack_frame(payload, kind=FrameKind.UPDATE, fingerprint=ctx.fingerprint, round=0)
    return decrypt_frame(ctx, frame, _layout(n, ctx.preset.slots), workers=workers)


def _warm(ctx: CkksContext, workers: int) -> None:
    if workers > 1:
        list(ckks_pool.get_pool(ctx, workers).map_ordered(abs, range(2 * workers)))


@pytest.mark.parametrize("workers", [1, 2])
def test_encrypt_1m(benchmark, workers: int) -> None:  # type: ignore[no-untyped-def]
    ctx = _keys().secret()
    x = _update(N_PARAMS)
    _warm(ctx, workers)
    payload = benchmark.pedantic(_encrypt, args=(ctx, x, workers), rounds=3, iterations=1)
    assert np.max(np.abs(_decrypt(ctx, payload, x.size, 1) - x)) < 1e-6
    benchmark.extra_info.update({"params": N_PARAMS, "workers": workers, "cores": len(os.sched_getaffinity(0))})


@pytest.mark.parametrize("workers", [1, 2])
def test_decrypt_1m(benchmark, workers: int) -> None:  # type: ignore[no-untyped-def]
    ctx = _keys().secret()
    x = _update(N_PARAMS)
    payload = _encrypt(ctx, x, 1)
    _warm(ctx, workers)
    y = benchmark.pedantic(_decrypt, args=(ctx, payload, x.size, workers), rounds=3, iterations=1)
    assert np.max(np.abs(y - x)) < 1e-6
    benchmark.extra_info.update({"params": N_PARAMS, "workers": workers, "cores": len(os.sched_getaffinity(0))})


# --- the table ---------------------------------------------------------------------------------


def _timed(fn, *args):  # type: ignore[no-untyped-def]
    c0, w0, t0 = time.process_time(), ckks_pool.worker_cpu_seconds(), time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0, time.process_time() - c0 + ckks_pool.worker_cpu_seconds() - w0


def measure(n_params: int, workers: int, repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` wall seconds and their CPU seconds (this process + workers) for encrypt and decrypt."""
    ctx = _keys().secret()
    x = _update(n_params)
    _warm(ctx, workers)
    best: dict[str, float] = {"enc_s": float("inf"), "dec_s": float("inf"), "enc_cpu": 0.0, "dec_cpu": 0.0}
    for _ in range(repeats):
        payload, t, c = _timed(_encrypt, ctx, x, workers)
        if t < best["enc_s"]:
            best["enc_s"], best["enc_cpu"] = t, c
        y, t, c = _timed(_decrypt, ctx, payload, x.size, workers)
        if t < best["dec_s"]:
            best["dec_s"], best["dec_cpu"] = t, c
        assert np.max(np.abs(y - x)) < 1e-6
    return best


def pool_start_seconds(workers: int) -> float:
    """Seconds from no pool to ``workers`` workers that have loaded the context (best of 2)."""
    ctx = _keys().secret()
    best = float("inf")
    for _ in range(2):
        ckks_pool.shutdown_pools()
        t0 = time.perf_counter()
        _warm(ctx, workers)
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", action="store_true", help="print the table (the only mode when run as a script)")
    ap.add_argument("--params", type=int, default=N_PARAMS)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    slots = _keys().preset.slots
    per = 1e6 / args.params
    print(f"cores available: {len(os.sched_getaffinity(0))}; load average: {os.getloadavg()}")
    print(f"{args.params:,} parameters, compact ({-(-(args.params + 1) // slots)} chunks); s per 1M parameters")
    print("| workers | encrypt s (CPU s) | decrypt s (CPU s) | encrypt + decrypt s | vs serial |")
    print("|---|---|---|---|---|")
    rows = {w: measure(args.params, w, args.repeats) for w in args.workers}
    serial = rows[min(rows)]["enc_s"] + rows[min(rows)]["dec_s"]
    for w, r in rows.items():
        both = r["enc_s"] + r["dec_s"]
        print(
            f"| {w} | {r['enc_s'] * per:.3f} ({r['enc_cpu'] * per:.3f}) | {r['dec_s'] * per:.3f} "
            f"({r['dec_cpu'] * per:.3f}) | {both * per:.3f} | {serial / both:.2f}x |"
        )
    top = max(rows)
    if top > 1:
        start = pool_start_seconds(top)
        n_chunks = -(-(args.params + 1) // slots)
        saved = (serial - rows[top]["enc_s"] - rows[top]["dec_s"]) / n_chunks
        print(f"pool of {top} workers starts in {start:.3f} s; saves {saved * 1e3:.2f} ms a chunk (encrypt + decrypt)")
        if saved > 0:
            print(f"cold break-even (one vector pays for the start): {start / saved:.0f} chunks")
        threshold, ckks_pool.MIN_PARALLEL_CHUNKS = ckks_pool.MIN_PARALLEL_CHUNKS, 1  # time below it too
        try:
            for n in (16, 32, 64, 128):
                s = measure(n * slots - 1, 1, args.repeats)
                p = measure(n * slots - 1, top, args.repeats)
                print(
                    f"warm, {n} chunks: serial {(s['enc_s'] + s['dec_s']) * 1e3:.1f} ms, {top} workers "
                    f"{(p['enc_s'] + p['dec_s']) * 1e3:.1f} ms"
                )
        finally:
            ckks_pool.MIN_PARALLEL_CHUNKS = threshold
    ckks_pool.shutdown_pools()


if __name__ == "__main__":
    main()
