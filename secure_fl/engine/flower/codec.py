"""Wire format of the Flower engine's requests and replies (no pickle on the wire).

A value is JSON with every ``bytes`` replaced by ``{"$b": i}``, every float32 numpy vector by
``{"$f4": i}`` (a model's weights: 4 bytes per parameter on the wire, as a site's model holds them)
and every other numpy vector by ``{"$f8": i}`` (float64), followed by the blobs::

    b"SFLW1" | u32 little-endian header length | header (UTF-8 JSON) | for each blob: u64 length | bytes

Protocol messages (:class:`~secure_fl.protocol.base.Message`) travel as dicts with their exact
payload bytes, so the bytes a view records are the bytes that crossed the wire.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

from ...errors import ProtocolError
from ...protocol.base import Message, ViewKind

__all__ = ["encode", "decode", "message_to_dict", "message_from_dict"]

_MAGIC = b"SFLW1"


def encode(value: Any) -> bytes:
    blobs: list[bytes] = []

    def walk(v: Any) -> Any:
        if isinstance(v, (bytes, bytearray)):
            blobs.append(bytes(v))
            return {"$b": len(blobs) - 1}
        if isinstance(v, np.ndarray):
            if v.dtype == np.float32:
                blobs.append(np.ascontiguousarray(v, dtype="<f4").ravel().tobytes())
                return {"$f4": len(blobs) - 1}
            blobs.append(np.ascontiguousarray(v, dtype="<f8").ravel().tobytes())
            return {"$f8": len(blobs) - 1}
        if isinstance(v, dict):
            return {str(k): walk(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [walk(x) for x in v]
        if isinstance(v, (np.floating, np.integer)):
            return v.item()
        return v

    header = json.dumps(walk(value), allow_nan=True).encode()
    parts = [_MAGIC, struct.pack("<I", len(header)), header]
    for b in blobs:
        parts += [struct.pack("<Q", len(b)), b]
    return b"".join(parts)


def decode(data: bytes) -> Any:
    if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + 4:
        raise ProtocolError("not a secure-fl engine message (bad magic)")
    (hlen,) = struct.unpack_from("<I", data, len(_MAGIC))
    pos = len(_MAGIC) + 4
    try:
        header = json.loads(data[pos : pos + hlen])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"corrupted engine message header ({exc})") from exc
    pos += hlen
    blobs = []
    while pos < len(data):
        if pos + 8 > len(data):
            raise ProtocolError("truncated engine message")
        (n,) = struct.unpack_from("<Q", data, pos)
        pos += 8
        if pos + n > len(data):
            raise ProtocolError("truncated engine message blob")
        blobs.append(data[pos : pos + n])
        pos += n

    def walk(v: Any) -> Any:
        if isinstance(v, dict):
            if set(v) == {"$b"}:
                return blobs[v["$b"]]
            if set(v) == {"$f8"}:
                return np.frombuffer(blobs[v["$f8"]], dtype="<f8").copy()
            if set(v) == {"$f4"}:
                return np.frombuffer(blobs[v["$f4"]], dtype="<f4").astype(np.float32)
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    try:
        return walk(header)
    except (IndexError, KeyError, TypeError) as exc:
        raise ProtocolError(f"engine message refers to a missing blob ({exc})") from exc


def message_to_dict(m: Message) -> dict[str, Any]:
    return {"round": m.round, "stage": m.stage, "sender": m.sender, "receiver": m.receiver, "payload": m.payload,
            "kind": m.kind.value}


def message_from_dict(d: Any) -> Message:
    try:
        return Message(int(d["round"]), str(d["stage"]), str(d["sender"]), str(d["receiver"]), bytes(d["payload"]),
                       ViewKind(d["kind"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed protocol message on the wire ({exc})") from exc
