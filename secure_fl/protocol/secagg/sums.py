"""SecAgg and SecAgg+ as :class:`~secure_fl.protocol.base.SecureSum` factories: parameters,
their validation (in one place: the constructor; :meth:`from_params` adds the spec location),
the per-run setup (roster, identities, threshold, modulus) and the guarantee they give.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ...crypto import identity
from ...crypto.quantize import IntegerNoise, Quantizer
from ...errors import InvalidParameter, ProtocolError
from ...speccheck import build, check_keys, get
from ..base import AGGREGATOR, SecureSum, Stage, ViewKind
from .graph import complete_graph, graph_seed, harary_graph
from .params import PlusParameters, derive_plus_parameters
from .stages import round_stages

if TYPE_CHECKING:
    from .aggregator import SecAggAggregator
    from .site import SecAggSite

__all__ = ["SecAggSum", "SecAggPlusSum", "InvalidParameter"]


def _spawn(rng: np.random.Generator) -> np.random.Generator:
    """``rng.spawn(1)[0]`` (numpy >= 1.25) for numpy >= 1.24 too: the same child seed sequence, the same stream."""
    bits = rng.bit_generator
    seq = getattr(bits, "seed_seq", None) or bits._seed_seq  # type: ignore[attr-defined]
    return np.random.Generator(type(bits)(seq.spawn(1)[0]))


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


@dataclass
class SecAggSum(SecureSum):
    """SecAgg (Bonawitz et al. 2017) on the complete graph. Build from a spec with :meth:`from_params`.

    ``threshold`` t (an integer) or ``threshold_fraction`` f (t = ⌈f n⌉, capped at n - 1 so the
    t + 1 survivors the guarantee needs can exist) must exceed half the share holders.
    ``consistency_check`` adds the signed survivor set of §6.2 (one more site stage; default on).
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
    consistency_check: bool = True
    roster: tuple[str, ...] = field(init=False, default=())
    dim: int = field(init=False, default=-1)
    quantizer: Quantizer | None = field(init=False, default=None)
    #: every site's public Ed25519 identity key (32 raw bytes), fixed by :meth:`setup`
    identities: dict[str, bytes] = field(init=False, default_factory=dict, repr=False)
    _signing_keys: dict[str, bytes] = field(init=False, default_factory=dict, repr=False)
    _t: int = field(init=False, default=0)

    name: ClassVar[str] = "secagg"
    view_kind: ClassVar[ViewKind] = ViewKind.MASKED
    _KEYS = ["kind", "threshold", "threshold_fraction", "bits", "clip_range", "max_weight", "consistency_check"]
    _NEEDS_THRESHOLD = True

    def __post_init__(self) -> None:
        self._validate()
        if self.rng is None:
            self.rng = np.random.default_rng()

    # ---- validation (the one place)
    def _validate(self) -> None:
        has_t, has_f = self.threshold is not None, self.threshold_fraction is not None
        if has_t and has_f or (self._NEEDS_THRESHOLD and not has_t and not has_f):
            raise InvalidParameter(
                "",
                f"set exactly one of 'threshold' (an integer: shares needed to reconstruct, > half the holders) "
                f"and 'threshold_fraction' (in (1/2, 1]: that fraction of {self._fraction_of()}, rounded up); found "
                + ("both" if has_t else "neither"),
            )
        if has_t and (not _is_int(self.threshold) or self.threshold < 2):  # type: ignore[operator]
            raise InvalidParameter(
                "threshold", "must be >= 2 (an integer: shares needed to reconstruct)", self.threshold
            )
        if has_f:
            f = self.threshold_fraction
            if not _is_number(f) or not math.isfinite(f):  # type: ignore[arg-type]
                raise InvalidParameter("threshold_fraction", "must be a number in (1/2, 1]", f)
            if f > 1:  # type: ignore[operator]
                raise InvalidParameter("threshold_fraction", "must be <= 1", f)
            if f <= 0.5:  # type: ignore[operator]
                raise InvalidParameter(
                    "threshold_fraction",
                    "must be > 1/2: with t at most half the share holders, an aggregator that tells half of them "
                    "a site survived and half that it dropped collects both its mask seed and its mask key",
                    f,
                )
        if not _is_int(self.bits):
            raise InvalidParameter("bits", "expected an integer", self.bits)
        if not 1 <= self.bits <= 32:
            raise InvalidParameter("bits", "must be >= 1" if self.bits < 1 else "must be <= 32", self.bits)
        if not _is_number(self.clip_range) or not math.isfinite(self.clip_range) or self.clip_range <= 0:
            raise InvalidParameter(
                "clip_range", "must be a finite number > 0 (a zero clipping range cannot be quantized)", self.clip_range
            )
        if not _is_int(self.max_weight) or self.max_weight < 1:
            raise InvalidParameter(
                "max_weight", "must be >= 1" if _is_int(self.max_weight) else "expected an integer", self.max_weight
            )
        if not isinstance(self.consistency_check, bool):
            raise InvalidParameter("consistency_check", "expected a boolean", self.consistency_check)
        # bits, clip_range, max_weight and the noise bound must leave room for a modulus (with one site)
        try:
            Quantizer(self.bits, self.clip_range, self.max_weight, 1, self.noise_bound)
        except ValueError as exc:
            raise InvalidParameter("", str(exc)) from exc

    @classmethod
    def _fraction_of(cls) -> str:
        return "the sites in the run"

    # ---- spec
    @classmethod
    def _spec_types(cls) -> dict[str, type | tuple[type, ...]]:
        return {
            "threshold": int,
            "threshold_fraction": float,
            "bits": int,
            "clip_range": float,
            "max_weight": int,
            "consistency_check": bool,
        }

    @classmethod
    def from_params(cls, params: Mapping[str, Any], where: str) -> "SecAggSum":
        """Build from a ``[secure_sum]`` table: types are read here, every range is checked by the
        constructor, whose error is re-raised as a :class:`SpecError` naming ``where`` and the key."""
        check_keys(params, cls._KEYS, where)
        for required in ("clip_range", "max_weight"):
            get(params, required, cls._spec_types()[required], where)
        kwargs: dict[str, Any] = {k: get(params, k, typ, where) for k, typ in cls._spec_types().items() if k in params}
        return build(where, lambda: cls(**kwargs))

    def set_integer_noise(self, noise: IntegerNoise | None, bound: int) -> None:
        """Distributed-DP hook: each site adds ``noise(dim, rng)`` (integers, ``|z| <= bound``,
        in units of the quantization step ``2 clip_range / (2^bits - 1)``) to its quantized
        update before masking, e.g. its share of a distributed discrete Gaussian (Kairouz,
        Liu, Steinke, ICML 2021). Call before :meth:`setup`: the modulus makes room for the bound.
        """
        if self.quantizer is not None:
            raise ProtocolError(
                f"{self.name}: set_integer_noise must be called before setup(): the modulus is already fixed"
            )
        if isinstance(bound, bool) or not isinstance(bound, int) or bound < 0:
            raise ValueError(f"noise bound must be an integer >= 0, got {bound!r}")
        Quantizer(self.bits, self.clip_range, self.max_weight, 1, bound)  # refuses a bound that cannot fit
        self.integer_noise, self.noise_bound = noise, bound

    @property
    def stages(self) -> tuple[Stage, ...]:
        return round_stages(self.consistency_check)

    # ---- per run
    def setup(
        self,
        site_ids: Sequence[str],
        dim: int,
        identities: Mapping[str, bytes] | None = None,
        signing_keys: Mapping[str, bytes] | None = None,
    ) -> None:
        """Fix the roster (n), the dimension, the identities, the threshold t and the modulus 2^k.

        ``identities``: every site's public Ed25519 identity key (raw 32 bytes), as provisioned.
        ``signing_keys``: the private identity keys of the sites this process runs (the local
        engine: all; a deployed site: its own; the aggregator: none). With both ``None`` (local
        engine, tests) every site gets a fresh identity from the CSPRNG, held in memory.
        """
        ids = list(site_ids)
        if len(set(ids)) != len(ids):
            raise ProtocolError(f"{self.name}: duplicate site ids in {ids}")
        if any(not isinstance(i, str) or not i or i == AGGREGATOR for i in ids):
            raise ProtocolError(f"{self.name}: site ids must be non-empty strings other than {AGGREGATOR!r}, got {ids}")
        if not isinstance(dim, int) or dim < 1:
            raise ProtocolError(f"{self.name}: dim must be a positive integer, got {dim!r}")
        if len(ids) < 3:
            raise ProtocolError(
                f"{self.name}: needs at least 3 sites (a sum of two reveals each input to the other), got {len(ids)}"
            )
        self.identities, self._signing_keys = _identities(self.name, ids, identities, signing_keys)
        try:
            quantizer = Quantizer(self.bits, self.clip_range, self.max_weight, len(ids), self.noise_bound)
        except ValueError as exc:
            raise ProtocolError(f"{self.name}: {exc}") from exc
        self.roster, self.dim = tuple(ids), dim
        self._fix_threshold()
        t, holders = self.threshold_value, self.holders_per_site
        if t > holders:
            raise ProtocolError(
                f"{self.name}: threshold t = {t} exceeds the {holders} share holders per site "
                f"({len(ids)} sites{self._holders_note()}); lower threshold/threshold_fraction or add sites"
            )
        if 2 * t <= holders:
            raise ProtocolError(f"{self.name}: threshold t = {t} must exceed half the {holders} share holders per site")
        if self.min_survivors > len(ids):
            raise ProtocolError(
                f"{self.name}: a release needs at least {self.min_survivors} survivors ({self._survivor_rule()}) "
                f"but the run has {len(ids)} sites; lower the threshold or add sites"
            )
        # what every party enforces is what the protocol declares (reports, audits, the contract suite read it)
        self.min_contributors = self.min_survivors
        self.quantizer = quantizer

    def _fix_threshold(self) -> None:
        n = len(self.roster)
        if self.threshold is not None:
            self._t = self.threshold
        else:
            assert self.threshold_fraction is not None
            self._t = min(n - 1, math.ceil(self.threshold_fraction * n - 1e-9))

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
        """t: shares needed to reconstruct a secret; also the fewest holders a neighbourhood may keep."""
        self._require_setup_t()
        return self._t

    def _require_setup_t(self) -> None:
        if not self.roster:
            raise ProtocolError(f"{self.name}: setup(site_ids, dim) must be called first (it fixes n and t)")

    @property
    def colluders(self) -> int:
        """The largest coalition of sites (with a semi-honest aggregator) the guarantee tolerates: t - 1."""
        return self.threshold_value - 1

    @property
    def active_colluders(self) -> int:
        """Colluding sites tolerated with an *active* aggregator (signed keys and the consistency check):
        2t - n - 1 (Bonawitz et al. §6.2: no two views of U3 both reach t shares). -1: none."""
        if not self.consistency_check:
            return -1
        return 2 * self.threshold_value - self.holders_per_site - 1

    @property
    def min_survivors(self) -> int:
        """Fewest contributors a released sum may have: max(min_contributors, colluders + 2).

        A "sum" of the survivors minus the colluders' own inputs must cover at least two honest sites;
        with exactly t survivors and t - 1 colluders it would be one site's input.
        """
        return max(self.min_contributors, self.colluders + 2)

    def _survivor_rule(self) -> str:
        return f"max(min_contributors = {self.min_contributors}, t + 1 = {self.threshold_value + 1})"

    @property
    def failure_probability(self) -> float:
        """P(the guarantee fails) for the stated coalition: 0 for SecAgg (at most t - 1 colluders is the assumption)."""
        self._require_setup_t()
        return 0.0

    def guarantee(self) -> str:
        """One line: adversary, collusion bound, minimum contributors, failure probability (after setup)."""
        n, t = self.n_sites, self.threshold_value
        active = self.active_colluders
        act = (
            f"an active aggregator with up to {active} colluding sites (signed keys, consistency check)"
            if active >= 0
            else "no active aggregator (consistency check off)"
        )
        return (
            f"{self.name}, n = {n}, t = {t}: a semi-honest aggregator with up to {self.colluders} colluding sites, "
            f"or {act}, learns only sums of at least {self.min_survivors} survivors' inputs (>= 2 honest); "
            f"tolerates {n - self.min_survivors} dropouts; P(failure) = {self.failure_probability:g}"
        )

    def neighbours(
        self, sites: Sequence[str], round: int, keys: Mapping[str, tuple[bytes, bytes]]
    ) -> dict[str, frozenset[str]]:
        """The masking graph on the sites that advertised keys."""
        return complete_graph(sites)

    @property
    def max_neighbours(self) -> int:
        return max(self.n_sites - 1, 0)

    def _require_setup(self) -> Quantizer:
        if self.quantizer is None:
            raise ProtocolError(
                f"{self.name}: setup(site_ids, dim) must be called before a round (it fixes n, t and the modulus)"
            )
        return self.quantizer

    def site(self, site_id: str, round: int, values: np.ndarray, weight: float) -> "SecAggSite":
        from .site import SecAggSite

        self._require_setup()
        if site_id not in self.roster:
            raise ProtocolError(f"{self.name}: site {site_id!r} is not in the roster given to setup()")
        key = self._signing_keys.get(site_id)
        if key is None:
            raise ProtocolError(f"{self.name}: this process holds no identity signing key for site {site_id!r}")
        assert self.rng is not None
        return SecAggSite(self, site_id, round, values, weight, _spawn(self.rng), key)

    def aggregator(self, round: int, site_ids: Sequence[str], dim: int) -> "SecAggAggregator":
        from .aggregator import SecAggAggregator

        self._require_setup()
        if dim != self.dim:
            raise ProtocolError(f"{self.name}: round dim {dim} differs from the dim {self.dim} given to setup()")
        unknown = sorted(set(site_ids) - set(self.roster))
        if unknown:
            raise ProtocolError(f"{self.name}: sites {unknown} are not in the roster given to setup()")
        return SecAggAggregator(self, round, site_ids)


