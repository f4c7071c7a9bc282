"""Wire frame around CKKS ciphertext chunks, validated before TenSEAL sees any byte.

TenSEAL/SEAL may throw odd exceptions on garbage bytes, so every message is framed and the
frame is checked first: its length, the key-set fingerprint, the round, the message kind,
the chunk count, each chunk length and a BLAKE2b digest of the body. Only then are chunks
handed to ``ts.ckks_vector_from`` (inside ``try``), and each loaded vector must hold the
expected number of slots.

Frame layout (little-endian)::

    magic     4   b"SFC1"
    kind      1   message kind (``FrameKind``)
    fp       16   key-set fingerprint (first 16 bytes of its hex digest, decoded)
    round     4   u32
    n         4   u32 number of chunks
    mlen      4   u32 length of meta
    lens    4*n   u32 length of each chunk
    digest   16   BLAKE2b-128 of meta || chunks
    meta   mlen   UTF-8 JSON (public routing data: contributors, releaser)
    chunks        the serialised TenSEAL CKKS vectors, back to back

:class:`FrameWriter` builds the same bytes as :func:`pack_frame` while the chunks are produced
(the chunk table and digest are filled in at the end), so a party holds one copy of its
payload plus one chunk; :func:`encrypt_frame` encrypts straight into it and
:func:`decrypt_frame` decrypts chunk by chunk, both on worker processes for large vectors
(:mod:`secure_fl.crypto.ckks_pool`).
"""

from __future__ import annotations

import enum
import hashlib
import io
import json
import struct
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tenseal as ts

from .ckks import TENSEAL_ERRORS, CkksContext, CkksKeyError, ScaledParts, chunk_count, decrypt_chunks, encodable
from .ckks_pool import BATCH_CHUNKS, get_pool, iter_encrypted, worker_context, workers_for

__all__ = [
    "FrameKind", "FrameError", "Frame", "FrameWriter", "pack_frame", "unpack_frame", "load_vector", "load_vectors",
    "iter_vectors", "encrypt_frame", "decrypt_frame",
]

_MAGIC = b"SFC1"
_FIXED = struct.Struct("<4sB16sIII")
_MAX_CHUNKS = 1 << 20
_MAX_META = 1 << 20


class FrameKind(enum.IntEnum):
    BOUNDS = 1  # a site's encrypted magnitude histogram
    BOUNDS_SUM = 2  # the aggregator's sum of histograms, back to sites
    UPDATE = 3  # a site's encrypted update (values chunks + weight)
    SUM = 4  # the aggregator's sum of updates, back to sites


class FrameError(ValueError):
    """A frame or one of its ciphertexts is malformed; the message says what and where."""


class Frame:
    """A validated frame. The chunks stay in the payload until asked for (:meth:`chunk`,
    :meth:`iter_chunks`), so a frame of many chunks is never held twice."""

    def __init__(
        self, kind: FrameKind, fingerprint: str, round: int, chunks: Sequence[bytes] | None = None,
        meta: dict[str, Any] | None = None, *, payload: bytes = b"", spans: Sequence[tuple[int, int]] = (),
    ) -> None:
        self.kind, self.fingerprint, self.round = kind, fingerprint, round
        self.meta: dict[str, Any] = dict(meta or {})
        if chunks is not None:  # built from chunks in memory
            self._payload = b"".join(chunks)
            spans, pos = [], 0
            for c in chunks:
                spans.append((pos, pos + len(c)))
                pos += len(c)
        else:
            self._payload = payload
        self._spans = list(spans)

    def __len__(self) -> int:
        return len(self._spans)

    def chunk(self, i: int) -> bytes:
        """The serialised ciphertext ``i`` (a copy of its bytes: TenSEAL loads only ``bytes``)."""
        start, end = self._spans[i]
        return self._payload[start:end]

    def iter_chunks(self) -> Iterator[bytes]:
        for i in range(len(self._spans)):
            yield self.chunk(i)

    @property
    def chunks(self) -> list[bytes]:
        """All chunks at once (copies); prefer :meth:`iter_chunks` for large frames."""
        return list(self.iter_chunks())


def _fp_bytes(fingerprint: str) -> bytes:
    return bytes.fromhex(fingerprint)[:16]


def pack_frame(
    kind: FrameKind, fingerprint: str, round: int, chunks: Sequence[bytes], meta: dict[str, Any] | None = None
) -> bytes:
    """The frame around ``chunks`` (layout above), built by :class:`FrameWriter`."""
    writer = FrameWriter(kind, fingerprint, round, len(chunks), meta)
    for c in chunks:
        writer.add(c)
    return writer.finish()


