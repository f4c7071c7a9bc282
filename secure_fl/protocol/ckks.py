"""CKKS secure sum (TenSEAL): the aggregator adds ciphertexts it cannot decrypt.

Threat model: honest-but-curious (semi-honest) aggregator that does not collude with any
site; all sites share one secret key (so a site colluding with the aggregator could decrypt
every other site's update). See ``protocols/ckks-fedavg.toml``.

Stages (``actor``: what it does); ``bounds = "histogram"`` (default):

1. ``bounds`` (sites): each site encrypts a *magnitude histogram*: a one-hot vector over the
   binary exponent ``e`` with ``max|values| < 2**e`` and another over its weight's exponent,
   each entry ``2**-h`` (``h = ceil(log2 n_sites)``), followed by its *contributor tag*
   (below). No magnitude or example count is visible to the aggregator; the other sites see
   the histogram of exponents (use ``bounds = "public"`` where that is too much).
2. ``bounds_sum`` (aggregator): checks and adds the histograms, withholds the sum when fewer
   than ``min_contributors`` sites remain, and sends it to each contributor with the list of
   contributors in the frame.
3. ``submit`` (sites): check the contributor list, decrypt the histogram sum, check that its
   tags and counts match the list, derive public powers of two ``2**Lv >= Σ_i max|values_i|``
   and ``2**Lw >= Σ_i weight_i``, and encrypt ``values * 2**-Lv``, ``weight * 2**-Lw`` and the
   contributor tag, packed whole-model in slot-sized chunks: no layer is ever too large.
4. ``sum`` (aggregator): checks every frame (fingerprint, round, chunk count, digest, slot
   counts) before TenSEAL loads it, adds chunk-wise, withholds the sum below
   ``min_contributors``, sends it to the contributors with their list.
5. ``decrypt`` (sites): check the list, decrypt, check the tags, undo the powers of two:
   :meth:`SiteParty.result`. With ``release = "aggregator"`` one designated site (the first
   contributor in sorted order, so a single noisy copy leaves) floods the sum with Gaussian
   noise (below) and sends it to the aggregator.
6. ``release`` (aggregator, only with ``release = "aggregator"``): receives it.

With ``bounds = "public"`` stages 1-2 disappear (one round trip less): ``2**Lv`` and ``2**Lw``
come from the public per-site bounds ``value_bound`` and ``weight_bound`` times the number of
sites of the federation, and a site whose input exceeds them refuses to send it. Nothing about
a site's magnitude reaches anyone; the price is precision when the bounds are loose.

Minimum contributors. A "sum" of one site is that site's input, and a sum of two is the other
site's input to each of them. The aggregator withholds every sum (histogram or update) of
fewer than :attr:`SecureSum.min_contributors` sites (spec ``min_contributors``, >= 2, default
3; privacy layers raise it with :meth:`SecureSum.require_contributors`), and every site refuses
to decrypt a sum whose contributor list is shorter, omits the site itself, repeats a site or
names a site outside the federation (:class:`~secure_fl.errors.SiteRejected`). With release to
the aggregator nothing leaves then: no site decrypts, so no AGGREGATE message is sent.

Binding the list to the ciphertext. Each site's plaintext carries a *contributor tag*: ``1/2``
in the slot of its index in the sorted federation roster, 0 elsewhere. A sum therefore
decrypts to the indicator of the sites really added, and every site checks it against the
list in the frame; a mismatch (a dropped site still listed, a ciphertext added twice or
subtracted, a site added but not listed) is refused and the sum discarded before it is used
or released. What a lying (active) aggregator can still do: (a) hand a site any single
ciphertext it carried, or combine ciphertexts of *several rounds* of the same sites (the tag
binds which sites, not which round); a site that decrypts it anyway learns it, since all
sites share the key: the minimum holds only against a semi-honest aggregator, and against
an active one only for sites that follow the protocol and for what they release; (b) with a
public-key preset (``nvflare``), encrypt inputs of its own, including a tag for an absent
site, so it can forge a contribution; with the symmetric presets it cannot encrypt. The
guarantee therefore rests on the semi-honest assumption stated in the spec.

Release to the aggregator: the Li–Micciancio attack (EUROCRYPT 2021) recovers the secret
key from CKKS decryptions. The releasing site adds Gaussian noise of std
:func:`~secure_fl.crypto.ckks_params.flooding_std` (Li, Micciancio, Schultz, Sorrell, CRYPTO
2022, Sections 4-5): calibrated to a bound on the decryption error that holds with
probability ``1 - 2**-statistical_security`` for every released value and to the number of
values released under the key set (``(dim + 1) x max_released_rounds``), for
``statistical_security`` (default 40) bits. The noise comes from the OS CSPRNG
(:meth:`NoiseSource.secure`) unless a seeded source is injected (tests). Every site counts
the released rounds it has seen (and at least the round number + 1) and refuses to release
beyond ``max_released_rounds``. The count is kept where the keys live
(:class:`~secure_fl.protocol.ckks_releases.ReleaseCount`; ``setup(..., release_log=)``, for a
deployed site ``KIT/ckks/releases.json``) and written before the release leaves, so a restarted
process, a resumed run or the next run under the same kit continues it; keys generated in
memory for one simulated run keep it in memory (they die with the process).
The release keeps :attr:`CkksSum.release_precision_bits` bits relative to the public bound
``2**Lv``; a setting that keeps fewer than 14 is refused at setup.

Stage order: both parties refuse an out-of-order, repeated or unknown stage with
:class:`~secure_fl.errors.StageError` (:class:`~secure_fl.protocol.base.StagedParty`).

Bad input (a ciphertext from another key set, a truncated or corrupted frame, a wrong chunk
count, a site sending twice): with ``on_bad_input = "drop"`` that site is dropped and
:attr:`AggregatorParty.rejected` says why; other sites' data is kept. With ``"abort"`` the
round raises :class:`~secure_fl.errors.RoundAborted` naming the site and the reason. A
ciphertext that loads and adds but holds garbage (a forged histogram or tag) cannot be
traced to its sender without decrypting single inputs: every site refuses the sum and the
round releases nothing (stated in the spec's ``not_protected``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..crypto.ckks import (
    TENSEAL_ERRORS,
    CkksContext,
    CkksKeys,
    ScaledParts,
    chunk_count,
    generate_keys,
)
from ..crypto.ckks_frame import (
    Frame,
    FrameError,
    FrameKind,
    FrameWriter,
    decrypt_frame,
    encrypt_frame,
    iter_vectors,
    load_vector,
    unpack_frame,
)
from ..crypto.ckks_params import DEFAULT_PRESET, PRESETS, CkksPreset, flooding_std, get_preset, noise_std
from ..errors import InvalidParameter, ProtocolError, RoundAborted, SiteRejected, SpecError
from ..privacy.noise import NoiseSource
from ..speccheck import build, check_keys, get
from .base import (
    AGGREGATOR,
    AggregatorParty,
    Message,
    SecureSum,
    SiteParty,
    Stage,
    StagedParty,
    SumResult,
    ViewKind,
    handles,
)
from .ckks_releases import ReleaseCount

__all__ = [
    "CkksSum",
    "BOUNDS",
    "BOUNDS_SUM",
    "SUBMIT",
    "SUM",
    "DECRYPT",
    "RELEASE",
    "update_layout",
    "bounds_layout",
    "MIN_EXP",
    "MAX_EXP",
    "MIN_RELEASE_BITS",
]

BOUNDS = "bounds"
BOUNDS_SUM = "bounds_sum"
SUBMIT = "submit"
SUM = "sum"
DECRYPT = "decrypt"
RELEASE = "release"

#: exponent range of the magnitude histograms: |x| < 2**e, e in [MIN_EXP, MAX_EXP]
MIN_EXP, MAX_EXP = -128, 127
_HIST = MAX_EXP - MIN_EXP + 1
#: bits of precision (relative to the public bound 2**Lv) a released sum must keep after flooding
MIN_RELEASE_BITS = 14
#: a contributor's tag value in its roster slot
_TAG = 0.5
_SPEC_KEYS = [
    "kind", "preset", "release", "on_bad_input", "mitigation", "statistical_security", "max_released_rounds",
    "min_contributors", "bounds", "value_bound", "weight_bound",
]


def _layout(n: int, slots: int) -> list[int]:
    return [min(slots, n - i * slots) for i in range(chunk_count(n, slots))]


def update_layout(dim: int, slots: int, n_tags: int = 0) -> list[int]:
    """Slots used by each chunk of an update: ``dim`` values, the weight, ``n_tags`` contributor tags."""
    return _layout(dim + 1 + n_tags, slots)


def bounds_layout(slots: int, n_tags: int) -> list[int]:
    """Slots used by each chunk of a magnitude histogram (values, weight) plus the contributor tags."""
    return _layout(2 * _HIST + n_tags, slots)


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


class _CkksSite(StagedParty, SiteParty):
    def __init__(
        self, proto: CkksSum, ctx: CkksContext, site_id: str, round: int, values: np.ndarray, weight: float
    ) -> None:
        self.site_id, self.round = site_id, round
        self._p, self._ctx = proto, ctx
        arr = np.asarray(values).ravel()  # no copy: the input is read chunk by chunk at ``submit``, then let go
        self._values: np.ndarray | None = arr if np.issubdtype(arr.dtype, np.floating) else arr.astype(np.float64)
        self._dim = int(arr.size)
        self._weight = float(weight)
        self._lv = self._lw = 0
        self._bounds_from: tuple[str, ...] | None = None
        self._result: SumResult | None = None
        self._sequence(proto.stages, "sites", f"CKKS site {site_id!r}")

    def _msg(self, stage: str, payload: bytes, kind: ViewKind = ViewKind.CIPHERTEXT) -> Message:
        return Message(self.round, stage, self.site_id, AGGREGATOR, payload, kind)

    def _reject(self, reason: str) -> SiteRejected:
        return SiteRejected(self.site_id, reason)

    def _frame_from(self, inbox: Sequence[Message], stage: str, kind: FrameKind, n_chunks: int) -> Any:
        mine = [m for m in inbox if m.sender == AGGREGATOR and m.stage == stage]
        if len(mine) != 1:
            raise self._reject(
                f"expected one {stage!r} message from the aggregator, got {len(mine)} "
                "(dropped or withheld by the aggregator?)"
            )
        try:
            fp = self._ctx.fingerprint
            return unpack_frame(mine[0].payload, kind=kind, fingerprint=fp, round=self.round, n_chunks=n_chunks)
        except FrameError as exc:
            raise self._reject(f"bad {stage!r} message from the aggregator: {exc}") from exc

    def _tag(self) -> np.ndarray:
        tags = np.zeros(len(self._p.roster))
        tags[self._p.roster.index(self.site_id)] = _TAG
        return tags

    def _input(self) -> np.ndarray:
        if self._values is None:
            raise ProtocolError(f"CKKS site {self.site_id!r}: its input was already encrypted and let go")
        return self._values

    def _check_input(self) -> None:
        v, w = self._input(), self._weight
        if not np.all(np.isfinite(v)):
            raise self._reject("update contains non-finite values")
        if not math.isfinite(w) or w < 0:
            raise self._reject(f"weight must be finite and >= 0, found {w}")

    def _contributors(self, meta: Mapping[str, Any], what: str) -> tuple[str, ...]:
        """The frame's contributor list, checked before anything is decrypted."""
        raw = meta.get("contributors")
        if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
            raise self._reject(f"the {what} carries no valid contributor list: refusing to decrypt it")
        listed = tuple(raw)
        if len(set(listed)) != len(listed):
            raise self._reject(f"the {what}'s contributor list repeats a site: refusing to decrypt it")
        outside = sorted(set(listed) - set(self._p.roster))
        if outside:
            raise self._reject(
                f"the {what}'s contributor list names sites outside the federation {outside}: refusing to decrypt it"
            )
        if self.site_id not in listed:
            raise self._reject(f"the {what}'s contributor list does not include this site: refusing to decrypt it")
        minimum = self._p.min_contributors
        if len(listed) < minimum:
            raise self._reject(
                f"the {what} has {len(listed)} contributor(s), fewer than min_contributors = {minimum}: "
                "refusing to decrypt it (a sum of so few sites exposes them)"
            )
        if self._bounds_from is not None and not set(listed) <= set(self._bounds_from):
            extra = sorted(set(listed) - set(self._bounds_from))
            raise self._reject(f"the {what} lists sites {extra} that sent no bounds this round: refusing to decrypt it")
        return listed

    def _check_tags(self, tags: np.ndarray, listed: Sequence[str], what: str) -> None:
        """The decrypted tags must be the indicator of the listed contributors, nothing else."""
        counts_f = tags / _TAG
        counts = np.rint(counts_f)
        expected = np.array([1.0 if s in listed else 0.0 for s in self._p.roster])
        if np.any(np.abs(counts_f - counts) > 0.25) or not np.array_equal(counts, expected):
            raise self._reject(
                f"the {what} is not the sum of the sites it lists (its contributor tags differ from the list): "
                "discarding it"
            )

    @handles(BOUNDS)
    def _bounds(self, inbox: Sequence[Message]) -> list[Message]:
        self._check_input()
        v, w = self._input(), self._weight
        ev = _exponent(float(np.max(np.abs(v))) if v.size else 0.0)
        ew = _exponent(w)
        if max(ev, ew) > MAX_EXP:
            raise self._reject(f"update or weight too large to encode (limit 2**{MAX_EXP})")
        hist = np.zeros(2 * _HIST)
        unit = 2.0 ** -self._p._h
        hist[ev - MIN_EXP] = unit
        hist[_HIST + ew - MIN_EXP] = unit
        payload = encrypt_frame(self._ctx, FrameKind.BOUNDS, self.round, np.concatenate([hist, self._tag()]))
        return [self._msg(BOUNDS, payload)]

    def _bounds_from_histogram(self, inbox: Sequence[Message]) -> None:
        layout = bounds_layout(self._ctx.preset.slots, len(self._p.roster))
        frame = self._frame_from(inbox, BOUNDS_SUM, FrameKind.BOUNDS_SUM, len(layout))
        listed = self._contributors(frame.meta, "bounds sum")
        try:
            flat = decrypt_frame(self._ctx, frame, layout)
        except FrameError as exc:
            raise self._reject(f"bad bounds sum: {exc}") from exc
        self._check_tags(flat[2 * _HIST:], listed, "bounds sum")
        counts_f = flat[: 2 * _HIST] * 2.0**self._p._h
        counts = np.rint(counts_f)
        k = len(listed)
        integral = not np.any(np.abs(counts_f - counts) > 0.25) and not np.any(counts < 0)
        if not integral or counts[:_HIST].sum() != k or counts[_HIST:].sum() != k:
            raise self._reject(
                f"the bounds sum did not decrypt to one value and one weight exponent for each of its {k} contributors "
                "(forged or tampered histogram)"
            )
        exps = np.arange(MIN_EXP, MAX_EXP + 1)
        self._lv = _ceil_log2(float(np.sum(np.ldexp(counts[:_HIST], exps))))
        self._lw = _ceil_log2(float(np.sum(np.ldexp(counts[_HIST:], exps))))
        self._bounds_from = listed

    @handles(SUBMIT)
    def _submit(self, inbox: Sequence[Message]) -> list[Message]:
        if self._p.bounds == "histogram":
            self._bounds_from_histogram(inbox)
        else:
            self._check_input()
            assert self._p.value_bound is not None and self._p.weight_bound is not None  # set with bounds = "public"
            values = self._input()
            peak = float(np.max(np.abs(values))) if values.size else 0.0
            if peak > self._p.value_bound or self._weight > self._p.weight_bound:
                raise self._reject(
                    f"input exceeds the public bounds (value_bound = {self._p.value_bound:g}, "
                    f"weight_bound = {self._p.weight_bound:g}): not sent"
                )
            self._lv, self._lw = self._p._public_exponents
        values, self._values = self._input(), None  # encrypted below; not held for the rest of the round
        tail = np.concatenate([[math.ldexp(self._weight, -self._lw)], self._tag()])
        # values * 2**-Lv, then the weight and tags, read chunk by chunk (no float64 copy of the update) and
        # streamed into one buffer as the chunks are encrypted (on worker processes for a large update)
        flat = ScaledParts((values, -self._lv), (tail, 0))
        payload = encrypt_frame(self._ctx, FrameKind.UPDATE, self.round, flat)
        del values, flat
        return [self._msg(SUBMIT, payload)]

    @handles(DECRYPT)
    def _decrypt(self, inbox: Sequence[Message]) -> list[Message]:
        dim, p = self._dim, self._p
        layout = update_layout(dim, self._ctx.preset.slots, len(p.roster))
        frame = self._frame_from(inbox, SUM, FrameKind.SUM, len(layout))
        listed = self._contributors(frame.meta, "sum")
        releaser = frame.meta.get("releaser")
        if releaser is not None and (p.release != "aggregator" or releaser not in listed):
            raise self._reject(
                f"the sum names releaser {releaser!r}, which this protocol (release = {p.release!r}) does not allow"
            )
        try:
            flat = decrypt_frame(self._ctx, frame, layout)
        except FrameError as exc:
            raise self._reject(f"bad sum: {exc}") from exc
        self._check_tags(flat[dim + 1:], listed, "sum")
        total = np.ldexp(flat[:dim], self._lv)
        weight = math.ldexp(float(flat[dim]), self._lw)
        self._result = SumResult(total, weight, listed)
        if releaser is None:
            return []
        # rounds released under this key set, as this site knows it: those it saw, and at most one per round
        released = max(p._count_release(self.site_id), self.round + 1)
        if releaser != self.site_id:
            return []
        if released > p.max_released_rounds:
            raise self._reject(
                f"this key set has released {released - 1} rounds, max_released_rounds = {p.max_released_rounds} "
                "(the flooding was calibrated for that many): not releasing; provision new keys"
            )
        released_total, released_weight = p._flood(total, weight, self._lv, self._lw)
        payload = np.float64(released_weight).astype("<f8").tobytes() + released_total.astype("<f8").tobytes()
        return [self._msg(DECRYPT, payload, ViewKind.AGGREGATE)]

    def result(self) -> SumResult | None:
        return self._result