def _identities(
    name: str, ids: Sequence[str], identities: Mapping[str, bytes] | None, signing_keys: Mapping[str, bytes] | None
) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """Check the provisioned identities (or make fresh ones when none are given)."""
    if identities is None and signing_keys is None:
        fresh = {s: identity.generate() for s in ids}
        return {s: pk for s, (_, pk) in fresh.items()}, {s: sk for s, (sk, _) in fresh.items()}
    signing = dict(signing_keys or {})
    if identities is None:
        missing = sorted(set(ids) - set(signing))
        if missing:
            raise ProtocolError(
                f"{name}: identities (every site's public identity key) are required; "
                f"signing keys cover only {sorted(signing)}"
            )
        identities = {s: identity.public_key(signing[s]) for s in ids}
    public = dict(identities)
    missing = sorted(set(ids) - set(public))
    if missing:
        raise ProtocolError(f"{name}: no identity key provisioned for sites {missing}")
    extra = sorted(set(signing) - set(ids))
    if extra:
        raise ProtocolError(f"{name}: signing keys given for sites {extra} outside the roster")
    for s in ids:
        try:
            identity.verify(public[s], b"", b"")  # parses the key
        except ValueError as exc:
            raise ProtocolError(f"{name}: identity key of site {s!r}: {exc}") from exc
    for s, sk in signing.items():
        try:
            matches = identity.public_key(sk) == public[s]
        except ValueError as exc:
            raise ProtocolError(f"{name}: signing key of site {s!r}: {exc}") from exc
        if not matches:
            raise ProtocolError(
                f"{name}: the signing key given for site {s!r} does not match its provisioned identity key"
            )
    return {s: public[s] for s in ids}, signing


