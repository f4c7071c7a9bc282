"""Secure aggregation by pairwise masking with dropout recovery: SecAgg and SecAgg+.

SecAgg is the semi-honest protocol of Bonawitz, Ivanov, Kreuter, Marcedone, McMahan,
Patel, Ramage, Segal, Seth, "Practical Secure Aggregation for Privacy-Preserving Machine
Learning", CCS 2017 (§4, Fig. 4); SecAgg+ is its sparse-graph variant of Bell, Bonawitz,
Gascón, Lepoint, Raykova, "Secure Single-Server Aggregation with (Poly)Logarithmic
Overhead", CCS 2020. Every site u holds a quantized vector x_u (see
:mod:`secure_fl.crypto.quantize`) and sends

    y_u = x_u + PRG(b_u) + Σ_{v ∈ P_u, u < v} PRG(s_uv) − Σ_{v ∈ P_u, v < u} PRG(s_uv)   (mod 2^k)

where b_u is a fresh self-mask seed, s_uv = HKDF(X25519(s_sk_u, s_pk_v)) a pairwise seed
and P_u the neighbours of u that completed key sharing. Pairwise masks cancel in the sum;
the aggregator removes self masks of survivors (reconstructing b_u from t Shamir shares)
and the dangling pairwise masks of sites that dropped after sharing keys (reconstructing
s_sk_v). *Double masking*: an honest site reveals, for each peer, either its share of b
(peer survived) or its share of s_sk (peer dropped), never both, so a site wrongly
declared dropped still hides its input behind PRG(b_u).

Stages (site stages alternate with aggregator stages, per :mod:`secure_fl.protocol.base`):

1. ``advertise_keys`` (sites): fresh X25519 pairs (c for share encryption, s for masks) and
   a SHA-256 commitment to b_u. 2. ``route_keys`` (aggregator): U1 = well-formed adverts;
   each site gets its neighbours' keys. 3. ``share_keys`` (sites): t-of-(|N(u)|+1) Shamir
   shares of b_u and s_sk_u, AES-GCM-sealed per neighbour (associated data: protocol,
   round, sender, receiver). 4. ``route_shares`` (aggregator): U2 = sites whose share set is
   complete; relays the ciphertexts and tells each site its peers P_u = N(u) ∩ U2.
5. ``masked_input`` (sites): y_u, plus the peers whose share ciphertexts failed
   authentication. 6. ``request_unmask`` (aggregator): U3 = well-formed masked inputs from
   sites nobody reported; asks each survivor for the right kind of share per neighbour.
7. ``unmask`` (sites). 8. ``release`` (aggregator): reconstructs, checks every secret
   against its public commitment (b_u against its hash, s_sk_u against s_pk_u), unmasks
   and decodes the sum.

Thresholds: with ``threshold`` (an absolute integer >= 2) or ``threshold_fraction`` (of the
n sites given to :meth:`SecAggSum.setup` for SecAgg, of the neighbourhood size k + 1 for
SecAgg+). Whenever fewer than t parties remain where t are needed, the aggregator raises
:class:`~secure_fl.errors.RoundAborted`, records :attr:`SecAggAggregator.abort_reason`
and releases nothing.

Threat model (semi-honest): the aggregator and up to t − 1 sites may collude and pool what
they saw; they learn nothing about the other sites' inputs beyond the sum of the surviving
sites (Bonawitz et al., Theorem 6.3; Bell et al., Theorem 3.6 for SecAgg+, which holds with
high probability over the random graph). Channels between each site and the aggregator are
assumed authenticated (TLS): masked inputs carry no MAC, so a forged masked input yields a
wrong sum, not a leak. An actively malicious aggregator that lies about dropouts needs the
signed variant of Bonawitz et al. (§6.2), not implemented here.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..crypto import aead, kex, prg, shamir
from ..crypto.kdf import hkdf_sha256
from ..crypto.quantize import IntegerNoise, Quantizer, from_wire, to_wire
from ..errors import ProtocolError, RoundAborted, SiteRejected, SpecError
from ..speccheck import check_keys, get, in_range
from . import secagg_wire as wire
from .base import AGGREGATOR, AggregatorParty, Message, SecureSum, SiteParty, Stage, SumResult, ViewKind
from .secagg_graph import complete_graph, default_degree, graph_seed, harary_graph

__all__ = [
    "ADVERTISE_KEYS",
    "ROUTE_KEYS",
    "SHARE_KEYS",
    "ROUTE_SHARES",
    "MASKED_INPUT",
    "REQUEST_UNMASK",
    "UNMASK",
    "RELEASE",
    "SecAggSum",
    "SecAggPlusSum",
    "SecAggSite",
    "SecAggAggregator",
    "seed_commitment",
]

ADVERTISE_KEYS = "advertise_keys"
ROUTE_KEYS = "route_keys"
SHARE_KEYS = "share_keys"
ROUTE_SHARES = "route_shares"
MASKED_INPUT = "masked_input"
REQUEST_UNMASK = "request_unmask"
UNMASK = "unmask"
RELEASE = "release"

_STAGES = (
    Stage(ADVERTISE_KEYS, "sites"),
    Stage(ROUTE_KEYS, "aggregator"),
    Stage(SHARE_KEYS, "sites"),
    Stage(ROUTE_SHARES, "aggregator"),
    Stage(MASKED_INPUT, "sites"),
    Stage(REQUEST_UNMASK, "aggregator"),
    Stage(UNMASK, "sites"),
    Stage(RELEASE, "aggregator"),
)
_SITE_STAGES = tuple(s.name for s in _STAGES if s.actor == "sites")
_AGG_STAGES = tuple(s.name for s in _STAGES if s.actor == "aggregator")

_SECRET = 32  # bytes of b_u and of s_sk_u
_SHARE = shamir.share_bytes(_SECRET)
_SEALED = aead.OVERHEAD + 2 * _SHARE


def seed_commitment(seed: bytes) -> bytes:
    """SHA-256 commitment to a self-mask seed (hiding: the seed is 256 uniform bits)."""
    return hashlib.sha256(b"secure-fl/secagg/self-seed-commitment/v1" + seed).digest()


def _share_key(c_sk: bytes, peer_c_pk: bytes, protocol: str, round: int) -> bytes:
    return hkdf_sha256(kex.exchange(c_sk, peer_c_pk), info=aead.associated_data("secure-fl/secagg/share-key/v1", protocol, round))


def _share_ad(protocol: str, round: int, sender: str, receiver: str) -> bytes:
    return aead.associated_data("secure-fl/secagg/share/v1", protocol, round, sender, receiver)


def _pair_seed(s_sk: bytes, peer_s_pk: bytes, round: int, a: str, b: str) -> bytes:
    lo, hi = sorted((a, b))
    return hkdf_sha256(kex.exchange(s_sk, peer_s_pk), info=aead.associated_data("secure-fl/secagg/pairwise-mask/v1", round, lo, hi))


def _self_seed(b: bytes, round: int) -> bytes:
    return hkdf_sha256(b, info=aead.associated_data("secure-fl/secagg/self-mask/v1", round))


# --------------------------------------------------------------------------- the factory


@dataclass
class SecAggSum(SecureSum):
    """SecAgg (complete graph). Build from a spec with :meth:`from_params`.

    ``rng`` drives stochastic rounding only (noise, not secrets): leave it ``None`` for an
    OS-seeded generator, seed it in tests. ``integer_noise``/``noise_bound`` are the
    distributed-DP hook of :mod:`secure_fl.crypto.quantize` (set by the DP layer).
    """

    bits: int = 16
    clip_range: float = 1.0
    max_weight: int = 1
    threshold: int | None = None
    threshold_fraction: float | None = None
    rng: np.random.Generator | None = None
    integer_noise: IntegerNoise | None = None
    noise_bound: int = 0
    roster: tuple[str, ...] = field(init=False, default=())
    dim: int = field(init=False, default=-1)
    quantizer: Quantizer | None = field(init=False, default=None)

    _KIND = "secagg"

    def __post_init__(self) -> None:
        self.name = self._KIND
        self.view_kind = ViewKind.MASKED
        self.releases_to_aggregator = True
        if (self.threshold is None) == (self.threshold_fraction is None):
            raise ValueError("set exactly one of threshold (an integer >= 2) and threshold_fraction (in (0, 1])")
        if self.threshold is not None and (isinstance(self.threshold, bool) or not isinstance(self.threshold, int) or self.threshold < 2):
            raise ValueError(f"threshold must be an integer >= 2, got {self.threshold!r}")
        if self.threshold_fraction is not None and not 0 < self.threshold_fraction <= 1:
            raise ValueError(f"threshold_fraction must be in (0, 1], got {self.threshold_fraction!r}")
        # validates bits, clip_range and max_weight early (with one site)
        Quantizer(self.bits, self.clip_range, self.max_weight, 1, self.noise_bound)
        if self.rng is None:
            self.rng = np.random.default_rng()

    def set_integer_noise(self, noise: IntegerNoise | None, bound: int) -> None:
        """Distributed-DP hook: each site adds ``noise(dim, rng)`` (integers, ``|z| <= bound``,
        in units of the quantization step ``2 clip_range / (2^bits - 1)``) to its quantized
        update before masking, e.g. its share of a distributed discrete Gaussian (Kairouz,
        Liu, Steinke, ICML 2021). Call before :meth:`setup`: the modulus makes room for the bound.
        """
        if self.quantizer is not None:
            raise ProtocolError(f"{self.name}: set_integer_noise must be called before setup(): the modulus is already fixed")
        if isinstance(bound, bool) or not isinstance(bound, int) or bound < 0:
            raise ValueError(f"noise bound must be an integer >= 0, got {bound!r}")
        Quantizer(self.bits, self.clip_range, self.max_weight, 1, bound)  # refuses a bound that cannot fit
        self.integer_noise, self.noise_bound = noise, bound

    # ---- spec
    _KEYS = ["kind", "threshold", "threshold_fraction", "bits", "clip_range", "max_weight"]

    @classmethod
    def _common_params(cls, params: Mapping[str, Any], where: str) -> dict[str, Any]:
        check_keys(params, cls._KEYS, where)
        has_t, has_f = "threshold" in params, "threshold_fraction" in params
        if has_t == has_f:
            raise SpecError(
                f"{where}: set exactly one of 'threshold' (an integer >= 2: shares needed to reconstruct) "
                f"and 'threshold_fraction' (in (0, 1]: that fraction of {cls._fraction_of()}, rounded up); found "
                + ("both" if has_t else "neither")
            )
        out: dict[str, Any] = {
            "threshold": get(params, "threshold", int, where, None, in_range(2)),
            "threshold_fraction": get(params, "threshold_fraction", float, where, None, in_range(0, 1, lo_open=True)),
            "bits": get(params, "bits", int, where, 16, in_range(1, 32)),
            "clip_range": get(params, "clip_range", float, where, check=_positive_finite),
            "max_weight": get(params, "max_weight", int, where, check=in_range(1)),
        }
        try:
            Quantizer(out["bits"], out["clip_range"], out["max_weight"], 1)
        except ValueError as exc:
            raise SpecError(f"{where}: {exc}") from exc
        return out

    @classmethod
    def _fraction_of(cls) -> str:
        return "the sites in the run"

    @classmethod
    def from_params(cls, params: Mapping[str, Any], where: str) -> "SecAggSum":
        return cls(**cls._common_params(params, where))

    @property
    def stages(self) -> tuple[Stage, ...]:
        return _STAGES

    # ---- per run
    def setup(self, site_ids: Sequence[str], dim: int) -> None:
        """Fix the roster (n), the dimension, the threshold t and the modulus 2^k for the run."""
        ids = list(site_ids)
        if len(set(ids)) != len(ids):
            raise ProtocolError(f"{self.name}: duplicate site ids in {ids}")
        if any(not isinstance(i, str) or not i or i == AGGREGATOR for i in ids):
            raise ProtocolError(f"{self.name}: site ids must be non-empty strings other than {AGGREGATOR!r}, got {ids}")
        if not isinstance(dim, int) or dim < 1:
            raise ProtocolError(f"{self.name}: dim must be a positive integer, got {dim!r}")
        self.roster, self.dim = tuple(ids), dim
        try:
            self.quantizer = Quantizer(self.bits, self.clip_range, self.max_weight, len(ids), self.noise_bound)
        except ValueError as exc:
            raise ProtocolError(f"{self.name}: {exc}") from exc
        t, holders = self.threshold_value, self.holders_per_site
        if t > holders:
            raise ProtocolError(
                f"{self.name}: threshold t = {t} exceeds the {holders} share holders per site "
                f"({len(ids)} sites{self._holders_note()}); lower threshold/threshold_fraction or add sites"
            )

    def _holders_note(self) -> str:
        return ""

    @property
    def n_sites(self) -> int:
        return len(self.roster)

    @property
    def holders_per_site(self) -> int:
        """Parties holding a share of one site's secrets (itself included) when nobody drops."""
        return self.n_sites

    @property
    def threshold_value(self) -> int:
        """t: shares needed to reconstruct a secret; also the fewest survivors a stage accepts."""
        if self.threshold is not None:
            return self.threshold
        assert self.threshold_fraction is not None
        return max(2, math.ceil(self.threshold_fraction * self.holders_per_site - 1e-9))

    def neighbours(self, sites: Sequence[str], round: int, keys: Mapping[str, tuple[bytes, bytes]]) -> dict[str, frozenset[str]]:
        """The masking graph on the sites that advertised keys."""
        return complete_graph(sites)

    @property
    def max_neighbours(self) -> int:
        return max(self.n_sites - 1, 0)

    def _require_setup(self) -> Quantizer:
        if self.quantizer is None:
            raise ProtocolError(f"{self.name}: setup(site_ids, dim) must be called before a round (it fixes n, t and the modulus)")
        return self.quantizer

    def site(self, site_id: str, round: int, values: np.ndarray, weight: float) -> "SecAggSite":
        self._require_setup()
        if site_id not in self.roster:
            raise ProtocolError(f"{self.name}: site {site_id!r} is not in the roster given to setup()")
        assert self.rng is not None
        return SecAggSite(self, site_id, round, values, weight, self.rng.spawn(1)[0])

    def aggregator(self, round: int, site_ids: Sequence[str], dim: int) -> "SecAggAggregator":
        self._require_setup()
        if dim != self.dim:
            raise ProtocolError(f"{self.name}: round dim {dim} differs from the dim {self.dim} given to setup()")
        unknown = sorted(set(site_ids) - set(self.roster))
        if unknown:
            raise ProtocolError(f"{self.name}: sites {unknown} are not in the roster given to setup()")
        return SecAggAggregator(self, round, site_ids)


