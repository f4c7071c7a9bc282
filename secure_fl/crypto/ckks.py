"""TenSEAL CKKS contexts and keys for a secure sum: generation, provisioning, loading.

Roles. The *key holder* (a site, or a provisioning step run on its behalf, never the
aggregator) generates one key set. Every site gets a **secret** context (it can encrypt
and decrypt); the aggregator gets a **public** context: the encryption parameters (and,
for public-key presets, the public key) without the secret key. With it the aggregator can
load and add ciphertexts, never decrypt them.

Fingerprint. Each key set has a random 16-byte ``key_id`` (OS CSPRNG); its fingerprint is
``SHA-256(key_id || public context bytes)[:16]``, hex. Secret and public contexts of one
key set share it, so a ciphertext framed under another key set is refused before TenSEAL
sees it (:mod:`secure_fl.crypto.ckks_frame`).

Files (``provision``): ``site-<i>.secret.ckks`` for each site, ``aggregator.public.ckks``
and ``manifest.json``, all mode 0600 in a 0700 directory. A context file is::

    b"SFLCKKS1"  | u32 little-endian header length | header (UTF-8 JSON) | TenSEAL context bytes

with header ``{"kind": "secret"|"public", "preset": ..., "key_id": hex, "fingerprint": hex,
"params": {...}, "body_sha256": hex}``. Loading checks the magic, the kind the caller asked
for, the body digest, that the TenSEAL context agrees with the declared kind, the
fingerprint, and that a secret file is not readable by others.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tenseal as ts

from ..errors import SecureFLError
from .ckks_params import CkksParamError, CkksPreset, get_preset

__all__ = [
    "TENSEAL_ERRORS",
    "ContextKind",
    "CkksKeyError",
    "CkksKeys",
    "CkksContext",
    "generate_keys",
    "provision",
    "load_context",
    "load_secret_context",
    "load_public_context",
    "load_manifest",
    "ScaledParts",
    "encodable",
    "encrypt_one",
    "encrypt_chunks",
    "decrypt_chunks",
    "chunk_count",
    "MAGIC",
]

MAGIC = b"SFLCKKS1"
ContextKind = Literal["secret", "public"]


#: what TenSEAL raises on parameters, bytes or operands it refuses: pybind11 translates SEAL's C++
#: exceptions to these built-in types (std::invalid_argument -> ValueError, std::logic_error and
#: std::runtime_error -> RuntimeError, std::out_of_range -> IndexError, std::overflow_error ->
#: OverflowError, std::bad_alloc -> MemoryError; pybind11 docs, "Exceptions"). Callers translate them
#: into secure-fl's own errors at the boundary instead of catching every Exception.
TENSEAL_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    RuntimeError,
    IndexError,
    OverflowError,
    MemoryError,
)


class CkksKeyError(SecureFLError, ValueError):
    """A context file or key set is unusable for the role it was handed to."""


def _tenseal_context(preset: CkksPreset) -> ts.Context:
    enc = ts.ENCRYPTION_TYPE.SYMMETRIC if preset.encryption == "symmetric" else ts.ENCRYPTION_TYPE.ASYMMETRIC
    try:
        ctx = ts.context(
            ts.SCHEME_TYPE.CKKS, preset.poly_degree, -1, list(preset.coeff_mod_bit_sizes), encryption_type=enc
        )
    except TENSEAL_ERRORS as exc:  # SEAL refuses parameters it cannot build
        raise CkksParamError(f"preset {preset.name!r}: TenSEAL refused the parameters ({exc})") from exc
    ctx.global_scale = float(2**preset.scale)
    return ctx


def _public_bytes(ctx: ts.Context, preset: CkksPreset) -> bytes:
    """Serialise what the aggregator may hold: parameters (+ public key), no secret, no eval keys."""
    data: bytes = ctx.serialize(
        save_public_key=preset.encryption == "public-key",
        save_secret_key=False,
        save_galois_keys=False,
        save_relin_keys=False,
    )
    return data


def _fingerprint(key_id: bytes, public_bytes: bytes) -> str:
    return hashlib.sha256(key_id + public_bytes).hexdigest()[:32]


@dataclass
class CkksContext:
    """A loaded context with what it is: ``kind`` (secret/public), preset and fingerprint."""

    context: ts.Context
    kind: ContextKind
    preset: CkksPreset
    fingerprint: str

    @property
    def can_decrypt(self) -> bool:
        return bool(self.context.is_private())

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "fingerprint": self.fingerprint, **self.preset.describe()}


@dataclass
class CkksKeys:
    """One key set in memory: the secret context for sites, the public one for the aggregator."""

    preset: CkksPreset
    key_id: bytes = field(repr=False)
    secret_bytes: bytes = field(repr=False)
    public_bytes: bytes = field(repr=False)

    @property
    def fingerprint(self) -> str:
        return _fingerprint(self.key_id, self.public_bytes)

    def secret(self) -> CkksContext:
        """A fresh secret context (for a site)."""
        ctx = ts.context_from(self.secret_bytes)
        ctx.global_scale = float(2**self.preset.scale)
        return CkksContext(ctx, "secret", self.preset, self.fingerprint)

    def public(self) -> CkksContext:
        """A fresh public context (for the aggregator): it has no secret key."""
        ctx = ts.context_from(self.public_bytes)
        ctx.global_scale = float(2**self.preset.scale)
        if ctx.is_private():  # defence in depth: never hand out a secret by mistake
            raise CkksKeyError("internal error: the public context holds a secret key")
        return CkksContext(ctx, "public", self.preset, self.fingerprint)


def generate_keys(preset: CkksPreset | str) -> CkksKeys:
    """Generate a key set (SEAL draws the secret key from the OS CSPRNG)."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    ctx = _tenseal_context(p)
    secret_bytes = ctx.serialize(
        save_public_key=p.encryption == "public-key",
        save_secret_key=True,
        save_galois_keys=False,
        save_relin_keys=False,
    )
    return CkksKeys(p, secrets.token_bytes(16), secret_bytes, _public_bytes(ctx, p))


