"""What the aggregator carries, checked from the payload bytes, never from the labels.

One implementation shared by ``tests/test_views_payloads.py`` (every protocol of the catalogue,
issue 8 item 7) and the SecureSum contract suite (``tests/contract/``, issue 18).

:func:`audit` takes every message a carrier handed to its ``tap`` (sites -> aggregator and
aggregator -> sites), each site's input to the secure sum, and what the spec promises
(``aggregator_sees``), and returns the problems found:

* no payload contains the float32/float64 encoding of a site's input (weighted or divided by
  its weight), nor its quantised encoding under the protocol's :class:`Quantizer` (stochastic
  rounding allowed: each coordinate may be either neighbour on the grid), as a byte substring
  of runs of :data:`WINDOW` consecutive coordinates;
* no payload, read as little-endian floats (4, 8 bytes; squashed by ``sign(x) log(1 + |x|)`` so
  that garbage floats cannot dominate) or unsigned integers (1..8 bytes) from any of the first
  :data:`HEAD` byte offsets or aligned to its end, is correlated (Pearson) with a site's input
  beyond :data:`MAX_CORRELATION`: under independence r has standard deviation ``1/sqrt(dim)``
  (0.022 at dim = 2,000), so the bound is more than six of them;
* with ``aggregator_sees = "noised"`` the site's own payload may carry its (noised) input, but
  the clean input does not appear, and the payload read back differs from the clean input by at
  least half the stated noise standard deviation per coordinate;
* every CKKS frame (magic ``SFC1``) loads under the aggregator's public context, is framed for
  the message's round, and cannot be decrypted with that context;
* every ``AGGREGATE`` payload is a sum of site inputs (least squares on the inputs, read as
  float64 or float32) over at least ``min_contributors`` sites;
* with ``aggregator_sees = "plain"`` nothing is checked (the spec hides nothing).

The statistical check needs inputs of a few thousand coordinates to have power; the byte checks
need none.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from secure_fl.crypto.quantize import Quantizer, to_wire
from secure_fl.protocol.base import AGGREGATOR, Message, SecureSum, ViewKind

__all__ = ["SiteInput", "Promise", "audit", "label_check", "quantizer_of", "WINDOW", "HEAD", "MAX_CORRELATION"]

#: consecutive coordinates whose encoding is searched as a byte substring
WINDOW = 8
#: byte offsets tried from the start of a payload (plus the end-aligned ones)
HEAD = 64
#: largest |Pearson r| accepted between a payload read as numbers and a site's input
MAX_CORRELATION = 0.15
#: bytes tried before the end of a payload (a trailing weight slot or tag)
_TAIL = 24
_CKKS_MAGIC = b"SFC1"
_CKKS_HEAD = struct.Struct("<4sB16sIII")


@dataclass(frozen=True)
class SiteInput:
    """One site's input to the secure sum, as the test knows it.

    ``values``/``weight``: what the site handed to the secure sum. For a spec whose aggregator
    sees ``noised`` inputs, ``clean`` is the same input without its noise and ``noise_std`` the
    stated standard deviation of that noise per coordinate of ``values``.
    """

    values: np.ndarray
    weight: float
    clean: np.ndarray | None = None
    noise_std: float = 0.0


@dataclass(frozen=True)
class Promise:
    """What the spec promises about the aggregator's view, and what the auditor may use."""

    aggregator_sees: str
    min_contributors: int = 1
    quantizer: Quantizer | None = None
    public_context: object | None = None  # a secure_fl.crypto.ckks.CkksContext without the secret key


def quantizer_of(secure_sum: SecureSum, n_sites: int) -> Quantizer | None:
    """The protocol's quantiser (after ``setup``), else one built from its parameters, else ``None``."""
    q = getattr(secure_sum, "quantizer", None)
    if isinstance(q, Quantizer):
        return q
    try:
        bits, clip, top = secure_sum.bits, secure_sum.clip_range, secure_sum.max_weight  # type: ignore[attr-defined]
        return Quantizer(bits, clip, top, n_sites, getattr(secure_sum, "noise_bound", 0))
    except AttributeError:
        return None


def label_check(messages: Iterable[Message], aggregator_sees: str) -> list[str]:
    """The old, label-based invariant (tests/test_runs.py before issue 8 item 7): kinds only."""
    kinds = {m.kind.value for m in messages if m.sender != AGGREGATOR}
    if aggregator_sees == "plain":
        return []
    problems = []
    if "plain" in kinds:
        problems.append(f"a site message is labelled plain but the spec says {aggregator_sees!r}")
    if aggregator_sees not in kinds:
        problems.append(f"no site message is labelled {aggregator_sees!r}")
    return problems