@dataclass
class SecAggPlusSum(SecAggSum):
    """SecAgg+ (Bell et al. 2020): masks and shares only along a random degree-k graph."""

    degree: int | None = None

    _KIND = "secagg-plus"
    _KEYS = SecAggSum._KEYS + ["degree"]

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.degree is not None and (isinstance(self.degree, bool) or not isinstance(self.degree, int) or self.degree < 2 or self.degree % 2):
            raise ValueError(f"degree must be an even integer >= 2, got {self.degree!r}")

    @classmethod
    def _fraction_of(cls) -> str:
        return "the neighbourhood size degree + 1"

    @classmethod
    def from_params(cls, params: Mapping[str, Any], where: str) -> "SecAggPlusSum":
        common = cls._common_params(params, where)

        def even(v: int) -> str | None:
            return None if v >= 2 and v % 2 == 0 else "must be an even integer >= 2 (Harary graph degree)"

        return cls(**common, degree=get(params, "degree", int, where, None, even))

    @property
    def effective_degree(self) -> int:
        n = self.n_sites
        k = self.degree if self.degree is not None else default_degree(n)
        return min(k, max(n - 1, 0))

    @property
    def holders_per_site(self) -> int:
        return self.effective_degree + 1

    @property
    def max_neighbours(self) -> int:
        return self.effective_degree

    def _holders_note(self) -> str:
        return f", neighbourhood degree {self.effective_degree}"

    def neighbours(self, sites: Sequence[str], round: int, keys: Mapping[str, tuple[bytes, bytes]]) -> dict[str, frozenset[str]]:
        k = self.effective_degree
        if k < 2 or k >= len(sites) - 1:
            return complete_graph(sites)
        seed = graph_seed(round, [(s, *keys[s]) for s in sites])
        return harary_graph(sites, k, seed)