class FrameWriter:
    """Build a frame chunk by chunk: :meth:`add` each serialised ciphertext as it is produced, then
    :meth:`finish`. The bytes equal :func:`pack_frame`'s for the same chunks; the writer holds one
    growing buffer, whose bytes :meth:`finish` hands over without copying them (``BytesIO.getvalue``
    shares its buffer when nothing else references it), so the peak is the payload plus one chunk.
    """

    def __init__(
        self, kind: FrameKind, fingerprint: str, round: int, n_chunks: int, meta: dict[str, Any] | None = None
    ) -> None:
        if not 0 <= n_chunks <= _MAX_CHUNKS:
            raise FrameError(f"a frame holds 0 to {_MAX_CHUNKS} chunks, asked for {n_chunks}")
        meta_b = json.dumps(meta or {}, sort_keys=True).encode()
        self._n = n_chunks
        self._lens: list[int] = []
        self._digest = hashlib.blake2b(meta_b, digest_size=16)
        self._buf: io.BytesIO | None = io.BytesIO()
        self._buf.write(_FIXED.pack(_MAGIC, int(kind), _fp_bytes(fingerprint), round, n_chunks, len(meta_b)))
        self._table = self._buf.tell()
        self._buf.write(bytes(4 * n_chunks + 16))  # chunk lengths and digest, filled in by finish()
        self._buf.write(meta_b)

    def add(self, chunk: bytes) -> None:
        if self._buf is None:
            raise FrameError("this frame is finished; start a new FrameWriter")
        if len(self._lens) >= self._n:
            raise FrameError(f"frame declared {self._n} chunk(s); chunk {len(self._lens)} is one too many")
        self._buf.write(chunk)
        self._digest.update(chunk)
        self._lens.append(len(chunk))

    def finish(self) -> bytes:
        """The frame's bytes; the writer cannot be used afterwards."""
        buf = self._buf
        if buf is None:
            raise FrameError("this frame is already finished")
        if len(self._lens) != self._n:
            raise FrameError(f"frame declared {self._n} chunk(s), {len(self._lens)} were added")
        buf.seek(self._table)
        buf.write(struct.pack(f"<{self._n}I", *self._lens))
        buf.write(self._digest.digest())
        self._buf = None
        data = buf.getvalue()
        buf.close()
        return data


def unpack_frame(
    payload: bytes, *, kind: FrameKind, fingerprint: str, round: int, n_chunks: int | None = None
) -> Frame:
    """Parse and validate a frame. Raises :class:`FrameError` naming the first problem."""
    if len(payload) < _FIXED.size:
        raise FrameError(f"message of {len(payload)} bytes is shorter than a frame header ({_FIXED.size} bytes)")
    magic, k, fp, rnd, n, mlen = _FIXED.unpack_from(payload, 0)
    if magic != _MAGIC:
        raise FrameError(f"not a CKKS frame (magic {magic!r}, expected {_MAGIC!r})")
    if fp != _fp_bytes(fingerprint):
        raise FrameError(
            f"ciphertext from another key set (fingerprint {fp.hex()}, this run uses {_fp_bytes(fingerprint).hex()})"
        )
    if k != int(kind):
        name = FrameKind(k).name if k in FrameKind._value2member_map_ else str(k)
        raise FrameError(f"wrong message kind {name}, expected {kind.name}")
    if rnd != round:
        raise FrameError(f"frame is for round {rnd}, this is round {round}")
    if n_chunks is not None and n != n_chunks:
        raise FrameError(f"frame has {n} ciphertext chunk(s), the layout of this round needs {n_chunks}")
    if n > _MAX_CHUNKS or mlen > _MAX_META:
        raise FrameError(f"frame declares {n} chunks and {mlen} meta bytes: over the limits")
    pos = _FIXED.size
    if len(payload) < pos + 4 * n + 16:
        raise FrameError("truncated frame: chunk table incomplete")
    lens = struct.unpack_from(f"<{n}I", payload, pos)
    pos += 4 * n
    digest = payload[pos : pos + 16]
    pos += 16
    body = memoryview(payload)[pos:]  # no copy of the ciphertexts
    expected = mlen + sum(lens)
    if len(body) != expected:
        raise FrameError(f"truncated or padded frame: body has {len(body)} bytes, header declares {expected}")
    if hashlib.blake2b(body, digest_size=16).digest() != digest:
        raise FrameError("corrupted frame: body digest does not match")
    try:
        meta = json.loads(bytes(body[:mlen])) if mlen else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FrameError(f"corrupted frame meta ({exc})") from exc
    if not isinstance(meta, dict):
        raise FrameError("frame meta is not a JSON object")
    spans = []
    off = pos + mlen
    for ln in lens:
        spans.append((off, off + ln))
        off += ln
    return Frame(FrameKind(k), fingerprint, rnd, meta=meta, payload=payload, spans=spans)