# --- files ------------------------------------------------------------------------------


def _write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 from the start (no window where others can read it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    os.chmod(path, 0o600)


def _pack(kind: ContextKind, keys: CkksKeys, body: bytes) -> bytes:
    header = json.dumps(
        {
            "kind": kind,
            "preset": keys.preset.name,
            "key_id": keys.key_id.hex(),
            "fingerprint": keys.fingerprint,
            "params": keys.preset.describe(),
            "body_sha256": hashlib.sha256(body).hexdigest(),
        },
        sort_keys=True,
    ).encode()
    return MAGIC + struct.pack("<I", len(header)) + header + body


def provision(n_sites: int, out_dir: Path | str, preset: str = "compact") -> dict[str, Any]:
    """Write one secret context per site and one public context for the aggregator.

    Run by the key holder, not by the aggregator. ``out_dir`` must not contain a previous
    key set (keys are never overwritten). Returns the manifest (also written as
    ``manifest.json``): fingerprint, preset, parameters and file names.
    """
    if not isinstance(n_sites, int) or isinstance(n_sites, bool) or n_sites < 1:
        raise CkksKeyError(f"n_sites must be a positive integer, found {n_sites!r}")
    p = get_preset(preset, where="--preset")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(out, 0o700)
    if (out / "manifest.json").exists() or any(out.glob("*.ckks")):
        raise CkksKeyError(f"{out} already holds a key set; refusing to overwrite it (choose an empty directory)")
    keys = generate_keys(p)
    width = max(3, len(str(n_sites - 1)))
    site_files = {f"site-{i:0{width}d}": f"site-{i:0{width}d}.secret.ckks" for i in range(n_sites)}
    secret_blob = _pack("secret", keys, keys.secret_bytes)
    for name in site_files.values():
        _write_private(out / name, secret_blob)
    _write_private(out / "aggregator.public.ckks", _pack("public", keys, keys.public_bytes))
    manifest = {
        "fingerprint": keys.fingerprint,
        "preset": p.name,
        "params": p.describe(),
        "sites": site_files,
        "aggregator": "aggregator.public.ckks",
        "note": "site files hold the shared secret key: hand each only to its site; the aggregator gets only "
        "aggregator.public.ckks",
    }
    _write_private(out / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True).encode())
    return manifest


def load_manifest(key_dir: Path | str) -> dict[str, Any]:
    path = Path(key_dir) / "manifest.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise CkksKeyError(
            f"{path}: no manifest; is {key_dir} a directory written by `secure-fl keys provision`?"
        ) from None
    except json.JSONDecodeError as exc:
        raise CkksKeyError(f"{path}: not valid JSON ({exc})") from exc
    for key in ("fingerprint", "preset", "sites", "aggregator"):
        if key not in data:
            raise CkksKeyError(f"{path}: missing key {key!r}")
    return data


