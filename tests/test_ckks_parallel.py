"""CKKS chunks on worker processes: same frames and values as the serial path, in order, fresh randomness,
the threshold and the worker setting respected, errors that name the chunk, a dead worker reported.

One pool of two workers is started for the whole module (``pool`` fixture); the threshold is lowered to a
few chunks so the vectors stay small.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterator

import numpy as np
import pytest

from secure_fl.crypto import ckks_pool
from secure_fl.crypto.ckks import CkksContext, CkksKeys, ScaledParts, encrypt_chunks, generate_keys
from secure_fl.crypto.ckks_frame import (
    FrameError,
    FrameKind,
    FrameWriter,
    decrypt_frame,
    encrypt_frame,
    load_vectors,
    pack_frame,
    unpack_frame,
)
from secure_fl.crypto.ckks_pool import ENV_WORKERS, CkksWorkerError
from secure_fl.engine.local import drive_round
from secure_fl.errors import InvalidParameter
from secure_fl.protocol.ckks import CkksSum, update_layout

SLOTS = 4096  # the ``compact`` preset
LOW = 4  # the threshold used in this module
REAL_MIN_CHUNKS = ckks_pool.MIN_PARALLEL_CHUNKS  # the one in force


@pytest.fixture(scope="module")
def keys() -> CkksKeys:
    return generate_keys("compact")


@pytest.fixture(scope="module")
def pool(keys: CkksKeys) -> Iterator[CkksContext]:
    """The secret context, with its two-worker pool started once for the module and stopped after it."""
    ctx = keys.secret()
    p = ckks_pool.get_pool(ctx, 2)
    assert list(p.map_ordered(abs, [-1, -2, -3])) == [1, 2, 3]  # workers up before any timing-free test
    yield ctx
    ckks_pool.shutdown_pools()


@pytest.fixture(autouse=True)
def low_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ckks_pool, "MIN_PARALLEL_CHUNKS", LOW)
    monkeypatch.delenv(ENV_WORKERS, raising=False)


def _layout(n: int) -> list[int]:
    return [min(SLOTS, n - i) for i in range(0, n, SLOTS)]


def _frame(ctx: CkksContext, payload: bytes, n: int):  # type: ignore[no-untyped-def]
    return unpack_frame(payload, kind=FrameKind.UPDATE, fingerprint=ctx.fingerprint, round=2, n_chunks=len(_layout(n)))


def test_parallel_frames_and_values_match_the_serial_path(pool: CkksContext) -> None:
    n = 10 * SLOTS + 17  # 11 chunks, the last one short: two batches of 8 and 3 chunks
    x = np.random.default_rng(1).uniform(-1, 1, n)
    before = ckks_pool.pool_tasks()
    par = _frame(pool, encrypt_frame(pool, FrameKind.UPDATE, 2, x, {"k": "v"}, workers=2), n)
    assert ckks_pool.pool_tasks() - before == 2  # it did run on the workers
    ser = _frame(pool, encrypt_frame(pool, FrameKind.UPDATE, 2, x, {"k": "v"}, workers=1), n)
    assert len(par) == len(ser) == 11 and par.meta == ser.meta == {"k": "v"}
    for a, b in zip(load_vectors(pool, par, _layout(n)), load_vectors(pool, ser, _layout(n))):
        assert a.size() == b.size()  # the same slots in every chunk (load_vectors checks them against the layout)
    assert abs(len(par.chunks[0]) - len(ser.chunks[0])) < 1000  # zstd sizes of fresh randomness differ slightly
    for frame in (par, ser):
        for workers in (1, 2):
            got = decrypt_frame(pool, frame, _layout(n), workers=workers)
            assert got.shape == x.shape and np.max(np.abs(got - x)) < 1e-6


def test_results_come_back_in_chunk_order(pool: CkksContext) -> None:
    n = 20 * SLOTS  # chunk i holds i / 32 everywhere: any swap of chunks or batches shows
    x = np.repeat(np.arange(20) / 32.0, SLOTS)
    frame = _frame(pool, encrypt_frame(pool, FrameKind.UPDATE, 2, x, workers=2), n)
    serial = decrypt_frame(pool, frame, _layout(n), workers=1)
    parallel = decrypt_frame(pool, frame, _layout(n), workers=2)
    assert np.max(np.abs(serial - x)) < 1e-6 and np.max(np.abs(parallel - x)) < 1e-6
    assert np.array_equal(np.rint(parallel.reshape(20, SLOTS) * 32).mean(axis=1), np.arange(20))


def test_the_frame_writer_builds_pack_frames_bytes(keys: CkksKeys) -> None:
    ctx = keys.secret()
    chunks = encrypt_chunks(ctx, np.linspace(-1, 1, 2 * SLOTS + 5))
    writer = FrameWriter(FrameKind.SUM, ctx.fingerprint, 7, len(chunks), {"contributors": ["a", "b"]})
    for c in chunks:
        writer.add(c)
    built = writer.finish()
    assert built == pack_frame(FrameKind.SUM, ctx.fingerprint, 7, chunks, {"contributors": ["a", "b"]})
    # the layout of the module docstring, spelt out independently of FrameWriter
    meta = json.dumps({"contributors": ["a", "b"]}, sort_keys=True).encode()
    digest = hashlib.blake2b(meta + b"".join(chunks), digest_size=16).digest()
    head = struct.pack("<4sB16sIII", b"SFC1", int(FrameKind.SUM), bytes.fromhex(ctx.fingerprint)[:16], 7, len(chunks),
                       len(meta))
    assert built == b"".join([head, struct.pack(f"<{len(chunks)}I", *map(len, chunks)), digest, meta, *chunks])
    short = FrameWriter(FrameKind.SUM, ctx.fingerprint, 7, 2)
    short.add(chunks[0])
    with pytest.raises(FrameError, match="declared 2 chunk.*1 were added"):
        short.finish()
    full = FrameWriter(FrameKind.SUM, ctx.fingerprint, 7, 1)
    full.add(chunks[0])
    with pytest.raises(FrameError, match="one too many"):
        full.add(chunks[1])


def test_two_workers_never_produce_the_same_ciphertext(pool: CkksContext) -> None:
    x = np.tile(np.linspace(-0.5, 0.5, SLOTS), 16)  # 16 identical chunks: 8 to each worker
    first = _frame(pool, encrypt_frame(pool, FrameKind.UPDATE, 2, x, workers=2), x.size)
    second = _frame(pool, encrypt_frame(pool, FrameKind.UPDATE, 2, x, workers=2), x.size)
    chunks = first.chunks + second.chunks
    assert len(set(chunks)) == 32  # no two ciphertext byte strings alike, within or across encryptions
    heads = {c[-4096:] for c in chunks}  # nor their tails (the random parts, not just a header)
    assert len(heads) == 32


def test_a_corrupted_chunk_is_named_on_both_paths(pool: CkksContext) -> None:
    n = 12 * SLOTS
    x = np.random.default_rng(2).uniform(-1, 1, n)
    chunks = _frame(pool, encrypt_frame(pool, FrameKind.UPDATE, 2, x, workers=2), n).chunks
    chunks[9] = chunks[9][: len(chunks[9]) // 2]  # truncated ciphertext inside a well-formed frame
    frame = _frame(pool, pack_frame(FrameKind.UPDATE, pool.fingerprint, 2, chunks), n)
    for workers in (2, 1):
        with pytest.raises(FrameError, match=r"^chunk 9 is not a valid ciphertext"):
            decrypt_frame(pool, frame, _layout(n), workers=workers)
    wrong = _layout(n)
    wrong[10] -= 1  # a layout that disagrees with chunk 10's slot count
    with pytest.raises(FrameError, match="chunk 10 holds 4096 values, the layout needs 4095"):
        decrypt_frame(pool, _frame(pool, encrypt_frame(pool, FrameKind.UPDATE, 2, x, workers=2), n), wrong, workers=2)


def test_small_vectors_stay_in_this_process(pool: CkksContext, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ckks_pool, "MIN_PARALLEL_CHUNKS", 10)
    before = ckks_pool.pool_tasks()
    x = np.random.default_rng(3).uniform(-1, 1, 9 * SLOTS)  # 9 chunks: one below the threshold
    frame = _frame(pool, encrypt_frame(pool, FrameKind.UPDATE, 2, x, workers=2), x.size)
    decrypt_frame(pool, frame, _layout(x.size), workers=2)
    assert ckks_pool.pool_tasks() == before
    y = np.random.default_rng(3).uniform(-1, 1, 10 * SLOTS)  # 10 chunks: at the threshold
    encrypt_frame(pool, FrameKind.UPDATE, 2, y, workers=2)
    assert ckks_pool.pool_tasks() == before + 2  # two batches (8 + 2 chunks)
    assert ckks_pool.workers_for(9, 16) == 1
    assert ckks_pool.workers_for(10, 16) == 2  # never more workers than batches
    assert ckks_pool.workers_for(10_000, 3) == 3


def test_the_threshold_in_force_keeps_a_vector_just_below_it_serial(
    pool: CkksContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ckks_pool, "MIN_PARALLEL_CHUNKS", REAL_MIN_CHUNKS)
    before = ckks_pool.pool_tasks()
    x = np.random.default_rng(5).uniform(-1, 1, (REAL_MIN_CHUNKS - 1) * SLOTS)
    frame = _frame(pool, encrypt_frame(pool, FrameKind.UPDATE, 2, x, workers=2), x.size)
    decrypt_frame(pool, frame, _layout(x.size), workers=2)
    assert ckks_pool.pool_tasks() == before


def test_workers_come_from_the_environment_or_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ckks_pool.configured_workers() == len(os.sched_getaffinity(0))
    monkeypatch.setenv(ENV_WORKERS, " 3 ")
    assert ckks_pool.configured_workers() == 3
    monkeypatch.setenv(ENV_WORKERS, "1")
    assert ckks_pool.workers_for(10_000) == 1  # 1 = serial, whatever the size
    for bad in ("0", "-2", "two", "1.5"):
        monkeypatch.setenv(ENV_WORKERS, bad)
        with pytest.raises(InvalidParameter, match=f"^{ENV_WORKERS}: must be a whole number >= 1.*found '{bad}'"):
            ckks_pool.configured_workers()
    with pytest.raises(InvalidParameter, match="^workers: .*found 0"):
        ckks_pool.workers_for(100, 0)


def test_a_protocol_round_runs_its_chunks_on_the_workers(
    keys: CkksKeys, pool: CkksContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sites' updates of 10 chunks go through the pool (threshold lowered) and the sum decrypts as before."""
    monkeypatch.setenv(ENV_WORKERS, "2")  # whatever this machine's cores: the module's pool of two
    dim = 10 * SLOTS - 10
    assert len(update_layout(dim, SLOTS, 3)) == 10
    proto = CkksSum(preset="compact", min_contributors=3)
    proto.setup(["a", "b", "c"], dim, keys=keys)  # this module's key set: its pool is reused
    inputs = {s: (np.random.default_rng(i).uniform(-1, 1, dim).astype(np.float32), 1.0) for i, s in enumerate("abc")}
    before = ckks_pool.pool_tasks()
    out = drive_round(proto, 0, inputs, dim)
    assert out.result is not None and ckks_pool.pool_tasks() - before == 3 * 2 * 2  # 3 sites, 2 batches each way
    plain = sum(v.astype(np.float64) for v, _ in inputs.values())
    assert np.max(np.abs(out.result.total - plain)) < 1e-4 and out.result.weight == pytest.approx(3.0)


