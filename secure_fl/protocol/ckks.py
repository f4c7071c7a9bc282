"""CKKS secure sum (TenSEAL): the aggregator adds ciphertexts it cannot decrypt.

Threat model: honest-but-curious aggregator that does not collude with any site; all sites
share one secret key (so a site colluding with the aggregator could decrypt every other
site's update). See ``protocols/ckks-fedavg.toml``.

Stages (``actor``: what it does):

1. ``bounds`` (sites): each site encrypts a *magnitude histogram*: a one-hot vector over the
   binary exponent ``e`` with ``max|values| < 2**e`` and another over its weight's exponent,
   each entry ``2**-h`` (``h = ceil(log2 n_sites)``). No magnitude or example count is
   visible to the aggregator.
2. ``bounds_sum`` (aggregator): checks and adds the histograms, sends the sum to each site.
3. ``submit`` (sites): decrypt the histogram sum (every site gets the same integers, since
   decryption is deterministic), derive public powers of two ``2**Lv >= Σ_i max|values_i|``
   and ``2**Lw >= Σ_i weight_i``, and encrypt ``values * 2**-Lv`` followed by
   ``weight * 2**-Lw`` (so the encoded sum lies in ``[-1, 1]`` and uses the full scale of
   the preset), packed whole-model in slot-sized chunks: no layer is ever too large.
4. ``sum`` (aggregator): checks every frame (fingerprint, round, chunk count, digest, slot
   counts) before TenSEAL loads it, adds chunk-wise, sends the sum to the contributors.
5. ``decrypt`` (sites): decrypt and undo the powers of two: :meth:`SiteParty.result`.
   With ``release = "aggregator"`` one designated site (the first contributor in sorted
   order, so a single noisy copy leaves) also sends the sum to the aggregator, after the
   mitigation of the Li–Micciancio key-recovery attack on CKKS decryptions (Li, Micciancio,
   "On the Security of Homomorphic Encryption on Approximate Numbers", EUROCRYPT 2021):
   ``mitigation = "flood"`` adds Gaussian noise of std ``2**mitigation_bits`` times the
   estimated decryption error (drawn from the injected ``rng``; Li, Micciancio, Schultz,
   Sorrell, CRYPTO 2022, give the flooding needed for provable IND-CPA^D security), or
   ``"round"`` rounds to a grid of that step (deterministic, heuristic).
6. ``release`` (aggregator, only with ``release = "aggregator"``): receives it.

Bad input (a ciphertext from another key set, a truncated or corrupted frame, a wrong chunk
count, a site sending twice): with ``on_bad_input = "drop"`` that site is dropped and
:attr:`AggregatorParty.rejected` says why; other sites' data is kept. With ``"abort"`` the
round raises :class:`~secure_fl.errors.RoundAborted` naming the site and the reason.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..crypto.ckks import CkksContext, CkksKeys, chunk_count, decrypt_chunks, encrypt_chunks, generate_keys
from ..crypto.ckks_frame import FrameError, FrameKind, load_vectors, pack_frame, unpack_frame
from ..crypto.ckks_params import DEFAULT_PRESET, PRESETS, CkksPreset, get_preset, noise_std
from ..errors import ProtocolError, RoundAborted, SiteRejected, SpecError
from ..speccheck import check_keys, get, in_range, one_of
from .base import AGGREGATOR, AggregatorParty, Message, SecureSum, SiteParty, Stage, SumResult, ViewKind

__all__ = ["CkksSum", "BOUNDS", "BOUNDS_SUM", "SUBMIT", "SUM", "DECRYPT", "RELEASE", "update_layout", "MIN_EXP", "MAX_EXP"]

BOUNDS = "bounds"
BOUNDS_SUM = "bounds_sum"
SUBMIT = "submit"
SUM = "sum"
DECRYPT = "decrypt"
RELEASE = "release"

#: exponent range of the magnitude histograms: |x| < 2**e, e in [MIN_EXP, MAX_EXP]
MIN_EXP, MAX_EXP = -128, 127
_HIST = MAX_EXP - MIN_EXP + 1
#: bits of precision a released sum must keep after the mitigation (2**-14 ~ 6e-5)
_MIN_RELEASE_BITS = 14


def update_layout(dim: int, slots: int) -> list[int]:
    """Slots used by each chunk of an update of ``dim`` values plus the weight."""
    n = dim + 1
    return [min(slots, n - i * slots) for i in range(chunk_count(n, slots))]


def _exponent(x: float) -> int:
    """Smallest e in [MIN_EXP, MAX_EXP + 1] with |x| < 2**e (MIN_EXP for 0)."""
    if x == 0:
        return MIN_EXP
    return max(MIN_EXP, math.frexp(abs(x))[1])


def _ceil_log2(x: float) -> int:
    m, e = math.frexp(x)
    return e - 1 if m == 0.5 else e


def _h_bits(n_sites: int) -> int:
    return max(0, _ceil_log2(float(max(1, n_sites))))


# --- sites ------------------------------------------------------------------------------


class _CkksSite(SiteParty):
    def __init__(self, proto: "CkksSum", ctx: CkksContext, site_id: str, round: int, values: np.ndarray, weight: float) -> None:
        self.site_id, self.round = site_id, round
        self._p, self._ctx = proto, ctx
        self._values = np.asarray(values, dtype=np.float64).ravel()
        self._weight = float(weight)
        self._lv = self._lw = 0
        self._result: SumResult | None = None

    def _msg(self, stage: str, payload: bytes, kind: ViewKind = ViewKind.CIPHERTEXT) -> Message:
        return Message(self.round, stage, self.site_id, AGGREGATOR, payload, kind)

    def _frame_from(self, inbox: Sequence[Message], stage: str, kind: FrameKind, n_chunks: int | None) -> Any:
        mine = [m for m in inbox if m.sender == AGGREGATOR and m.stage == stage]
        if len(mine) != 1:
            raise SiteRejected(self.site_id, f"expected one {stage!r} message from the aggregator, got {len(mine)} (dropped by the aggregator?)")
        try:
            return unpack_frame(mine[0].payload, kind=kind, fingerprint=self._ctx.fingerprint, round=self.round, n_chunks=n_chunks)
        except FrameError as exc:
            raise SiteRejected(self.site_id, f"bad {stage!r} message from the aggregator: {exc}") from exc

    def step(self, stage: str, inbox: Sequence[Message]) -> list[Message]:
        if stage == BOUNDS:
            return [self._bounds()]
        if stage == SUBMIT:
            return [self._submit(inbox)]
        if stage == DECRYPT:
            return self._decrypt(inbox)
        raise SiteRejected(self.site_id, f"unexpected stage {stage!r}; CKKS site stages are {[BOUNDS, SUBMIT, DECRYPT]}")

    def _bounds(self) -> Message:
        v, w = self._values, self._weight
        if not np.all(np.isfinite(v)):
            raise SiteRejected(self.site_id, "update contains non-finite values")
        if not math.isfinite(w) or w < 0:
            raise SiteRejected(self.site_id, f"weight must be finite and >= 0, found {w}")
        ev = _exponent(float(np.max(np.abs(v))) if v.size else 0.0)
        ew = _exponent(w)
        if max(ev, ew) > MAX_EXP:
            raise SiteRejected(self.site_id, f"update too large to encode: max |value| = {np.max(np.abs(v)) if v.size else 0:g}, weight = {w:g} (limit 2**{MAX_EXP})")
        hist = np.zeros(2 * _HIST)
        unit = 2.0 ** -self._p._h
        hist[ev - MIN_EXP] = unit
        hist[_HIST + ew - MIN_EXP] = unit
        payload = pack_frame(FrameKind.BOUNDS, self._ctx.fingerprint, self.round, encrypt_chunks(self._ctx, hist))
        return self._msg(BOUNDS, payload)

    def _submit(self, inbox: Sequence[Message]) -> Message:
        frame = self._frame_from(inbox, BOUNDS_SUM, FrameKind.BOUNDS_SUM, 1)
        try:
            (vec,) = load_vectors(self._ctx, frame.chunks, [2 * _HIST])
        except FrameError as exc:
            raise SiteRejected(self.site_id, f"bad bounds sum: {exc}") from exc
        counts_f = decrypt_chunks(self._ctx, [vec]) * 2.0**self._p._h
        counts = np.rint(counts_f)
        if np.any(np.abs(counts_f - counts) > 0.25) or np.any(counts < 0):
            raise SiteRejected(self.site_id, "the bounds sum did not decrypt to counts (wrong key set or tampered ciphertext)")
        exps = np.arange(MIN_EXP, MAX_EXP + 1)
        bound_v = float(np.sum(np.ldexp(counts[:_HIST], exps)))
        bound_w = float(np.sum(np.ldexp(counts[_HIST:], exps)))
        if bound_v <= 0 or bound_w <= 0:
            raise SiteRejected(self.site_id, "the bounds sum is empty (this site's bounds were not counted)")
        self._lv, self._lw = _ceil_log2(bound_v), _ceil_log2(bound_w)
        flat = np.concatenate([np.ldexp(self._values, -self._lv), [math.ldexp(self._weight, -self._lw)]])
        chunks = encrypt_chunks(self._ctx, flat)
        payload = pack_frame(FrameKind.UPDATE, self._ctx.fingerprint, self.round, chunks)
        return self._msg(SUBMIT, payload)

    def _decrypt(self, inbox: Sequence[Message]) -> list[Message]:
        dim = self._values.size
        layout = update_layout(dim, self._ctx.preset.slots)
        frame = self._frame_from(inbox, SUM, FrameKind.SUM, len(layout))
        try:
            vecs = load_vectors(self._ctx, frame.chunks, layout)
        except FrameError as exc:
            raise SiteRejected(self.site_id, f"bad sum: {exc}") from exc
        flat = decrypt_chunks(self._ctx, vecs)
        contributors = tuple(str(s) for s in frame.meta.get("contributors", []))
        total = np.ldexp(flat[:dim], self._lv)
        weight = math.ldexp(float(flat[dim]), self._lw)
        self._result = SumResult(total, weight, contributors)
        if frame.meta.get("releaser") != self.site_id:
            return []
        released_total, released_weight = self._p._mitigate(total, weight, self._lv, self._lw, len(contributors))
        payload = np.float64(released_weight).astype("<f8").tobytes() + released_total.astype("<f8").tobytes()
        return [self._msg(DECRYPT, payload, ViewKind.AGGREGATE)]

    def result(self) -> SumResult | None:
        return self._result


# --- aggregator -------------------------------------------------------------------------


class _CkksAggregator(AggregatorParty):
    def __init__(self, proto: "CkksSum", ctx: CkksContext, round: int, site_ids: Sequence[str], dim: int) -> None:
        super().__init__()
        if ctx.can_decrypt:
            raise ProtocolError("the aggregator was handed a context with the secret key; it must get the public context only")
        self._p, self._ctx = proto, ctx
        self.round, self.site_ids, self.dim = round, [str(s) for s in site_ids], dim
        self._bounds_from: list[str] = []
        self._contributors: list[str] = []
        self._releaser: str | None = None
        self._result: SumResult | None = None

    @property
    def context(self) -> CkksContext:
        """The only key material the aggregator holds (public; for tests and audits)."""
        return self._ctx

    def _refuse(self, site: str, reason: str) -> None:
        if self._p.on_bad_input == "abort":
            raise RoundAborted(f"round {self.round}: site {site!r} sent a bad input ({reason}); on_bad_input = 'abort'")
        self.rejected[site] = reason

    def _by_sender(self, inbox: Sequence[Message], stage: str, allowed: Sequence[str]) -> dict[str, Message]:
        groups: dict[str, list[Message]] = {}
        for msg in inbox:
            groups.setdefault(msg.sender, []).append(msg)
        out: dict[str, Message] = {}
        for sender, msgs in sorted(groups.items()):
            if sender in self.rejected:
                continue
            if sender not in allowed:
                why = "not a participant of this round" if sender not in self.site_ids else f"sent a {stage!r} message without taking part in the earlier stage"
                self._refuse(sender, why)
            elif len(msgs) > 1:
                self._refuse(sender, f"sent {len(msgs)} messages at stage {stage!r} (one expected)")
            elif msgs[0].stage != stage:
                self._refuse(sender, f"sent a {msgs[0].stage!r} message at stage {stage!r}")
            else:
                out[sender] = msgs[0]
        return out

    def _sum(self, msgs: dict[str, Message], kind: FrameKind, layout: list[int]) -> tuple[list[Any], list[str]]:
        total: list[Any] | None = None
        accepted: list[str] = []
        for site, msg in msgs.items():
            try:
                frame = unpack_frame(msg.payload, kind=kind, fingerprint=self._ctx.fingerprint, round=self.round, n_chunks=len(layout))
                vecs = load_vectors(self._ctx, frame.chunks, layout)
                new = vecs if total is None else [t + v for t, v in zip(total, vecs)]
            except FrameError as exc:
                self._refuse(site, str(exc))
                continue
            except Exception as exc:  # e.g. TenSEAL refusing to add mismatched scales/levels
                self._refuse(site, f"ciphertext cannot be added to the others ({type(exc).__name__}: {exc})")
                continue
            total = new
            accepted.append(site)
        if total is None:
            raise RoundAborted(f"round {self.round}: no valid {kind.name.lower()} ciphertext received; refused: {self.rejected}")
        return total, accepted

    def step(self, stage: str, inbox: Sequence[Message]) -> list[Message]:
        if stage == BOUNDS_SUM:
            msgs = self._by_sender(inbox, BOUNDS, self.site_ids)
            total, self._bounds_from = self._sum(msgs, FrameKind.BOUNDS, [2 * _HIST])
            payload = pack_frame(FrameKind.BOUNDS_SUM, self._ctx.fingerprint, self.round, [v.serialize() for v in total])
            return [Message(self.round, BOUNDS_SUM, AGGREGATOR, s, payload, ViewKind.CIPHERTEXT) for s in self._bounds_from]
        if stage == SUM:
            msgs = self._by_sender(inbox, SUBMIT, self._bounds_from)
            total, self._contributors = self._sum(msgs, FrameKind.UPDATE, update_layout(self.dim, self._ctx.preset.slots))
            self._releaser = min(self._contributors) if self._p.release == "aggregator" else None
            meta = {"contributors": self._contributors, "releaser": self._releaser}
            payload = pack_frame(FrameKind.SUM, self._ctx.fingerprint, self.round, [v.serialize() for v in total], meta)
            return [Message(self.round, SUM, AGGREGATOR, s, payload, ViewKind.CIPHERTEXT) for s in self._contributors]
        if stage == RELEASE and self._p.release == "aggregator":
            mine = [m for m in inbox if m.sender == self._releaser and m.stage == DECRYPT]
            if len(mine) != 1:
                raise RoundAborted(f"round {self.round}: the releasing site {self._releaser!r} sent {len(mine)} released sums (one expected)")
            payload = mine[0].payload
            if len(payload) != 8 * (self.dim + 1):
                raise RoundAborted(f"round {self.round}: released sum from {self._releaser!r} has {len(payload)} bytes, expected {8 * (self.dim + 1)}")
            arr = np.frombuffer(payload, dtype="<f8")
            self._result = SumResult(arr[1:].astype(np.float64), float(arr[0]), tuple(self._contributors))
            return []
        raise ProtocolError(f"CKKS aggregator has no stage {stage!r}; its stages are {[s.name for s in self._p.stages if s.actor == 'aggregator']}")

    def result(self) -> SumResult | None:
        return self._result


# --- the protocol -----------------------------------------------------------------------


@dataclass
class CkksSum(SecureSum):
    """CKKS secure sum. Spec keys (``[secure_sum]``): ``kind = "ckks"``, ``preset``
    (one of :data:`~secure_fl.crypto.ckks_params.PRESETS`), ``release`` (``"sites"`` or
    ``"aggregator"``), ``on_bad_input`` (``"drop"`` or ``"abort"``), ``mitigation``
    (``"flood"`` or ``"round"``) and ``mitigation_bits`` (0..40).

    ``rng`` draws the flooding noise (inject a seeded generator in tests); by default a
    generator seeded from the OS CSPRNG.
    """

    preset: str = DEFAULT_PRESET
    release: str = "sites"
    on_bad_input: str = "drop"
    mitigation: str = "flood"
    mitigation_bits: int = 20
    rng: np.random.Generator | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.name = "ckks"
        self.view_kind = ViewKind.CIPHERTEXT
        where = "CkksSum"
        self._preset: CkksPreset = get_preset(self.preset, where=f"{where}.preset")
        for key, allowed in (("release", ("sites", "aggregator")), ("on_bad_input", ("drop", "abort")), ("mitigation", ("flood", "round"))):
            if getattr(self, key) not in allowed:
                raise SpecError(f"{where}.{key}: expected one of {list(allowed)}, found {getattr(self, key)!r}")
        if not isinstance(self.mitigation_bits, int) or not 0 <= self.mitigation_bits <= 40:
            raise SpecError(f"{where}.mitigation_bits: must be an integer in [0, 40], found {self.mitigation_bits!r}")
        self.releases_to_aggregator = self.release == "aggregator"
        self._keys: CkksKeys | None = None
        self._secret: CkksContext | None = None
        self._public: CkksContext | None = None
        self._site_ids: tuple[str, ...] = ()
        self._h = 0

    @property
    def parameters(self) -> CkksPreset:
        return self._preset

    @property
    def stages(self) -> tuple[Stage, ...]:
        stages = [Stage(BOUNDS, "sites"), Stage(BOUNDS_SUM, "aggregator"), Stage(SUBMIT, "sites"), Stage(SUM, "aggregator"), Stage(DECRYPT, "sites")]
        if self.release == "aggregator":
            stages.append(Stage(RELEASE, "aggregator"))
        return tuple(stages)

    @classmethod
    def from_params(cls, params: Mapping[str, Any], where: str) -> "CkksSum":
        check_keys(params, ["kind", "preset", "release", "on_bad_input", "mitigation", "mitigation_bits"], where)
        return cls(
            preset=get(params, "preset", str, where, DEFAULT_PRESET, one_of(*sorted(PRESETS))),
            release=get(params, "release", str, where, "sites", one_of("sites", "aggregator")),
            on_bad_input=get(params, "on_bad_input", str, where, "drop", one_of("drop", "abort")),
            mitigation=get(params, "mitigation", str, where, "flood", one_of("flood", "round")),
            mitigation_bits=get(params, "mitigation_bits", int, where, 20, in_range(0, 40)),
        )

    def setup(self, site_ids: Sequence[str], dim: int, keys: CkksKeys | None = None) -> None:
        """Provision the run's key set in memory (the key holder's role).

        Sites get the secret context; the aggregator party gets only the public one.
        ``keys`` lets a caller pass a key set provisioned elsewhere.
        """
        if not site_ids:
            raise ProtocolError("CKKS setup needs at least one site")
        p = self._preset
        self._site_ids = tuple(str(s) for s in site_ids)
        self._h = _h_bits(len(self._site_ids))
        noise_bits = math.log2(4 * noise_std(p, len(self._site_ids)))
        if p.scale - noise_bits - self._h < 4:
            raise ProtocolError(f"preset {p.name!r} cannot count {len(self._site_ids)} sites: scale 2^{p.scale} leaves no room over the noise (~2^{noise_bits:.1f})")
        if self.release == "aggregator":
            room = p.scale - noise_bits - self.mitigation_bits
            if room < _MIN_RELEASE_BITS:
                raise SpecError(
                    f"[secure_sum]: release = 'aggregator' with mitigation_bits = {self.mitigation_bits} leaves {room:.1f} bits of precision "
                    f"with preset {p.name!r} (scale 2^{p.scale}, noise ~2^{noise_bits:.1f} for {len(self._site_ids)} sites); need {_MIN_RELEASE_BITS}: "
                    f"use preset 'wide' or lower mitigation_bits to <= {int(p.scale - noise_bits - _MIN_RELEASE_BITS)}"
                )
        self._keys = keys if keys is not None else generate_keys(p)
        if self._keys.preset != p:
            raise ProtocolError(f"key set is for preset {self._keys.preset.name!r}, the spec says {p.name!r}")
        self._secret, self._public = self._keys.secret(), self._keys.public()

    def _need_setup(self) -> None:
        if self._keys is None:
            raise ProtocolError("CkksSum.setup(site_ids, dim) must run before the first round (it provisions the keys)")

    def site(self, site_id: str, round: int, values: np.ndarray, weight: float) -> SiteParty:
        self._need_setup()
        assert self._secret is not None
        return _CkksSite(self, self._secret, str(site_id), round, values, weight)

    def aggregator(self, round: int, site_ids: Sequence[str], dim: int) -> AggregatorParty:
        self._need_setup()
        assert self._public is not None
        return _CkksAggregator(self, self._public, round, site_ids, dim)

    @property
    def fingerprint(self) -> str:
        self._need_setup()
        assert self._keys is not None
        return self._keys.fingerprint

    def _noise_rng(self) -> np.random.Generator:
        if self.rng is None:
            self.rng = np.random.default_rng(secrets.randbits(128))
        return self.rng

    def _mitigate(self, total: np.ndarray, weight: float, lv: int, lw: int, n: int) -> tuple[np.ndarray, float]:
        """Noise flooding or rounding before a decrypted sum leaves the key holders."""
        p = self._preset
        step = noise_std(p, n) * 2.0 ** (self.mitigation_bits - p.scale)  # in normalised units
        sv, sw = math.ldexp(step, lv), math.ldexp(step, lw)
        if self.mitigation == "flood":
            rng = self._noise_rng()
            return total + rng.normal(0.0, sv, size=total.shape), float(weight + rng.normal(0.0, sw))
        gv, gw = 2.0 ** _ceil_log2(sv), 2.0 ** _ceil_log2(sw)
        return np.round(total / gv) * gv, float(round(weight / gw) * gw)
