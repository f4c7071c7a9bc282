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
"""

from __future__ import annotations

import enum
import hashlib
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import tenseal as ts

from .ckks import TENSEAL_ERRORS, CkksContext

__all__ = ["FrameKind", "FrameError", "Frame", "pack_frame", "unpack_frame", "load_vectors"]

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


@dataclass
class Frame:
    kind: FrameKind
    fingerprint: str
    round: int
    chunks: list[bytes]
    meta: dict[str, Any] = field(default_factory=dict)


def _fp_bytes(fingerprint: str) -> bytes:
    return bytes.fromhex(fingerprint)[:16]


def pack_frame(
    kind: FrameKind, fingerprint: str, round: int, chunks: Sequence[bytes], meta: dict[str, Any] | None = None
) -> bytes:
    meta_b = json.dumps(meta or {}, sort_keys=True).encode()
    body = meta_b + b"".join(chunks)
    head = _FIXED.pack(_MAGIC, int(kind), _fp_bytes(fingerprint), round, len(chunks), len(meta_b))
    lens = struct.pack(f"<{len(chunks)}I", *(len(c) for c in chunks))
    return head + lens + hashlib.blake2b(body, digest_size=16).digest() + body


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
    body = payload[pos:]
    expected = mlen + sum(lens)
    if len(body) != expected:
        raise FrameError(f"truncated or padded frame: body has {len(body)} bytes, header declares {expected}")
    if hashlib.blake2b(body, digest_size=16).digest() != digest:
        raise FrameError("corrupted frame: body digest does not match")
    try:
        meta = json.loads(body[:mlen]) if mlen else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FrameError(f"corrupted frame meta ({exc})") from exc
    if not isinstance(meta, dict):
        raise FrameError("frame meta is not a JSON object")
    chunks = []
    off = mlen
    for ln in lens:
        chunks.append(bytes(body[off : off + ln]))
        off += ln
    return Frame(FrameKind(k), fingerprint, rnd, chunks, meta)


def load_vectors(ctx: CkksContext, chunks: Sequence[bytes], sizes: Sequence[int]) -> list[ts.CKKSVector]:
    """Deserialise chunks under ``ctx``; each must hold exactly ``sizes[i]`` slots."""
    if len(chunks) != len(sizes):
        raise FrameError(f"{len(chunks)} chunks for a layout of {len(sizes)}")
    out = []
    for i, (blob, size) in enumerate(zip(chunks, sizes)):
        try:
            vec = ts.ckks_vector_from(ctx.context, blob)
            got = vec.size()
        except TENSEAL_ERRORS as exc:  # TenSEAL raises assorted built-in types on bad bytes
            raise FrameError(
                f"chunk {i} is not a valid ciphertext for this context ({type(exc).__name__}: {exc})"
            ) from exc
        if got != size:
            raise FrameError(f"chunk {i} holds {got} values, the layout needs {size}")
        out.append(vec)
    return out