def test_a_dead_worker_is_an_error_and_the_pool_is_rebuilt(pool: CkksContext) -> None:
    p = ckks_pool.get_pool(pool, 2)
    with pytest.raises(CkksWorkerError, match="worker process died.*rebuilt on the next call"):
        list(p.map_ordered(os._exit, [3, 3]))  # the worker exits mid-task, as a crash or the OOM killer would
    starts = ckks_pool.pool_starts()
    x = np.random.default_rng(4).uniform(-1, 1, 10 * SLOTS)
    frame = _frame(pool, encrypt_frame(pool, FrameKind.UPDATE, 2, x, workers=2), x.size)
    assert ckks_pool.pool_starts() == starts + 1  # a fresh pool did the work
    assert np.max(np.abs(decrypt_frame(pool, frame, _layout(x.size), workers=2) - x)) < 1e-6


def test_scaled_parts_read_like_their_float64_concatenation(keys: CkksKeys) -> None:
    values = np.random.default_rng(6).uniform(-3, 3, 2 * SLOTS + 11).astype(np.float32)
    tail = np.array([0.75, 0.5, 0.0])
    parts = ScaledParts((values, -2), (tail, 0))
    whole = np.concatenate([np.ldexp(values.astype(np.float64), -2), tail])
    assert parts.size == whole.size and parts.peak() == np.max(np.abs(whole))
    for a, b in ((0, SLOTS), (SLOTS, 2 * SLOTS), (2 * SLOTS, whole.size), (5, whole.size - 1), (3, 3)):
        assert np.array_equal(parts[a:b], whole[a:b]) and parts[a:b].dtype == np.float64
    ctx = keys.secret()
    frame = _frame(ctx, encrypt_frame(ctx, FrameKind.UPDATE, 2, parts, workers=1), whole.size)
    assert np.max(np.abs(decrypt_frame(ctx, frame, _layout(whole.size), workers=1) - whole)) < 1e-6
    with pytest.raises(ValueError, match=r"values up to 1\.4\d* exceed 1,"):
        encrypt_frame(ctx, FrameKind.UPDATE, 2, ScaledParts((values, -1), (tail, 0)))
    values[7] = np.nan
    with pytest.raises(ValueError, match="values up to nan exceed"):
        encrypt_frame(ctx, FrameKind.UPDATE, 2, ScaledParts((values, -2), (tail, 0)))