# --- aggregator -------------------------------------------------------------------------

#: aggregator stage -> (the site stage whose ciphertexts it adds up, their frame kind)
_FOLDS = {BOUNDS_SUM: (BOUNDS, FrameKind.BOUNDS), SUM: (SUBMIT, FrameKind.UPDATE)}


#: what loading or adding one chunk may raise (the frame's check, or TenSEAL's)
_ADD_ERRORS: tuple[type[Exception], ...] = (FrameError, *TENSEAL_ERRORS)


@dataclass
class _Fold:
    """The running sum of one stage: the ciphertext chunks added so far and who they came from."""

    kind: FrameKind
    layout: list[int]
    total: list[Any] | None = None
    accepted: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)


class _CkksAggregator(StagedParty, AggregatorParty):
    def __init__(self, proto: CkksSum, ctx: CkksContext, round: int, site_ids: Sequence[str], dim: int) -> None:
        super().__init__()
        if ctx.can_decrypt:
            raise ProtocolError(
                "the aggregator was handed a context with the secret key; it must get the public context only"
            )
        self._p, self._ctx = proto, ctx
        self.round, self.site_ids, self.dim = round, [str(s) for s in site_ids], dim
        unknown = sorted(set(self.site_ids) - set(proto.roster))
        if unknown:
            raise ProtocolError(
                f"CKKS aggregator: sites {unknown} are not in the roster given to setup() {list(proto.roster)}"
            )
        self._bounds_from: list[str] = list(self.site_ids)
        self._contributors: list[str] = []
        self._releaser: str | None = None
        self._result: SumResult | None = None
        slots, n_tags = ctx.preset.slots, len(proto.roster)
        #: the running sums, one per summing stage: each site's ciphertext is added on arrival, then dropped
        self._folds = {
            BOUNDS_SUM: _Fold(FrameKind.BOUNDS, bounds_layout(slots, n_tags)),
            SUM: _Fold(FrameKind.UPDATE, update_layout(dim, slots, n_tags)),
        }
        self._sequence(proto.stages, "aggregator", f"CKKS aggregator (round {round})")

    @property
    def context(self) -> CkksContext:
        """The only key material the aggregator holds (public; for tests and audits)."""
        return self._ctx

    def _refuse(self, site: str, reason: str) -> None:
        if self._p.on_bad_input == "abort":
            raise RoundAborted(f"round {self.round}: site {site!r} sent a bad input ({reason}); on_bad_input = 'abort'")
        self.rejected[site] = reason

    def receive(self, sender: str, messages: Sequence[Message]) -> list[Message]:
        """Streaming: add ``sender``'s bounds or update ciphertext to the running sum now and drop it."""
        stage = self.next_stage
        if stage not in _FOLDS:
            return list(messages)
        self._take(stage, sender, messages)
        return []

    def _take(self, stage: str, sender: str, msgs: Sequence[Message]) -> None:
        """Check one site's messages for aggregator stage ``stage`` and add its ciphertext to that stage's sum."""
        fold = self._folds[stage]
        site_stage = _FOLDS[stage][0]
        if sender in fold.seen:
            raise ProtocolError(
                f"CKKS aggregator (round {self.round}): the messages of site {sender!r} at stage {site_stage!r} were "
                "delivered twice; a carrier delivers the outbox of one step once (routing contract, protocol/base.py)"
            )
        fold.seen.add(sender)
        allowed = self.site_ids if stage == BOUNDS_SUM else self._bounds_from
        if sender in self.rejected:
            return
        if sender not in allowed:
            why = (
                "not a participant of this round" if sender not in self.site_ids
                else f"sent a {site_stage!r} message without taking part in the earlier stage"
            )
            self._refuse(sender, why)
        elif any(m.sender != sender for m in msgs):
            self._refuse(sender, f"handed over a message labelled as sent by {[m.sender for m in msgs]}")
        elif len(msgs) != 1:
            self._refuse(sender, f"sent {len(msgs)} messages at stage {site_stage!r} (one expected)")
        elif msgs[0].stage != site_stage:
            self._refuse(sender, f"sent a {msgs[0].stage!r} message at stage {site_stage!r}")
        else:
            try:
                frame = unpack_frame(
                    msgs[0].payload, kind=fold.kind, fingerprint=self._ctx.fingerprint, round=self.round,
                    n_chunks=len(fold.layout),
                )
                self._add(fold, frame)
            except FrameError as exc:
                self._refuse(sender, str(exc))
            except TENSEAL_ERRORS as exc:  # one site's ciphertext TenSEAL cannot add (mismatched scales/levels)
                self._refuse(sender, f"ciphertext cannot be added to the others ({type(exc).__name__}: {exc})")
            else:
                fold.accepted.append(sender)

    def _add(self, fold: _Fold, frame: Frame) -> None:
        """Add a frame's chunks to the running sum one at a time; all or nothing: if a chunk fails to load or
        add, the chunks already added are subtracted again (CKKS addition is exact modulo q) and the error raised."""
        if fold.total is None:
            fold.total = list(iter_vectors(self._ctx, frame, fold.layout))
            return
        added = 0
        try:
            for vec in iter_vectors(self._ctx, frame, fold.layout):
                fold.total[added].add_(vec)
                added += 1
        except _ADD_ERRORS:
            for i in range(added):
                fold.total[i].sub_(load_vector(self._ctx, frame.chunk(i), fold.layout[i], i))
            raise

    def _finish(self, stage: str, inbox: Sequence[Message]) -> tuple[list[Any], list[str]]:
        """Add what came in the inbox (a carrier that does not stream), then release the stage's sum."""
        groups: dict[str, list[Message]] = {}
        for msg in inbox:
            groups.setdefault(msg.sender, []).append(msg)
        for sender, msgs in sorted(groups.items()):
            self._take(stage, sender, msgs)
        fold = self._folds.pop(stage)
        if fold.total is None:
            raise RoundAborted(
                f"round {self.round}: no valid {fold.kind.name.lower()} ciphertext received; refused: {self.rejected}"
            )
        accepted = sorted(fold.accepted)
        minimum = self._p.min_contributors
        if len(accepted) < minimum:
            raise RoundAborted(
                f"round {self.round}: only {len(accepted)} site(s) {accepted} remain for the "
                f"{fold.kind.name.lower()} sum, fewer than "
                f"min_contributors = {minimum}: the aggregator withholds it (a sum of so few sites exposes them)"
            )
        return fold.total, accepted

    def _send(
        self, stage: str, kind: FrameKind, total: list[Any], meta: dict[str, Any], to: Sequence[str]
    ) -> list[Message]:
        writer = FrameWriter(kind, self._ctx.fingerprint, self.round, len(total), meta)
        for v in total:  # one chunk serialised at a time, straight into the frame
            writer.add(v.serialize())
        payload = writer.finish()
        return [Message(self.round, stage, AGGREGATOR, s, payload, ViewKind.CIPHERTEXT) for s in to]

    @handles(BOUNDS_SUM)
    def _bounds_sum(self, inbox: Sequence[Message]) -> list[Message]:
        total, self._bounds_from = self._finish(BOUNDS_SUM, inbox)
        meta = {"contributors": self._bounds_from}
        return self._send(BOUNDS_SUM, FrameKind.BOUNDS_SUM, total, meta, self._bounds_from)

    @handles(SUM)
    def _sum_stage(self, inbox: Sequence[Message]) -> list[Message]:
        total, self._contributors = self._finish(SUM, inbox)
        self._releaser = min(self._contributors) if self._p.release == "aggregator" else None
        meta = {"contributors": self._contributors, "releaser": self._releaser}
        return self._send(SUM, FrameKind.SUM, total, meta, self._contributors)

    @handles(RELEASE)
    def _release(self, inbox: Sequence[Message]) -> list[Message]:
        mine = [m for m in inbox if m.sender == self._releaser and m.stage == DECRYPT]
        if len(mine) != 1:
            raise RoundAborted(
                f"round {self.round}: the releasing site {self._releaser!r} sent {len(mine)} released sums "
                "(one expected)"
            )
        payload = mine[0].payload
        if len(payload) != 8 * (self.dim + 1):
            raise RoundAborted(
                f"round {self.round}: released sum from {self._releaser!r} has {len(payload)} bytes, "
                f"expected {8 * (self.dim + 1)}"
            )
        arr = np.frombuffer(payload, dtype="<f8")
        self._result = SumResult(arr[1:].astype(np.float64), float(arr[0]), tuple(self._contributors))
        return []

    def result(self) -> SumResult | None:
        return self._result