def _positive_finite(v: float) -> str | None:
    return None if math.isfinite(v) and v > 0 else "must be a finite number > 0 (a zero clipping range cannot be quantized)"


# --------------------------------------------------------------------------- the site


class SecAggSite(SiteParty):
    """One site's side of a SecAgg(+) round. Holds its secrets; reveals at most one share kind per peer."""

    def __init__(self, proto: SecAggSum, site_id: str, round: int, values: np.ndarray, weight: float, rng: np.random.Generator) -> None:
        self.proto, self.site_id, self.round = proto, site_id, round
        self._values: np.ndarray | None = values
        self._weight, self._rng = weight, rng
        self._next = 0
        self._t = proto.threshold_value
        self._quantizer = proto._require_setup()
        self._encoded: np.ndarray | None = None
        self._neighbour_keys: dict[str, tuple[bytes, bytes, bytes]] = {}
        self._peers: list[str] = []
        self._held: dict[str, tuple[bytes, bytes]] = {}  # owner -> (share of b, share of s_sk)
        self._revealed: dict[str, int] = {}  # owner -> share kind revealed to the aggregator
        #: shares received from neighbours that failed checks, with the reason
        self.refused: dict[str, str] = {}

    def _reject(self, reason: str) -> SiteRejected:
        return SiteRejected(self.site_id, reason)

    def step(self, stage: str, inbox: Sequence[Message]) -> list[Message]:
        expected = _SITE_STAGES[self._next] if self._next < len(_SITE_STAGES) else None
        if stage != expected:
            raise self._reject(f"stage {stage!r} out of order: expected {expected!r}")
        self._next += 1
        handler = {
            ADVERTISE_KEYS: self._advertise,
            SHARE_KEYS: self._share_keys,
            MASKED_INPUT: self._masked_input,
            UNMASK: self._unmask,
        }[stage]
        return handler(inbox)

    def _from_aggregator(self, inbox: Sequence[Message], stage: str) -> Message:
        found = [
            m
            for m in inbox
            if m.sender == AGGREGATOR and m.stage == stage and m.round == self.round and m.receiver == self.site_id and m.kind is ViewKind.PUBLIC
        ]
        if len(found) != 1:
            raise self._reject(f"expected one {stage!r} message from the aggregator for round {self.round}, got {len(found)}")
        return found[0]

    def _msg(self, stage: str, payload: bytes, kind: ViewKind) -> Message:
        return Message(self.round, stage, self.site_id, AGGREGATOR, payload, kind)

    # 1. advertise keys
    def _advertise(self, inbox: Sequence[Message]) -> list[Message]:
        try:
            self._encoded = self._quantizer.encode(self._values, self._weight, self._rng, self.proto.integer_noise)
        except ValueError as exc:
            raise self._reject(f"input refused by the quantizer: {exc}") from exc
        self._values = None  # only the quantized vector is kept
        if self._encoded.shape[0] != self.proto.dim + 1:
            raise self._reject(f"update has {self._encoded.shape[0] - 1} values, the run expects dim = {self.proto.dim}")
        self._c, self._s = kex.generate_keypair(), kex.generate_keypair()
        self._b = os.urandom(_SECRET)
        payload = wire.encode_advertise(self._c.public, self._s.public, seed_commitment(self._b))
        return [self._msg(ADVERTISE_KEYS, payload, ViewKind.PUBLIC)]

    # 3. share keys
    def _share_keys(self, inbox: Sequence[Message]) -> list[Message]:
        msg = self._from_aggregator(inbox, ROUTE_KEYS)
        try:
            entries = wire.decode_keys(msg.payload)
        except ValueError as exc:
            raise self._reject(str(exc)) from exc
        ids = [e[0] for e in entries]
        if len(set(ids)) != len(ids) or self.site_id in ids:
            raise self._reject("key list repeats a site or lists this site as its own neighbour")
        if not set(ids) <= set(self.proto.roster):
            raise self._reject(f"key list names sites outside the roster: {sorted(set(ids) - set(self.proto.roster))}")
        if len(ids) > self.proto.max_neighbours:
            raise self._reject(f"key list has {len(ids)} neighbours, more than the {self.proto.max_neighbours} allowed")
        keys = [k for e in entries for k in (e[1], e[2])] + [self._c.public, self._s.public]
        if len(set(keys)) != len(keys):
            raise self._reject("key list repeats a public key (or replays this site's own)")
        if len(ids) + 1 < self._t:
            raise self._reject(f"only {len(ids)} neighbours advertised keys: with this site {len(ids) + 1} < threshold t = {self._t}")
        self._neighbour_keys = {i: (c, s, h) for i, c, s, h in entries}
        holders = sorted([self.site_id, *ids])
        b_shares = shamir.split(self._b, self._t, len(holders))
        s_shares = shamir.split(self._s.private, self._t, len(holders))
        out = []
        for holder, bs, ss in zip(holders, b_shares, s_shares):
            if holder == self.site_id:
                self._held[holder] = (bs.to_bytes(), ss.to_bytes())
                continue
            key = _share_key(self._c.private, self._neighbour_keys[holder][0], self.proto.name, self.round)
            ad = _share_ad(self.proto.name, self.round, self.site_id, holder)
            sealed = aead.seal(key, bs.to_bytes() + ss.to_bytes(), ad)
            out.append(self._msg(SHARE_KEYS, wire.encode_relay(holder, sealed), ViewKind.CIPHERTEXT))
        return out

    # 5. masked input
    def _masked_input(self, inbox: Sequence[Message]) -> list[Message]:
        assert self._encoded is not None
        msg = self._from_aggregator(inbox, ROUTE_SHARES)
        try:
            peers = wire.decode_ids(msg.payload, "peer list")
        except ValueError as exc:
            raise self._reject(str(exc)) from exc
        if len(set(peers)) != len(peers) or not set(peers) <= set(self._neighbour_keys):
            raise self._reject("peer list repeats a site or names a site that is not a neighbour")
        if len(peers) + 1 < self._t:
            raise self._reject(f"only {len(peers)} neighbours shared keys: {len(peers) + 1} < threshold t = {self._t}; refusing to send a masked input")
        self._peers = peers
        by_origin: dict[str, list[tuple[Message, bytes]]] = {}
        for m in inbox:
            if m.kind is not ViewKind.CIPHERTEXT:
                continue
            try:
                origin, sealed = wire.decode_relay(m.payload)
            except ValueError:
                continue  # no origin to blame: the missing share is reported below
            by_origin.setdefault(origin, []).append((m, sealed))
        for origin in sorted(set(by_origin) - set(peers)):
            self.refused[origin] = "a share arrived from a site that is not a peer of this round"
        for peer in peers:
            got = by_origin.get(peer, [])
            if len(got) != 1:
                self.refused[peer] = "no share ciphertext arrived" if not got else f"{len(got)} share ciphertexts arrived (replay)"
                continue
            m, sealed = got[0]
            if m.round != self.round or m.stage != ROUTE_SHARES or m.receiver != self.site_id:
                self.refused[peer] = f"share message labelled round {m.round}, stage {m.stage!r}, receiver {m.receiver!r}"
                continue
            key = _share_key(self._c.private, self._neighbour_keys[peer][0], self.proto.name, self.round)
            try:
                plain = aead.open_sealed(key, sealed, _share_ad(self.proto.name, self.round, peer, self.site_id))
            except aead.AuthenticationError as exc:
                self.refused[peer] = str(exc)
                continue
            if len(plain) != 2 * _SHARE:
                self.refused[peer] = f"decrypted share is {len(plain)} bytes, expected {2 * _SHARE}"
                continue
            self._held[peer] = (plain[:_SHARE], plain[_SHARE:])
        q = self._quantizer
        dim = self.proto.dim + 1
        y = self._encoded.copy()
        y += prg.expand_mask(_self_seed(self._b, self.round), dim, q.modulus_bits)
        for peer in peers:  # masks depend only on public keys: a refused share does not change them
            mask = prg.expand_mask(_pair_seed(self._s.private, self._neighbour_keys[peer][1], self.round, self.site_id, peer), dim, q.modulus_bits)
            if self.site_id < peer:
                y += mask
            else:
                y -= mask
        y &= q.dtype.type(q.modulus_mask)
        self._encoded = None  # the unmasked vector is no longer needed
        payload = wire.encode_masked(sorted(self.refused.items()), to_wire(y, q.modulus_bits))
        return [self._msg(MASKED_INPUT, payload, ViewKind.MASKED)]

    # 7. unmask
    def _unmask(self, inbox: Sequence[Message]) -> list[Message]:
        msg = self._from_aggregator(inbox, REQUEST_UNMASK)
        try:
            survivors, dropped = wire.decode_request(msg.payload)
        except ValueError as exc:
            raise self._reject(str(exc)) from exc
        s_set, d_set = set(survivors), set(dropped)
        if len(s_set) != len(survivors) or len(d_set) != len(dropped) or s_set & d_set:
            raise self._reject("unmask request lists a site twice or as both survivor and dropped")
        if self.site_id not in s_set:
            raise self._reject("unmask request does not list this site as a survivor")
        allowed = set(self._peers) | {self.site_id}
        if not (s_set | d_set) <= allowed:
            raise self._reject(f"unmask request names sites this site did not mask with: {sorted((s_set | d_set) - allowed)}")
        if self.site_id in d_set:
            raise self._reject("unmask request asks for this site's own mask key")
        if len(s_set) < self._t:
            raise self._reject(f"only {len(s_set)} survivors in this neighbourhood < threshold t = {self._t}; refusing to unmask")
        entries = []
        for owner in sorted(s_set | d_set):
            kind = wire.SHARE_OF_SEED if owner in s_set else wire.SHARE_OF_KEY
            if self._revealed.get(owner, kind) != kind:  # never both kinds for one peer
                raise self._reject(f"asked for both kinds of share of site {owner!r}")
            if owner not in self._held:
                continue  # its share never arrived or was refused
            self._revealed[owner] = kind
            entries.append((owner, kind, self._held[owner][kind]))
        return [self._msg(UNMASK, wire.encode_unmask(entries), ViewKind.PUBLIC)]