# --- encodings searched as byte substrings ------------------------------------------------------


def _windows(x: np.ndarray) -> list[int]:
    """Up to three starts of WINDOW consecutive coordinates, all nonzero (zeros match too much)."""
    n = x.shape[0]
    if n < WINDOW:
        return []
    ok = np.convolve((x != 0).astype(np.int64), np.ones(WINDOW, dtype=np.int64), mode="valid") == WINDOW
    starts = np.flatnonzero(ok)
    if starts.size == 0:
        return []
    picks = {int(starts[0]), int(starts[len(starts) // 2]), int(starts[-1])}
    return sorted(picks)


def _float_needles(x: np.ndarray) -> Iterator[tuple[str, bytes]]:
    for start in _windows(x):
        part = x[start : start + WINDOW]
        yield f"float32 encoding of coordinates {start}..{start + WINDOW - 1}", part.astype("<f4").tobytes()
        yield f"float64 encoding of coordinates {start}..{start + WINDOW - 1}", part.astype("<f8").tobytes()


def _quantised_patterns(q: Quantizer, values: np.ndarray, weight: float) -> Iterator[tuple[str, re.Pattern[bytes]]]:
    """Byte patterns of the quantised slots (either rounding of every coordinate), per window."""
    try:
        w = q.check_weight(weight)
    except ValueError:
        return
    x = np.asarray(values, dtype=np.float64)
    scaled = np.clip(x / w, -q.clip_range, q.clip_range) if w > 0 else np.zeros_like(x)
    scaled = (scaled + q.clip_range) * (1.0 / q.step)
    low = np.clip(np.floor(scaled).astype(np.int64), 0, q.levels)
    high = np.clip(low + 1, 0, q.levels)
    for start in _windows(np.ones_like(x)):
        alternatives = []
        for i in range(start, start + WINDOW):
            slots = (np.array([v * w + q.noise_bound], dtype=q.dtype) for v in (low[i], high[i]))
            options = {to_wire(slot, q.modulus_bits) for slot in slots}
            alternatives.append(b"(?:" + b"|".join(re.escape(o) for o in sorted(options)) + b")")
        pattern = re.compile(b"".join(alternatives), re.DOTALL)
        yield f"quantised encoding of coordinates {start}..{start + WINDOW - 1}", pattern


# --- payloads read as numbers ---------------------------------------------------------------------


def _read(payload: bytes, start: int, width: int, kind: str, count: int) -> np.ndarray | None:
    end = start + width * count
    if start < 0 or end > len(payload):
        return None
    raw = payload[start:end]
    if kind == "f":
        with np.errstate(invalid="ignore", over="ignore"):
            return np.frombuffer(raw, dtype="<f4" if width == 4 else "<f8").astype(np.float64)
    buf = np.zeros((count, 8), dtype=np.uint8)
    buf[:, :width] = np.frombuffer(raw, dtype=np.uint8).reshape(count, width)
    return buf.reshape(-1).view("<u8").astype(np.float64)


_READINGS = [("f", 4), ("f", 8)] + [("u", w) for w in range(1, 9)]


def _readings(payload: bytes, count: int, floats_only: bool = False) -> Iterator[tuple[str, np.ndarray]]:
    """The payload read as ``count`` numbers in every tried encoding and byte offset."""
    for kind, width in _READINGS:
        span = width * count
        if span > len(payload) or (floats_only and kind != "f"):
            continue
        for start in _starts(len(payload), span):
            arr = _read(payload, start, width, kind, count)
            if arr is not None:
                yield f"{'float' if kind == 'f' else 'uint'}{8 * width} at byte {start}", arr


def _starts(size: int, span: int) -> list[int]:
    """Byte offsets tried: the first HEAD ones and the end-aligned ones (a trailing weight slot or tag)."""
    starts = set(range(min(HEAD, size - span) + 1))
    starts.update(size - span - tail for tail in range(0, _TAIL + 1))
    return sorted(s for s in starts if s >= 0)


def _squash(x: np.ndarray) -> np.ndarray:
    """Monotone and bounded-growth: garbage floats (1e38, NaN) cannot dominate a correlation."""
    with np.errstate(invalid="ignore", over="ignore"):
        out = np.sign(x) * np.log1p(np.abs(x))
    return np.where(np.isfinite(out), out, 0.0)


def _sliding_pearson(a: np.ndarray, ys: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Pearson r between each ``y`` (centred, unit norm, length d) and every window ``a[j : j + d]``."""
    d = ys[0].shape[0]
    if a.shape[0] < d:
        return []
    a = a - np.median(a)
    scale = float(np.max(np.abs(a)))
    if scale == 0:
        return []
    a = a / scale
    c1 = np.concatenate([[0.0], np.cumsum(a)])
    c2 = np.concatenate([[0.0], np.cumsum(a * a)])
    s1, s2 = c1[d:] - c1[:-d], c2[d:] - c2[:-d]
    denom = np.sqrt(np.maximum(s2 - s1 * s1 / d, 1e-300))
    return [np.correlate(a, y, mode="valid") / denom for y in ys]


# --- the audit ---------------------------------------------------------------------------------


def _centred(x: np.ndarray) -> np.ndarray:
    y = np.asarray(x, dtype=np.float64) - float(np.mean(x))
    norm = float(np.linalg.norm(y))
    return y / norm if norm > 0 else y


def audit(messages: Sequence[Message], inputs: Mapping[str, SiteInput], promise: Promise) -> list[str]:
    """Every problem found in what the aggregator carried (empty when the views keep the promise)."""
    if promise.aggregator_sees == ViewKind.PLAIN.value:
        return []
    problems: list[str] = []
    noised = promise.aggregator_sees == ViewKind.NOISED.value
    dims = {s.values.shape[0] for s in inputs.values()}
    hidden = {site: (s.clean if noised and s.clean is not None else s.values) for site, s in inputs.items()}
    needles = [(site, what, b) for site, x in hidden.items() for what, b in _float_needles(x)]
    weights = {site: s.weight for site, s in inputs.items()}
    needles += [(site, f"{what} / weight", b) for site, x in hidden.items() if weights[site] not in (0, 1)
                for what, b in _float_needles(x / weights[site])]
    patterns = []
    if promise.quantizer is not None:
        patterns = [(site, what, p) for site, x in hidden.items()
                    for what, p in _quantised_patterns(promise.quantizer, x, weights[site])]
    centred = {site: _centred(x) for site, x in hidden.items()} if not noised else {}
    for m in messages:
        where = f"round {m.round} {m.stage!r} {m.sender}->{m.receiver} ({m.kind.value}, {m.nbytes} B)"
        if m.kind is ViewKind.AGGREGATE:
            problems += [f"{where}: {p}" for p in _check_aggregate(m, inputs, promise.min_contributors)]
            continue
        if m.kind is ViewKind.PLAIN and m.sender != AGGREGATOR:
            problems.append(f"{where}: a site message labelled plain, the spec says {promise.aggregator_sees!r}")
        if promise.public_context is not None and m.payload[:4] == _CKKS_MAGIC:
            problems += [f"{where}: {p}" for p in _check_ckks(m, promise.public_context)]
        elif promise.public_context is not None and m.kind is ViewKind.CIPHERTEXT:
            problems.append(f"{where}: labelled ciphertext but not a CKKS frame the aggregator's context can load")
        for site, what, needle in needles:
            if needle in m.payload:
                problems.append(f"{where}: payload contains the {what} of {site}'s input")
        for site, what, pattern in patterns:
            if pattern.search(m.payload):
                problems.append(f"{where}: payload contains the {what} of {site}'s input")
        for dim in dims:
            if noised and m.sender in inputs and m.sender != AGGREGATOR:
                problems += [f"{where}: {p}" for p in _check_noise(m.payload, inputs[m.sender])]
            elif centred:
                problems += [f"{where}: {p}" for p in _check_correlation(m.payload, dim, centred)]
    return problems


def _check_correlation(payload: bytes, dim: int, centred: Mapping[str, np.ndarray]) -> list[str]:
    """Sliding Pearson r of the payload, read in every encoding from every tried offset, with each input."""
    sites = [s for s, y in centred.items() if y.shape[0] == dim]
    if not sites:
        return []
    worst: tuple[float, str, str] = (0.0, "", "")
    for kind, width in _READINGS:
        span = width * dim
        if span > len(payload):
            continue
        head = min(HEAD, len(payload) - span)
        regions = [(a, head // width + dim) for a in range(width)]  # every start in [0, HEAD]
        tail0 = max(0, len(payload) - span - _TAIL)
        regions += [(tail0 + a, (len(payload) - tail0 - a) // width) for a in range(width)]
        for first, count in regions:
            arr = _read(payload, first, width, kind, count)
            if arr is None:
                continue
            if kind == "f":
                arr = _squash(arr)
            for site, r in zip(sites, _sliding_pearson(arr, [centred[s] for s in sites])):
                j = int(np.argmax(np.abs(r)))
                if abs(r[j]) > abs(worst[0]):
                    name = f"{'float' if kind == 'f' else 'uint'}{8 * width} at byte {first + j * width}"
                    worst = (float(r[j]), name, site)
    if abs(worst[0]) > MAX_CORRELATION:
        return [f"payload read as {worst[1]} is correlated with {worst[2]}'s input (Pearson r = {worst[0]:.3f})"]
    return []


def _check_noise(payload: bytes, site: SiteInput) -> list[str]:
    """A noised payload read back as floats differs from the clean input by at least the stated noise."""
    if site.clean is None or site.noise_std <= 0:
        return ["the spec says 'noised' but the test gave no clean input and noise level to compare with"]
    clean = np.asarray(site.clean, dtype=np.float64)
    closest = (np.inf, "")
    for reading, arr in _readings(payload, clean.shape[0], floats_only=True):
        if not np.all(np.isfinite(arr)):
            continue
        spread = float(np.std(arr - clean))
        if spread < closest[0]:
            closest = (spread, reading)
    if closest[0] < 0.5 * site.noise_std:
        return [f"payload read as {closest[1]} differs from the clean input by std {closest[0]:.3g}, "
                f"less than half the stated noise std {site.noise_std:.3g}"]
    return []


def _check_ckks(m: Message, public_context: object) -> list[str]:
    import tenseal as ts

    from secure_fl.crypto.ckks import CkksKeyError, decrypt_chunks
    from secure_fl.crypto.ckks_frame import FrameError, FrameKind, unpack_frame

    ctx = public_context
    if getattr(ctx, "can_decrypt", True):
        return ["the auditor was handed a context that can decrypt: it must be the aggregator's public one"]
    if len(m.payload) < _CKKS_HEAD.size:
        return ["truncated CKKS frame"]
    _, kind, _, _, _, _ = _CKKS_HEAD.unpack_from(m.payload, 0)
    try:
        fingerprint = ctx.fingerprint  # type: ignore[attr-defined]
        frame = unpack_frame(m.payload, kind=FrameKind(kind), fingerprint=fingerprint, round=m.round)
    except (FrameError, ValueError) as exc:
        return [f"CKKS frame does not load under the aggregator's public context: {exc}"]
    problems = []
    for i, chunk in enumerate(frame.chunks):
        try:
            vec = ts.ckks_vector_from(ctx.context, chunk)  # type: ignore[attr-defined]
        except Exception as exc:  # TenSEAL raises assorted types on bad bytes
            problems.append(f"chunk {i} does not load under the aggregator's public context ({type(exc).__name__})")
            continue
        try:
            decrypt_chunks(ctx, [vec])  # type: ignore[arg-type]
        except CkksKeyError:
            pass
        else:
            problems.append(f"chunk {i} decrypts under the aggregator's context")
        try:
            vec.decrypt()
        except Exception:  # TenSEAL refuses: the secret key is not in the context
            continue
        problems.append(f"chunk {i} decrypts with TenSEAL under the aggregator's context")
    return problems


def _check_aggregate(m: Message, inputs: Mapping[str, SiteInput], min_contributors: int) -> list[str]:
    """Count, from the payload, how many site inputs an AGGREGATE message sums."""
    sites = sorted(inputs)
    if not sites:
        return ["an AGGREGATE message in a round without inputs"]
    x = np.stack([inputs[s].values for s in sites], axis=1).astype(np.float64)
    scale = float(np.max(np.abs(x))) or 1.0
    best: tuple[float, np.ndarray | None, str] = (np.inf, None, "")
    for reading, arr in _readings(m.payload, x.shape[0], floats_only=True):
        if not np.all(np.isfinite(arr)):
            continue
        coef, *_ = np.linalg.lstsq(x, arr, rcond=None)
        residual = float(np.max(np.abs(x @ coef - arr))) / scale
        if residual < best[0]:
            best = (residual, coef, reading)
    if best[1] is None or best[0] > 1e-2:
        return ["AGGREGATE payload is not a sum of site inputs: its contributors cannot be counted"]
    coef = best[1]
    if np.any(np.abs(coef - np.rint(coef)) > 0.05) or np.any((coef < -0.05) | (coef > 1.05)):
        return [f"AGGREGATE payload read as {best[2]} is a weighted combination "
                f"{np.round(coef, 3).tolist()} of inputs, not a sum"]
    count = int(np.sum(coef > 0.5))
    if count < min_contributors:
        return [f"AGGREGATE payload read as {best[2]} sums {count} site input(s), "
                f"fewer than min_contributors = {min_contributors}"]
    return []