def load_vector(ctx: CkksContext, blob: bytes, size: int, i: int = 0) -> ts.CKKSVector:
    """Deserialise chunk ``i`` under ``ctx``; it must hold exactly ``size`` slots."""
    try:
        vec = ts.ckks_vector_from(ctx.context, blob)
        got = vec.size()
    except TENSEAL_ERRORS as exc:  # TenSEAL raises assorted built-in types on bad bytes
        raise FrameError(f"chunk {i} is not a valid ciphertext for this context ({type(exc).__name__}: {exc})") from exc
    if got != size:
        raise FrameError(f"chunk {i} holds {got} values, the layout needs {size}")
    return vec


def load_vectors(ctx: CkksContext, chunks: Sequence[bytes] | Frame, sizes: Sequence[int]) -> list[ts.CKKSVector]:
    """Deserialise all chunks under ``ctx``; each must hold exactly ``sizes[i]`` slots."""
    return list(iter_vectors(ctx, chunks, sizes))


def iter_vectors(ctx: CkksContext, chunks: Sequence[bytes] | Frame, sizes: Sequence[int]) -> Iterator[ts.CKKSVector]:
    """:func:`load_vectors` one chunk at a time: a frame of many chunks is never loaded whole."""
    if len(chunks) != len(sizes):
        raise FrameError(f"{len(chunks)} chunks for a layout of {len(sizes)}")
    blobs = chunks.iter_chunks() if isinstance(chunks, Frame) else iter(chunks)
    for i, (blob, size) in enumerate(zip(blobs, sizes)):
        yield load_vector(ctx, blob, size, i)


def encrypt_frame(
    ctx: CkksContext, kind: FrameKind, round: int, flat: np.ndarray | ScaledParts, meta: dict[str, Any] | None = None,
    *, workers: int | None = None,
) -> bytes:
    """Encrypt ``flat`` in slot-sized chunks straight into a frame (the bytes :func:`pack_frame` would
    make of :func:`~secure_fl.crypto.ckks.encrypt_chunks`'s chunks, with fresh randomness). ``flat`` may be
    a :class:`~secure_fl.crypto.ckks.ScaledParts`: then no float64 copy of the whole vector is made.

    ``workers``: processes to use (default ``SECURE_FL_CKKS_WORKERS`` or the cores this process may run
    on); vectors of fewer than :data:`~secure_fl.crypto.ckks_pool.MIN_PARALLEL_CHUNKS` chunks are encrypted
    here. Raises what :func:`~secure_fl.crypto.ckks.encrypt_chunks` raises.
    """
    x = encodable(ctx, flat)
    n = chunk_count(x.size, ctx.preset.slots)
    writer = FrameWriter(kind, ctx.fingerprint, round, n, meta)
    for chunk in iter_encrypted(ctx, x, workers_for(n, workers)):
        writer.add(chunk)
    return writer.finish()


def _decrypt_batch(task: tuple[int, list[bytes], list[int]]) -> np.ndarray:
    """In a worker: load chunks ``first, first + 1, ...`` (each must hold ``sizes[j]`` values) and decrypt."""
    first, blobs, sizes = task
    ctx = worker_context()
    parts = [decrypt_chunks(ctx, [load_vector(ctx, b, s, first + j)]) for j, (b, s) in enumerate(zip(blobs, sizes))]
    return np.concatenate(parts)


def decrypt_frame(
    ctx: CkksContext, frame: Frame, sizes: Sequence[int], *, workers: int | None = None
) -> np.ndarray:
    """Load and decrypt a frame's chunks into one flat float64 vector, a few chunks at a time.

    ``workers`` as in :func:`encrypt_frame`. A chunk that does not load or holds the wrong number of
    values raises :class:`FrameError` naming its index, on the serial and the parallel path alike.
    """
    if len(frame) != len(sizes):
        raise FrameError(f"{len(frame)} chunks for a layout of {len(sizes)}")
    out = np.empty(int(sum(sizes)), dtype=np.float64)
    pos = 0
    n_workers = workers_for(len(sizes), workers)
    if n_workers <= 1:
        for vec in iter_vectors(ctx, frame, sizes):
            part = decrypt_chunks(ctx, [vec])
            out[pos : pos + part.size] = part
            pos += part.size
        return out
    if not ctx.can_decrypt:
        raise CkksKeyError("this context has no secret key: it cannot decrypt (the aggregator never can)")
    tasks = (
        (i, [frame.chunk(j) for j in range(i, min(i + BATCH_CHUNKS, len(sizes)))], list(sizes[i : i + BATCH_CHUNKS]))
        for i in range(0, len(sizes), BATCH_CHUNKS)
    )
    for part in get_pool(ctx, n_workers).map_ordered(_decrypt_batch, tasks):
        out[pos : pos + part.size] = part
        pos += part.size
    return out
