"""Wire formats of the SecAgg / SecAgg+ messages (all integers little-endian).

``str``  = u16 byte length + UTF-8 (site ids);  ``key`` = 32 bytes (X25519 public key);
``sig`` = 64-byte Ed25519 signature by the sender's long-term identity key
(:mod:`secure_fl.protocol.secagg.consistency` says what each signature covers).

====================  ==========================  ==============================================
stage                 direction, view kind        payload
====================  ==========================  ==============================================
advertise_keys        site -> aggregator, PUBLIC  c_pk key || s_pk key || SHA-256 commitment to b
                                                  || sig (over protocol, round, site, the three)
route_keys            aggregator -> site, PUBLIC  u32 m, then m x (str id || c_pk || s_pk ||
                                                  commit || sig)
share_keys            site -> aggregator, CIPHER  str receiver || AES-GCM(share of b || share of
                                                  s_sk), one per accepted neighbour;
                      PUBLIC (only if needed)     u32 m, m x (str peer || str reason): neighbours
                                                  whose signed keys this site refused
route_shares          aggregator -> site          PUBLIC: u32 m, m x str (peers that shared keys);
                                                  CIPHERTEXT: str origin || sealed share (one each)
masked_input          site -> aggregator, MASKED  u32 m, m x (str peer || str reason) (refused
                                                  shares), then the masked vector, ceil(k/8) bytes
                                                  per value
announce_survivors    aggregator -> site, PUBLIC  u32 m, m x str (U3, all survivors; consistency
                                                  check only)
sign_survivors        site -> aggregator, PUBLIC  sig (over protocol, round, U3)
request_unmask        aggregator -> site, PUBLIC  u32 m, m x str (U3) || u32 s, s x (str signer
                                                  || sig) (empty without the consistency check)
unmask                site -> aggregator, PUBLIC  u32 m, m x (str owner || u8 kind 0=b 1=s_sk ||
                                                  u16 len || share)
====================  ==========================  ==============================================
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

__all__ = [
    "KEY",
    "SIG",
    "encode_advertise",
    "decode_advertise",
    "encode_keys",
    "decode_keys",
    "encode_relay",
    "decode_relay",
    "encode_ids",
    "decode_ids",
    "encode_masked",
    "decode_masked",
    "encode_reports",
    "decode_reports",
    "encode_signature",
    "decode_signature",
    "encode_request",
    "decode_request",
    "encode_unmask",
    "decode_unmask",
    "SHARE_OF_SEED",
    "SHARE_OF_KEY",
]

KEY = 32
SIG = 64
SHARE_OF_SEED = 0
SHARE_OF_KEY = 1


class _Reader:
    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = data, 0, what

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError(f"{self.what}: truncated ({len(self.data)} bytes, needed at least {self.pos + n})")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack("<H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])

    def str(self) -> str:
        raw = self.take(self.u16())
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{self.what}: a site id is not valid UTF-8") from None

    def rest(self) -> bytes:
        out = self.data[self.pos :]
        self.pos = len(self.data)
        return out

    def end(self) -> None:
        if self.pos != len(self.data):
            raise ValueError(f"{self.what}: {len(self.data) - self.pos} unexpected trailing bytes")


def _s(text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError(f"site id too long ({len(raw)} bytes)")
    return struct.pack("<H", len(raw)) + raw


#: one site's signed advertisement: (c_pk, s_pk, commitment to b, signature)
Advert = tuple[bytes, bytes, bytes, bytes]


def encode_advertise(c_pk: bytes, s_pk: bytes, commit: bytes, sig: bytes) -> bytes:
    return c_pk + s_pk + commit + sig


def decode_advertise(payload: bytes) -> Advert:
    if len(payload) != 3 * KEY + SIG:
        raise ValueError(f"key advertisement is {len(payload)} bytes, expected {3 * KEY + SIG}")
    return payload[:KEY], payload[KEY : 2 * KEY], payload[2 * KEY : 3 * KEY], payload[3 * KEY :]


def encode_keys(entries: Sequence[tuple[str, bytes, bytes, bytes, bytes]]) -> bytes:
    return struct.pack("<I", len(entries)) + b"".join(_s(i) + c + s + h + g for i, c, s, h, g in entries)


def decode_keys(payload: bytes) -> list[tuple[str, bytes, bytes, bytes, bytes]]:
    r = _Reader(payload, "key list")
    out = [(r.str(), r.take(KEY), r.take(KEY), r.take(KEY), r.take(SIG)) for _ in range(r.u32())]
    r.end()
    return out


def encode_reports(reports: Sequence[tuple[str, str]]) -> bytes:
    return struct.pack("<I", len(reports)) + b"".join(_s(p) + _s(reason[:1000]) for p, reason in reports)


def decode_reports(payload: bytes, what: str = "refusal report") -> list[tuple[str, str]]:
    r = _Reader(payload, what)
    out = [(r.str(), r.str()) for _ in range(r.u32())]
    r.end()
    return out


def encode_signature(sig: bytes) -> bytes:
    return sig


def decode_signature(payload: bytes) -> bytes:
    if len(payload) != SIG:
        raise ValueError(f"signature is {len(payload)} bytes, expected {SIG}")
    return payload


def encode_relay(receiver: str, sealed: bytes) -> bytes:
    return _s(receiver) + sealed


def decode_relay(payload: bytes) -> tuple[str, bytes]:
    r = _Reader(payload, "share envelope")
    return r.str(), r.rest()


def encode_ids(ids: Sequence[str]) -> bytes:
    return struct.pack("<I", len(ids)) + b"".join(_s(i) for i in ids)


def decode_ids(payload: bytes, what: str = "site list") -> list[str]:
    r = _Reader(payload, what)
    out = [r.str() for _ in range(r.u32())]
    r.end()
    return out


def encode_masked(refused: Sequence[tuple[str, str]], vector: bytes) -> bytes:
    return encode_reports(refused) + vector


def decode_masked(payload: bytes) -> tuple[list[tuple[str, str]], bytes]:
    r = _Reader(payload, "masked input")
    refused = [(r.str(), r.str()) for _ in range(r.u32())]
    return refused, r.rest()


def encode_request(survivors: Sequence[str], signatures: Sequence[tuple[str, bytes]] = ()) -> bytes:
    sigs = struct.pack("<I", len(signatures)) + b"".join(_s(i) + g for i, g in signatures)
    return encode_ids(survivors) + sigs


def decode_request(payload: bytes) -> tuple[list[str], list[tuple[str, bytes]]]:
    r = _Reader(payload, "unmask request")
    survivors = [r.str() for _ in range(r.u32())]
    signatures = [(r.str(), r.take(SIG)) for _ in range(r.u32())]
    r.end()
    return survivors, signatures


def encode_unmask(entries: Sequence[tuple[str, int, bytes]]) -> bytes:
    return struct.pack("<I", len(entries)) + b"".join(
        _s(o) + bytes([k]) + struct.pack("<H", len(sh)) + sh for o, k, sh in entries
    )


def decode_unmask(payload: bytes) -> list[tuple[str, int, bytes]]:
    r = _Reader(payload, "unmask shares")
    out = []
    for _ in range(r.u32()):
        owner, kind = r.str(), r.u8()
        if kind not in (SHARE_OF_SEED, SHARE_OF_KEY):
            raise ValueError(f"unmask shares: unknown share kind {kind}")
        out.append((owner, kind, r.take(r.u16())))
    r.end()
    return out