def _read_header(path: Path) -> tuple[dict[str, Any], bytes]:
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise CkksKeyError(f"{path}: context file not found") from None
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 4:
        raise CkksKeyError(f"{path}: not a secure-fl CKKS context file (bad magic)")
    (hlen,) = struct.unpack_from("<I", blob, len(MAGIC))
    start = len(MAGIC) + 4
    if start + hlen > len(blob):
        raise CkksKeyError(f"{path}: truncated header ({hlen} bytes declared, {len(blob) - start} present)")
    try:
        header = json.loads(blob[start : start + hlen])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CkksKeyError(f"{path}: corrupted header ({exc})") from exc
    if not isinstance(header, dict) or header.get("kind") not in ("secret", "public"):
        raise CkksKeyError(f"{path}: header has no valid 'kind' (expected 'secret' or 'public')")
    return header, blob[start + hlen :]


def load_context(path: Path | str, expect: ContextKind) -> CkksContext:
    """Load a context file and check it is what the caller's role needs.

    ``expect="secret"`` is a site that must decrypt; ``expect="public"`` is the aggregator,
    which must never hold the secret key. A mismatch raises :class:`CkksKeyError`.
    """
    path = Path(path)
    if expect not in ("secret", "public"):
        raise ValueError(f"expect must be 'secret' or 'public', found {expect!r}")
    header, body = _read_header(path)
    kind = header["kind"]
    if expect == "public" and kind == "secret":
        raise CkksKeyError(
            f"{path}: this is a SECRET context (it holds the decryption key); the aggregator must get the "
            "public context (aggregator.public.ckks), never a site's"
        )
    if expect == "secret" and kind == "public":
        raise CkksKeyError(
            f"{path}: this is a PUBLIC context without the secret key; a site that decrypts needs its "
            "site-*.secret.ckks file"
        )
    preset = get_preset(str(header.get("preset")), where=f"{path}: preset")
    if hashlib.sha256(body).hexdigest() != header.get("body_sha256"):
        raise CkksKeyError(f"{path}: the context bytes do not match the header's digest (file altered or truncated)")
    try:
        ctx = ts.context_from(body)
    except TENSEAL_ERRORS as exc:
        raise CkksKeyError(f"{path}: the TenSEAL context is corrupted ({type(exc).__name__}: {exc})") from exc
    if bool(ctx.is_private()) != (kind == "secret"):
        raise CkksKeyError(
            f"{path}: header says {kind!r} but the context {'holds' if ctx.is_private() else 'lacks'} a secret key"
        )
    ctx.global_scale = float(2**preset.scale)
    try:
        key_id = bytes.fromhex(str(header.get("key_id")))
    except ValueError:
        raise CkksKeyError(f"{path}: header key_id is not hex") from None
    fp = _fingerprint(key_id, _public_bytes(ctx, preset))
    if fp != header.get("fingerprint"):
        raise CkksKeyError(
            f"{path}: fingerprint mismatch (header {header.get('fingerprint')}, computed {fp}): the file was "
            "altered or mixes two key sets"
        )
    mode = stat.S_IMODE(path.stat().st_mode)
    if kind == "secret" and mode & 0o077:
        raise CkksKeyError(f"{path}: secret context is readable by others (mode {mode:o}); run `chmod 600 {path}`")
    return CkksContext(ctx, kind, preset, fp)


def load_secret_context(path: Path | str) -> CkksContext:
    return load_context(path, "secret")


def load_public_context(path: Path | str) -> CkksContext:
    return load_context(path, "public")


# --- whole-model packing ---------------------------------------------------------------