# --------------------------------------------------------------------------- the aggregator


class SecAggAggregator(AggregatorParty):
    """The aggregator of one SecAgg(+) round: routes, tracks survivors, unmasks the sum."""

    def __init__(self, proto: SecAggSum, round: int, site_ids: Sequence[str]) -> None:
        super().__init__()
        self.proto, self.round = proto, round
        self.site_ids = list(dict.fromkeys(site_ids))
        self.t = proto.threshold_value
        self.quantizer = proto._require_setup()
        self.dim = proto.dim + 1
        self.abort_reason: str | None = None
        #: observations that did not drop anyone (ignored stray messages, bad shares)
        self.notes: list[str] = []
        #: the sets of Bonawitz et al.: U1 advertised, U2 shared, U3 masked (and not reported), U4 unmasked
        self.u1: list[str] = []
        self.u2: list[str] = []
        self.u3: list[str] = []
        self.u4: list[str] = []
        self._next = 0
        self._keys: dict[str, tuple[bytes, bytes, bytes]] = {}
        self._graph: dict[str, frozenset[str]] = {}
        self._relay: dict[str, dict[str, bytes]] = {}
        self._peers: dict[str, frozenset[str]] = {}
        self._masked: dict[str, np.ndarray] = {}
        self._total: np.ndarray | None = None
        self._result: SumResult | None = None
        #: the unmasked slot sum modulo 2^k (quantized values then the weight), after release
        self.integer_sum: np.ndarray | None = None

    # ---- bookkeeping
    def _abort(self, reason: str) -> RoundAborted:
        self.abort_reason = reason
        self._masked.clear()
        self._total = None
        return RoundAborted(f"{self.proto.name} round {self.round} aborted: {reason}")

    def _drop(self, site: str, reason: str) -> None:
        self.rejected.setdefault(site, reason)

    def _collect(self, inbox: Sequence[Message], stage: str, allowed: Sequence[str], single: bool = True) -> dict[str, list[Message]]:
        allowed_set = set(allowed)
        out: dict[str, list[Message]] = {}
        for m in inbox:
            if m.receiver != AGGREGATOR:
                self.notes.append(f"ignored a message from {m.sender!r} addressed to {m.receiver!r}")
            elif m.round != self.round or m.stage != stage:
                self.notes.append(f"ignored a message from {m.sender!r} for round {m.round}, stage {m.stage!r} (replayed or out of order)")
            elif m.sender not in allowed_set:
                if m.sender not in self.rejected:
                    self.notes.append(f"ignored a {stage!r} message from {m.sender!r}, not a live participant of this round")
            else:
                out.setdefault(m.sender, []).append(m)
        if single:
            for s in list(out):
                if len(out[s]) > 1:
                    self._drop(s, f"sent {len(out[s])} messages at stage {stage!r}")
                    del out[s]
        return out

    def _require(self, count: int, what: str) -> None:
        if count < self.t:
            raise self._abort(f"{what}: {count} < threshold t = {self.t}")

    def step(self, stage: str, inbox: Sequence[Message]) -> list[Message]:
        if self.abort_reason is not None:
            raise RoundAborted(f"{self.proto.name} round {self.round} aborted earlier: {self.abort_reason}")
        expected = _AGG_STAGES[self._next] if self._next < len(_AGG_STAGES) else None
        if stage != expected:
            raise ProtocolError(f"{self.proto.name} aggregator: stage {stage!r} out of order, expected {expected!r}")
        self._next += 1
        handler = {ROUTE_KEYS: self._route_keys, ROUTE_SHARES: self._route_shares, REQUEST_UNMASK: self._request_unmask, RELEASE: self._release}[stage]
        return handler(inbox)

    def _send(self, stage: str, receiver: str, payload: bytes, kind: ViewKind) -> Message:
        return Message(self.round, stage, AGGREGATOR, receiver, payload, kind)

    # 2. route keys
    def _route_keys(self, inbox: Sequence[Message]) -> list[Message]:
        got = self._collect(inbox, ADVERTISE_KEYS, self.site_ids)
        seen_keys: dict[bytes, str] = {}
        for site in sorted(got):
            try:
                c, s, h = wire.decode_advertise(got[site][0].payload)
            except ValueError as exc:
                self._drop(site, str(exc))
                continue
            clash = seen_keys.get(c) or seen_keys.get(s)
            if clash or c == s:
                self._drop(site, f"advertised a public key already used by {clash or site!r}")
                continue
            seen_keys[c] = seen_keys[s] = site
            self._keys[site] = (c, s, h)
        self.u1 = sorted(self._keys)
        self._require(len(self.u1), "sites that advertised keys")
        self._graph = self.proto.neighbours(self.u1, self.round, {u: self._keys[u][:2] for u in self.u1})
        out = []
        for u in self.u1:
            entries = [(v, *self._keys[v]) for v in sorted(self._graph[u])]
            out.append(self._send(ROUTE_KEYS, u, wire.encode_keys(entries), ViewKind.PUBLIC))
        return out

    # 4. route shares
    def _route_shares(self, inbox: Sequence[Message]) -> list[Message]:
        got = self._collect(inbox, SHARE_KEYS, self.u1, single=False)
        for u in sorted(got):
            envelopes: dict[str, bytes] = {}
            problem = None
            for m in got[u]:
                try:
                    receiver, sealed = wire.decode_relay(m.payload)
                except ValueError as exc:
                    problem = str(exc)
                    break
                if receiver not in self._graph[u]:
                    problem = f"sent a share to {receiver!r}, not one of its neighbours"
                elif receiver in envelopes:
                    problem = f"sent two shares to {receiver!r}"
                elif len(sealed) != _SEALED:
                    problem = f"its share for {receiver!r} is {len(sealed)} bytes, expected {_SEALED} (truncated or padded)"
                if problem:
                    break
                envelopes[receiver] = sealed
            if problem is None and set(envelopes) != set(self._graph[u]):
                problem = f"sent no share to {sorted(set(self._graph[u]) - set(envelopes))}"
            if problem is not None:
                self._drop(u, problem)
                continue
            self._relay[u] = envelopes
        self.u2 = sorted(self._relay)
        self._require(len(self.u2), "sites that shared keys")
        u2 = set(self.u2)
        out = []
        for v in self.u2:
            self._peers[v] = self._graph[v] & u2
            out.append(self._send(ROUTE_SHARES, v, wire.encode_ids(sorted(self._peers[v])), ViewKind.PUBLIC))
        for u in self.u2:
            for v, sealed in sorted(self._relay[u].items()):
                if v in u2:
                    out.append(self._send(ROUTE_SHARES, v, wire.encode_relay(u, sealed), ViewKind.CIPHERTEXT))
        self._relay.clear()
        return out

    # 6. request unmask
    def _request_unmask(self, inbox: Sequence[Message]) -> list[Message]:
        got = self._collect(inbox, MASKED_INPUT, self.u2)
        q = self.quantizer
        reported: dict[str, str] = {}
        for v in sorted(got):
            try:
                refused, vector = wire.decode_masked(got[v][0].payload)
                self._masked[v] = from_wire(vector, q.modulus_bits, self.dim)
            except ValueError as exc:
                self._drop(v, f"malformed masked input: {exc}")
                continue
            for peer, reason in refused:
                if peer in self._peers[v]:
                    reported.setdefault(peer, f"its share ciphertext was refused by {v!r}: {reason}")
                else:
                    self.notes.append(f"{v!r} refused a share from {peer!r}, not its peer: {reason}")
        for peer, reason in reported.items():
            self._drop(peer, reason)
            self._masked.pop(peer, None)
        self.u3 = sorted(self._masked)
        self._require(len(self.u3), "sites with an accepted masked input")
        self._total = np.zeros(self.dim, dtype=q.dtype)  # fold the inputs now: keep one vector, not n
        for v in self.u3:
            self._total += self._masked.pop(v)
        u3 = set(self.u3)
        # every survivor's self-mask seed and every dropped peer's mask key must be recoverable
        for v in self.u3:
            holders = len((self._peers[v] | {v}) & u3)
            if holders < self.t:
                raise self._abort(f"site {v!r} has {holders} surviving share holders < threshold t = {self.t}")
        dropped = set(self.u2) - u3
        for d in sorted(dropped):
            if self._peers[d] & u3 and len(self._peers[d] & u3) < self.t:
                raise self._abort(f"dropped site {d!r} has {len(self._peers[d] & u3)} surviving share holders < threshold t = {self.t}")
        out = []
        for v in self.u3:
            survivors = sorted((self._peers[v] | {v}) & u3)
            gone = sorted(self._peers[v] & dropped)
            out.append(self._send(REQUEST_UNMASK, v, wire.encode_request(survivors, gone), ViewKind.PUBLIC))
        return out

    # 8. release
    def _release(self, inbox: Sequence[Message]) -> list[Message]:
        got = self._collect(inbox, UNMASK, self.u3)
        u3 = set(self.u3)
        dropped = set(self.u2) - u3
        seeds: dict[str, list[tuple[str, shamir.Share]]] = {}
        keys: dict[str, list[tuple[str, shamir.Share]]] = {}
        responders = []
        for holder in sorted(got):
            try:
                entries = wire.decode_unmask(got[holder][0].payload)
                parsed = [(o, k, shamir.Share.from_bytes(sh)) for o, k, sh in entries]
            except ValueError as exc:
                self.notes.append(f"ignored malformed shares from {holder!r}: {exc}")
                continue
            ok = True
            for owner, kind, _ in parsed:
                expected = wire.SHARE_OF_SEED if owner in u3 else wire.SHARE_OF_KEY if owner in dropped else None
                if kind != expected or (owner != holder and owner not in self._peers[holder]):
                    self.notes.append(f"ignored shares from {holder!r}: unexpected share of {owner!r}")
                    ok = False
                    break
            if not ok:
                continue
            responders.append(holder)
            for owner, kind, share in parsed:
                (seeds if kind == wire.SHARE_OF_SEED else keys).setdefault(owner, []).append((holder, share))
        self.u4 = responders
        self._require(len(self.u4), "sites that sent unmasking shares")
        q = self.quantizer
        total, self._total = self._total, None
        assert total is not None
        for v in self.u3:
            b = self._reconstruct(v, seeds.get(v, []), lambda s, v=v: seed_commitment(s) == self._keys[v][2], "self-mask seed")
            total -= prg.expand_mask(_self_seed(b, self.round), self.dim, q.modulus_bits)
        for d in sorted(dropped):
            live = sorted(self._peers[d] & u3)
            if not live:
                continue
            s_sk = self._reconstruct(d, keys.get(d, []), lambda s, d=d: kex.public_bytes(s) == self._keys[d][1], "mask key")
            for v in live:
                mask = prg.expand_mask(_pair_seed(s_sk, self._keys[v][1], self.round, d, v), self.dim, q.modulus_bits)
                if v < d:  # y_v added the mask it shares with d
                    total -= mask
                else:
                    total += mask
        total &= q.dtype.type(q.modulus_mask)
        try:
            values, weight = q.decode(total, len(self.u3))
        except ValueError as exc:
            raise self._abort(f"the unmasked sum is inconsistent ({exc})") from exc
        self.integer_sum = total
        self._result = SumResult(values, float(weight), tuple(self.u3))
        return []

    def _reconstruct(self, owner: str, shares: list[tuple[str, shamir.Share]], check: Callable[[bytes], bool], what: str) -> bytes:
        """Combine t shares; on a commitment mismatch, retry leaving one share out (one bad holder)."""
        if len(shares) < self.t:
            raise self._abort(f"only {len(shares)} shares of site {owner!r}'s {what} arrived < threshold t = {self.t}")
        attempts: list[tuple[str | None, list[shamir.Share]]] = [(None, [s for _, s in shares])]
        if len(shares) > self.t:
            attempts += [(h, [s for hh, s in shares if hh != h]) for h, _ in shares[: self.t]]
        for culprit, subset in attempts:
            try:
                secret = shamir.combine(subset, self.t, _SECRET)
            except ValueError:
                continue
            if check(secret):
                if culprit is not None:
                    self.notes.append(f"{culprit!r} sent a share of {owner!r}'s {what} that does not match the commitment; it was left out")
                return secret
        raise self._abort(f"could not reconstruct site {owner!r}'s {what} from {len(shares)} shares: they do not match its public commitment")

    def result(self) -> SumResult | None:
        return self._result