@dataclass
class SecAggPlusSum(SecAggSum):
    """SecAgg+ (Bell et al. 2020): masks and shares only along a random degree-k graph.

    Degree k and threshold t are derived per run from the stated colluding fraction
    (``corrupt_fraction`` γ), dropout fraction (``dropout_fraction`` δ) and the targets
    2^-``security_bits`` / 2^-``correctness_bits`` (:mod:`secure_fl.protocol.secagg.params`);
    a given ``degree``/``threshold``/``threshold_fraction`` is kept, and refused at setup when
    it misses the security target.
    """

    degree: int | None = None
    corrupt_fraction: float = 1 / 3
    dropout_fraction: float = 0.1
    security_bits: int = 40
    correctness_bits: int = 20
    plus_parameters: PlusParameters | None = field(init=False, default=None)

    name: ClassVar[str] = "secagg-plus"
    _KEYS = SecAggSum._KEYS + ["degree", "corrupt_fraction", "dropout_fraction", "security_bits", "correctness_bits"]
    _NEEDS_THRESHOLD = False

    def _validate(self) -> None:
        super()._validate()
        if self.degree is not None and (not _is_int(self.degree) or self.degree < 2 or self.degree % 2):
            raise InvalidParameter("degree", "must be an even integer >= 2 (Harary graph degree)", self.degree)
        for key in ("corrupt_fraction", "dropout_fraction"):
            v = getattr(self, key)
            if not _is_number(v) or not 0 <= v < 1:
                raise InvalidParameter(key, "must be a number in [0, 1)", v)
        if self.corrupt_fraction + self.dropout_fraction >= 1:
            raise InvalidParameter(
                "dropout_fraction",
                f"plus corrupt_fraction = {self.corrupt_fraction} must be < 1",
                self.dropout_fraction,
            )
        for key in ("security_bits", "correctness_bits"):
            v = getattr(self, key)
            if not _is_int(v) or not 1 <= v <= 128:
                raise InvalidParameter(key, "must be an integer in [1, 128]", v)

    @classmethod
    def _spec_types(cls) -> dict[str, type | tuple[type, ...]]:
        return {
            **super()._spec_types(),
            "degree": int,
            "corrupt_fraction": float,
            "dropout_fraction": float,
            "security_bits": int,
            "correctness_bits": int,
        }

    @classmethod
    def _fraction_of(cls) -> str:
        return "the neighbourhood size degree + 1"

    def _fix_threshold(self) -> None:
        try:
            self.plus_parameters = derive_plus_parameters(
                self.n_sites,
                self.corrupt_fraction,
                self.dropout_fraction,
                self.security_bits,
                self.correctness_bits,
                self.degree,
                self.threshold,
                self.threshold_fraction,
            )
        except ValueError as exc:
            raise ProtocolError(f"{self.name}: {exc}") from exc
        self._t = self.plus_parameters.threshold

    @property
    def effective_degree(self) -> int:
        self._require_setup_t()
        assert self.plus_parameters is not None
        return self.plus_parameters.degree

    @property
    def holders_per_site(self) -> int:
        return self.effective_degree + 1

    @property
    def max_neighbours(self) -> int:
        return self.effective_degree

    @property
    def colluders(self) -> int:
        """C = ⌊γ n⌋: the colluding sites the failure probability is computed for."""
        self._require_setup_t()
        assert self.plus_parameters is not None
        return self.plus_parameters.corrupt

    @property
    def active_colluders(self) -> int:
        """-1: an active aggregator picks the graph and who drops out (see the spec), so no bound is claimed."""
        return -1

    def _survivor_rule(self) -> str:
        return (
            f"max(min_contributors = {self.min_contributors}, C + 2 = {self.colluders + 2}), "
            "C = floor(corrupt_fraction x n)"
        )

    @property
    def failure_probability(self) -> float:
        """P(C = ⌊γ n⌋ colluding sites with the aggregator learn more than the survivors' sum), per round."""
        self._require_setup_t()
        assert self.plus_parameters is not None
        return self.plus_parameters.failure_probability

    @property
    def abort_probability(self) -> float:
        """P(the round aborts with D = ⌊δ n⌋ dropouts), per round."""
        self._require_setup_t()
        assert self.plus_parameters is not None
        return self.plus_parameters.abort_probability

    def guarantee(self) -> str:
        assert self.plus_parameters is not None
        return (
            f"{self.name}: {self.plus_parameters.describe()}; a semi-honest aggregator with up to C colluding sites "
            f"learns only sums of at least {self.min_survivors} survivors' inputs; "
            "an active aggregator cannot swap keys"
        )

    def _holders_note(self) -> str:
        return f", neighbourhood degree {self.effective_degree}"

    def neighbours(
        self, sites: Sequence[str], round: int, keys: Mapping[str, tuple[bytes, bytes]]
    ) -> dict[str, frozenset[str]]:
        k = self.effective_degree
        if k >= len(sites) - 1:
            return complete_graph(sites)
        seed = graph_seed(round, [(s, *keys[s]) for s in sites])
        return harary_graph(sites, k, seed)