def chunk_count(length: int, slots: int) -> int:
    """Number of ciphertexts holding a flat vector of ``length`` values (at least one)."""
    return max(1, -(-length // slots))


class ScaledParts:
    """The vector ``concatenate([ldexp(part, exp) for part, exp in parts])``, built one slice at a time.

    A site's update is encrypted from its own array (any float dtype) and a power-of-two scale, without
    a float64 copy of the whole vector: ``x[a:b]`` returns that slice as float64 (``ldexp`` computed in
    float64, exactly as on a float64 copy), ``x.size`` the length.
    """

    def __init__(self, *parts: tuple[np.ndarray, int]) -> None:
        self._parts = [(np.asarray(p).ravel(), int(e)) for p, e in parts]
        for p, _ in self._parts:
            if not np.issubdtype(p.dtype, np.floating) and not np.issubdtype(p.dtype, np.integer):
                raise ValueError(f"ScaledParts takes numeric arrays, found dtype {p.dtype}")
        self._starts = np.cumsum([0] + [p.size for p, _ in self._parts]).tolist()
        self.size: int = int(self._starts[-1])

    def peak(self) -> float:
        """``max |x|`` (NaN if any value is NaN), without a temporary copy of a part."""
        peak = 0.0
        for p, e in self._parts:
            if p.size:
                hi, lo = float(p.max()), float(p.min())
                if math.isnan(hi) or math.isnan(lo):
                    return math.nan
                peak = max(peak, math.ldexp(max(hi, -lo), e))
        return peak

    def __getitem__(self, index: slice) -> np.ndarray:
        start, stop, step = index.indices(self.size)
        if step != 1:
            raise ValueError("ScaledParts slices with step 1 only")
        out = np.empty(max(0, stop - start), dtype=np.float64)
        for (p, e), s0, s1 in zip(self._parts, self._starts[:-1], self._starts[1:]):
            lo, hi = max(start, s0), min(stop, s1)
            if lo < hi:
                np.ldexp(p[lo - s0 : hi - s0], e, out=out[lo - start : hi - start], dtype=np.float64)
        return out


def encodable(ctx: CkksContext, flat: np.ndarray | ScaledParts) -> np.ndarray | ScaledParts:
    """``flat`` as a vector ``ctx`` can encrypt (a float64 array, or the :class:`ScaledParts` as given), or the
    error saying why not.

    Every chunk is encoded at the preset's scale, so ``|values|`` must not exceed
    ``2**(data_bits - 2 - scale_bits)`` (1 for the default scales).
    """
    if not ctx.can_decrypt and ctx.preset.encryption == "symmetric":
        raise CkksKeyError("a symmetric preset encrypts with the secret key; this public context cannot encrypt")
    x = flat if isinstance(flat, ScaledParts) else np.asarray(flat, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("nothing to encrypt: the vector is empty")
    limit = 2.0 ** (ctx.preset.data_bits - 2 - ctx.preset.scale)
    peak = x.peak() if isinstance(x, ScaledParts) else float(np.max(np.abs(x), initial=0.0))
    if not peak <= limit:  # also catches NaN
        raise ValueError(
            f"values up to {peak:g} exceed {limit:g}, the largest magnitude preset {ctx.preset.name!r} encodes "
            f"at scale 2^{ctx.preset.scale}; normalise by a power of two first"
        )
    return x


def encrypt_one(ctx: CkksContext, part: np.ndarray) -> bytes:
    """One serialised ciphertext of at most ``slots`` values (checked by :func:`encodable`)."""
    data: bytes = ts.ckks_vector(ctx.context, part.tolist()).serialize()
    return data


def encrypt_chunks(ctx: CkksContext, flat: np.ndarray | ScaledParts) -> list[bytes]:
    """Encrypt a flat float vector as slot-sized chunks (no layer is ever too large), in this process.

    Every chunk is encoded at the preset's scale, so ``|values|`` must not exceed
    ``2**(data_bits - 2 - scale_bits)`` (1 for the default scales); returns the
    serialised ciphertexts. :func:`secure_fl.crypto.ckks_frame.encrypt_frame` does the same
    straight into a frame, on several processes for large vectors.
    """
    x = encodable(ctx, flat)
    slots = ctx.preset.slots
    return [encrypt_one(ctx, x[i * slots : (i + 1) * slots]) for i in range(chunk_count(x.size, slots))]


def decrypt_chunks(ctx: CkksContext, vectors: list[ts.CKKSVector]) -> np.ndarray:
    """Decrypt chunk vectors (loaded under ``ctx``) back into one flat float64 vector."""
    if not ctx.can_decrypt:
        raise CkksKeyError("this context has no secret key: it cannot decrypt (the aggregator never can)")
    return np.concatenate([np.asarray(v.decrypt(), dtype=np.float64) for v in vectors]) if vectors else np.zeros(0)