# --- the protocol -----------------------------------------------------------------------


@dataclass
class CkksSum(SecureSum):
    """CKKS secure sum. Spec keys (``[secure_sum]``): ``kind = "ckks"``, ``preset`` (one of
    :data:`~secure_fl.crypto.ckks_params.PRESETS`), ``release`` (``"sites"`` or ``"aggregator"``),
    ``on_bad_input`` (``"drop"`` or ``"abort"``), ``min_contributors`` (integer >= 2, default 3),
    ``bounds`` (``"histogram"`` or ``"public"``, the latter with ``value_bound`` and
    ``weight_bound``), and for ``release = "aggregator"``: ``mitigation = "flood"``,
    ``statistical_security`` (bits, default 40) and ``max_released_rounds`` (default 100).

    ``noise`` draws the flooding noise: the OS CSPRNG by default; inject
    ``NoiseSource.seeded(rng)`` only in tests.
    """

    preset: str = DEFAULT_PRESET
    release: str = "sites"
    on_bad_input: str = "drop"
    mitigation: str = "flood"
    statistical_security: int = 40
    max_released_rounds: int = 100
    bounds: str = "histogram"
    value_bound: float | None = None
    weight_bound: float | None = None
    noise: NoiseSource | None = field(default=None, repr=False, compare=False)
    min_contributors: int = field(default=3, kw_only=True)

    name: ClassVar[str] = "ckks"
    view_kind: ClassVar[ViewKind] = ViewKind.CIPHERTEXT

    def __post_init__(self) -> None:
        """The one validation of the parameters: :class:`~secure_fl.errors.InvalidParameter` naming the key
        (:meth:`from_params` adds the spec location)."""
        if not isinstance(self.preset, str) or self.preset not in PRESETS:
            raise InvalidParameter("preset", f"expected one of {sorted(PRESETS)}", self.preset)
        self._preset: CkksPreset = get_preset(self.preset)
        allowed_values = (
            ("release", ("sites", "aggregator")),
            ("on_bad_input", ("drop", "abort")),
            ("bounds", ("histogram", "public")),
        )
        for key, allowed in allowed_values:
            if getattr(self, key) not in allowed:
                raise InvalidParameter(key, f"expected one of {list(allowed)}", getattr(self, key))
        _check_mitigation(self.mitigation)
        for key, lo, hi in (("statistical_security", 40, 128), ("max_released_rounds", 1, None),
                            ("min_contributors", 2, None)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidParameter(key, "expected an integer", value)
            if value < lo or (hi is not None and value > hi):
                raise InvalidParameter(key, f"must be >= {lo}" if value < lo else f"must be <= {hi}", value)
        if self.bounds == "public":
            if self.value_bound is None or self.weight_bound is None:
                raise InvalidParameter(
                    "", "bounds = 'public' needs value_bound and weight_bound (public per-site bounds)"
                )
            self._check_bounds(self.value_bound, self.weight_bound)
            self.value_bound, self.weight_bound = float(self.value_bound), float(self.weight_bound)
        elif self.value_bound is not None or self.weight_bound is not None:
            raise InvalidParameter(
                "", f"value_bound and weight_bound apply only with bounds = 'public' (bounds = {self.bounds!r})"
            )
        self._keys: CkksKeys | None = None
        self._secret: CkksContext | None = None
        self._public: CkksContext | None = None
        self._fingerprint = ""
        self._site_ids: tuple[str, ...] = ()
        self._dim = 0
        self._h = 0
        self._public_exponents = (0, 0)
        self._flood_std = 0.0  # scaled units
        self._releases: ReleaseCount | None = None

    # -- configuration -------------------------------------------------------------------

    def use_public_bounds(self, value_bound: float, weight_bound: float) -> None:
        """Switch to public bounds (no histogram stages). Call before :meth:`setup`.

        ``value_bound`` bounds every ``|coordinate|`` of each site's input as handed to the
        secure sum (already weighted), ``weight_bound`` each site's weight; both are public.
        The sum is normalised by ``2**ceil(log2(n_sites * bound))``; a site whose input exceeds
        a bound refuses to send it. E.g. distributed DP: clipped-gradient sum plus noise share.
        """
        if getattr(self, "_site_ids", ()):
            raise ProtocolError("use_public_bounds() must be called before setup(): it removes the bounds stages")
        self._check_bounds(value_bound, weight_bound)
        self.bounds, self.value_bound, self.weight_bound = "public", float(value_bound), float(weight_bound)

    @staticmethod
    def _check_bounds(value_bound: object, weight_bound: object) -> None:
        for key, value in (("value_bound", value_bound), ("weight_bound", weight_bound)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise InvalidParameter(key, "must be > 0 (bounds = 'public' needs a finite public bound)", value)

    @property
    def releases_to_aggregator(self) -> bool:
        return self.release == "aggregator"

    @property
    def parameters(self) -> CkksPreset:
        return self._preset

    @property
    def roster(self) -> tuple[str, ...]:
        """The federation's sites (sorted) given to :meth:`setup`; a site's tag slot is its index here."""
        return self._site_ids

    @property
    def stages(self) -> tuple[Stage, ...]:
        stages = [Stage(SUBMIT, "sites"), Stage(SUM, "aggregator"), Stage(DECRYPT, "sites")]
        if self.bounds == "histogram":
            stages = [Stage(BOUNDS, "sites"), Stage(BOUNDS_SUM, "aggregator")] + stages
        if self.release == "aggregator":
            stages.append(Stage(RELEASE, "aggregator"))
        return tuple(stages)

    @classmethod
    def from_params(cls, params: Mapping[str, Any], where: str) -> CkksSum:
        """Build from a ``[secure_sum]`` table: keys and types are read here, every value is checked by the
        constructor, whose error is re-raised as a :class:`SpecError` naming ``where`` and the key."""
        if "mitigation_bits" in params:
            raise SpecError(
                f"{where}.mitigation_bits: no longer a key: the flooding noise is calibrated to the decryption error "
                "bound and the number of released values (Li, Micciancio, Schultz, Sorrell 2022); set "
                "statistical_security (bits, default 40) and max_released_rounds instead"
            )
        check_keys(params, _SPEC_KEYS, where)
        types: dict[str, type] = {
            "preset": str, "release": str, "on_bad_input": str, "mitigation": str, "bounds": str,
            "statistical_security": int, "max_released_rounds": int, "min_contributors": int,
            "value_bound": float, "weight_bound": float,
        }
        kwargs: dict[str, Any] = {key: get(params, key, typ, where) for key, typ in types.items() if key in params}
        return build(where, lambda: cls(**kwargs))

    # -- keys ------------------------------------------------------------------------------

    def setup(
        self, site_ids: Sequence[str], dim: int, keys: CkksKeys | None = None, context: CkksContext | None = None,
        *, release_log: str | Path | None = None,
    ) -> None:
        """Fix the federation (roster, dimension) and the key material, once per run.

        * ``keys=None, context=None`` (local engine): generate a key set in memory; sites get
          the secret context, the aggregator party only the public one.
        * ``keys``: a key set provisioned elsewhere, same roles.
        * ``context`` (deployment): the party's own context from its kit. A site passes its
          secret context (:func:`~secure_fl.crypto.ckks.load_secret_context`) and this object
          then makes only site parties; the aggregator passes the public context and gets
          only aggregator parties.

        ``release_log``: the file that counts, per key set and site, the sums released under these keys
        (:class:`~secure_fl.protocol.ckks_releases.ReleaseCount`); give it whenever the keys outlive this
        process (a kit's, a provisioned key set's). ``None``: counted in memory.

        Refuses a roster smaller than ``min_contributors`` and, with release to the
        aggregator, a setting whose flooding leaves fewer than :data:`MIN_RELEASE_BITS` bits.
        """
        if keys is not None and context is not None:
            raise ProtocolError(
                "CkksSum.setup: pass either keys (a whole key set) or context (this party's own), not both"
            )
        ids = tuple(sorted(str(s) for s in site_ids))
        if not ids:
            raise ProtocolError("CKKS setup needs at least one site")
        if len(set(ids)) != len(ids):
            raise ProtocolError(f"CKKS setup: site names repeat in {list(site_ids)}")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ProtocolError(f"CKKS setup: dim must be a positive integer, found {dim!r}")
        if len(ids) < self.min_contributors:
            raise SpecError(
                f"[secure_sum].min_contributors = {self.min_contributors} but the federation has {len(ids)} site(s): "
                "no round could ever be released"
            )
        p = self._preset
        h = _h_bits(len(ids))
        noise_bits = math.log2(4 * noise_std(p, len(ids)))
        if self.bounds == "histogram" and p.scale - noise_bits - h < 4:
            raise ProtocolError(
                f"preset {p.name!r} cannot count {len(ids)} sites: scale 2^{p.scale} leaves no room over the noise "
                f"(~2^{noise_bits:.1f})"
            )
        flood = 0.0
        if self.release == "aggregator":
            n_values = (dim + 1) * self.max_released_rounds
            flood = flooding_std(p, len(ids), n_values, self.statistical_security)
            room = p.scale - math.log2(flood)
            if room < MIN_RELEASE_BITS:
                raise SpecError(
                    f"[secure_sum]: release = 'aggregator' floods each released value with noise of std "
                    f"2^{math.log2(flood):.1f} (scaled units; {self.statistical_security}-bit statistical security "
                    f"over {n_values} released values = {dim + 1} per round x max_released_rounds = "
                    f"{self.max_released_rounds}, "
                    f"{len(ids)} sites); preset {p.name!r} (scale 2^{p.scale}) then keeps {room:.1f} bits, "
                    f"need {MIN_RELEASE_BITS}: use preset 'wide', "
                    "fewer max_released_rounds, or release = 'sites'"
                )
        if context is not None:
            if context.preset != p:
                raise ProtocolError(f"context is for preset {context.preset.name!r}, the spec says {p.name!r}")
            secret, public = (context, None) if context.can_decrypt else (None, context)
            fingerprint = context.fingerprint
        else:
            key_set = keys if keys is not None else generate_keys(p)
            if key_set.preset != p:
                raise ProtocolError(f"key set is for preset {key_set.preset.name!r}, the spec says {p.name!r}")
            secret, public, fingerprint = key_set.secret(), key_set.public(), key_set.fingerprint
            self._keys = key_set
        self._secret, self._public, self._fingerprint = secret, public, fingerprint
        self._site_ids, self._dim, self._h, self._flood_std = ids, dim, h, flood
        self._releases = ReleaseCount(fingerprint, release_log)
        if self.bounds == "public":
            assert self.value_bound is not None and self.weight_bound is not None
            self._public_exponents = (_ceil_log2(len(ids) * self.value_bound), _ceil_log2(len(ids) * self.weight_bound))

    def _need_setup(self) -> None:
        if not self._site_ids:
            raise ProtocolError("CkksSum.setup(site_ids, dim) must run before the first round (it provisions the keys)")

    def site(self, site_id: str, round: int, values: np.ndarray, weight: float) -> SiteParty:
        self._need_setup()
        if self._secret is None:
            raise ProtocolError(
                "this CkksSum was set up with the public (aggregator) context: it can make only aggregator parties"
            )
        if str(site_id) not in self._site_ids:
            raise ProtocolError(f"site {site_id!r} is not in the roster given to setup() {list(self._site_ids)}")
        return _CkksSite(self, self._secret, str(site_id), round, values, weight)

    def aggregator(self, round: int, site_ids: Sequence[str], dim: int) -> AggregatorParty:
        self._need_setup()
        if self._public is None:
            raise ProtocolError(
                "this CkksSum was set up with a site's secret context: it can make only site parties, "
                "never the aggregator"
            )
        if dim != self._dim:
            raise ProtocolError(f"round dim {dim} differs from the dim {self._dim} given to setup()")
        return _CkksAggregator(self, self._public, round, site_ids, dim)

    @property
    def fingerprint(self) -> str:
        self._need_setup()
        return self._fingerprint

    # -- release ---------------------------------------------------------------------------

    @property
    def flood_std(self) -> float:
        """Std of the flooding noise, in scaled units (value units: times ``2**(Lv - scale)``)."""
        return self._flood_std

    @property
    def release_precision_bits(self) -> float | None:
        """Bits a released sum keeps relative to its public bound ``2**Lv`` (``None`` unless released)."""
        if self.release != "aggregator" or not self._flood_std:
            return None
        return self._preset.scale - math.log2(self._flood_std)

    def _release_count(self) -> ReleaseCount:
        self._need_setup()
        if self._releases is None:
            raise ProtocolError("CkksSum.setup() did not finish: no release count for this key set")
        return self._releases

    def _count_release(self, site_id: str) -> int:
        """One more released sum seen by ``site_id`` under this key set (on disk, with a release log)."""
        return self._release_count().add(site_id)

    def released_rounds(self, site_id: str) -> int:
        """Sums released under this key set that ``site_id`` has counted (all runs, with a release log)."""
        return self._release_count().seen(site_id)

    def _flood(self, total: np.ndarray, weight: float, lv: int, lw: int) -> tuple[np.ndarray, float]:
        """Noise flooding (LMSS22) before a decrypted sum leaves the key holders."""
        if self.noise is None:
            self.noise = NoiseSource.secure()
        step = self._flood_std * 2.0 ** -self._preset.scale  # normalised units
        noise = self.noise.normal(1.0, total.size + 1)
        return total + noise[1:] * math.ldexp(step, lv), float(weight + noise[0] * math.ldexp(step, lw))


def _check_mitigation(value: Any) -> None:
    if value == "round":
        raise InvalidParameter(
            "mitigation",
            "'round' was removed: rounding to a grid is deterministic, so what is released still depends on the "
            "decryption error and no IND-CPA^D proof covers it (Li-Micciancio key recovery); use 'flood'",
        )
    if value != "flood":
        raise InvalidParameter("mitigation", "expected one of ['flood']", value)
