"""The ``[privacy]`` layer of a protocol spec: parsing, validation against the secure sum,
and the per-site privacy objects the engine drives (see :mod:`secure_fl.protocol.pipeline`).

Three mechanisms, each with the guarantee it gives and the assumption it rests on:

``mechanism = "dp-sgd"``, ``noise = "local"``
    Patient-level DP-SGD inside each site's local training (Abadi et al. 2016, with Opacus;
    :mod:`secure_fl.training.dp_sgd`). Everything that leaves a site is (ε, δ)-DP for each of
    its patients, composed over every round the site takes part in. Trusts nobody.
``mechanism = "dp-fedavg"``, ``noise = "local" | "central"``
    Update-level DP-FedAvg (McMahan et al. 2018): each site's delta is clipped to L2 norm C
    (fixed, or adaptive after Andrew et al. 2021 with ``clipping = "adaptive"``). With
    *local* noise each site adds N(0, (σC)²) itself: any change to the site's data moves
    the clipped update by at most 2C, so a round is a Gaussian mechanism with multiplier
    σ/2, site-level (hence also patient-level) for what the site sends. With *central*
    noise the party named by ``noise_adder`` adds N(0, (σC)²) to the sum: site-level DP
    (add/remove one site, sensitivity C) for the released models only; that party sees the
    sum before noise and, with a plain secure sum, every clipped update.
``mechanism = "distributed-dp-sgd"``, ``noise = "distributed"``
    Patient-level DP under a secure sum (:mod:`secure_fl.training.dp_distributed`): each round
    every site Poisson-samples its patients at rate q, sums clipped per-example gradients and
    adds a share N(0, (σC)²/m) of the noise, m = ``min_sites``. A round is one
    Poisson-subsampled Gaussian step on the union of all sites' patients, provided at
    least m sites added honest shares and nobody sees a single share (the secure sum).
    With fewer than m contributors the round is aborted (``on_too_few = "abort"``) or the
    weaker ε actually obtained is charged and shown (``"charge_weaker"``). There is no local
    training: the release is the noisy mean gradient's descent direction and the server
    step is the optimiser (step size ``[aggregation].server_lr``).

Noise comes from the OS CSPRNG when ``secure_noise = true`` (the default) and from the
engine's seeded ``noise_rng`` when ``false`` (reproducible experiments and tests); see
:mod:`secure_fl.privacy.noise`. Every round's DpEvent is written to the site's ledger
(``run_dir/sites/SITE/ledger.sqlite``) before its update leaves the site.
"""

from __future__ import annotations

import hashlib
import pathlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from dp_accounting import dp_event

from ..errors import RoundAborted, SiteRejected, SpecError
from ..privacy.accounting import (
    ACCOUNTANTS,
    calibrate_noise_multiplier,
    dp_sgd_event,
    gaussian_event,
    poisson_gaussian_event,
)
from ..privacy.ledger import Budget, PrivacyLedger
from ..privacy.mechanisms import AdaptiveClip, clip_l2, effective_noise_multiplier, split_noise_multiplier
from ..privacy.noise import NoiseSource
from ..speccheck import check_keys, get, get_table, in_range, one_of
from .base import SecureSum, SumResult, ViewKind
from .pipeline import weight_for

__all__ = ["MECHANISMS", "PrivacyConfig", "parse_privacy", "build_privacy_layer", "DpPrivacyLayer", "DpSite"]

#: mechanism -> where its noise may be placed
MECHANISMS: dict[str, tuple[str, ...]] = {
    "dp-sgd": ("local",),
    "dp-fedavg": ("local", "central"),
    "distributed-dp-sgd": ("distributed",),
}
_COMMON = ["mechanism", "noise", "delta", "noise_multiplier", "target_epsilon", "max_grad_norm", "secure_noise",
           "accountant", "epsilon_budget", "site_budgets"]
_ONLY: dict[str, list[str]] = {
    "dp-sgd": [],
    "dp-fedavg": ["clipping", "target_quantile", "clip_learning_rate", "clip_count_stddev", "noise_adder"],
    "distributed-dp-sgd": ["sample_rate", "min_sites", "on_too_few"],
}
_MASKING_SUMS = ("secagg", "secagg-plus")


@dataclass(frozen=True)
class PrivacyConfig:
    """A validated ``[privacy]`` table. Build it with :func:`parse_privacy`."""

    mechanism: str
    noise: str
    delta: float
    max_grad_norm: float
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    secure_noise: bool = True
    accountant: str = "pld"
    epsilon_budget: float | None = None
    site_budgets: Mapping[str, float] = field(default_factory=dict)
    clipping: str = "fixed"
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    clip_count_stddev: float | None = None
    noise_adder: str | None = None
    sample_rate: float | None = None
    min_sites: int = 1
    on_too_few: str = "abort"
    secure_sum_kind: str = "plain"
    where: str = "[privacy]"

    @property
    def aggregator_view(self) -> str:
        """What the aggregator sees of one site's input when the secure sum is plain."""
        if self.mechanism == "dp-sgd" or (self.mechanism == "dp-fedavg" and self.noise == "local"):
            return ViewKind.NOISED.value
        # central noise: clipped updates before noise; distributed: one weak share (refused under plain)
        return ViewKind.PLAIN.value

    @property
    def unit(self) -> str:
        return "site" if self.mechanism == "dp-fedavg" else "patient"

    def guarantee(self) -> list[str]:
        """Plain-language statement of the guarantee and what it assumes."""
        d = f"δ={self.delta:g}"
        target = f"ε≤{self.target_epsilon:g}, {d}" if self.target_epsilon else f"noise multiplier σ={self.noise_multiplier:g}, {d}"
        if self.mechanism == "dp-sgd":
            return [f"patient-level ({target}) for everything that leaves each site, composed over all planned rounds",
                    "assumes: nothing; every site adds all of its noise itself"]
        if self.mechanism == "dp-fedavg" and self.noise == "local":
            return [f"site-level ({target}) for each site's noised update, composed over all planned rounds",
                    "assumes: nothing; each site adds all of its noise itself (sensitivity 2C)"]
        if self.mechanism == "dp-fedavg":
            return [f"site-level ({target}) for the released models (add/remove one site, sensitivity C)",
                    f"assumes: the noise adder ({self.noise_adder}) is trusted: it sees the sum before noise"]
        return [f"patient-level ({target}) for the released aggregates, one Poisson-sampled Gaussian step per round "
                "on the union of all sites' patients",
                f"assumes: at least {self.min_sites} sites add honest noise shares and nobody sees a single share "
                f"(secure sum {self.secure_sum_kind!r}); fewer than {self.min_sites} contributors: {self.on_too_few}"]


def parse_privacy(table: Mapping[str, Any], where: str, secure_sum: SecureSum) -> PrivacyConfig:
    """Validate a ``[privacy]`` table against the protocol's secure sum.

    Unknown keys, wrong types and out-of-range values are refused with the key and value;
    distributed noise without a secure sum is refused (each site's share is weak noise).
    """
    mechanism = get(table, "mechanism", str, where, check=one_of(*MECHANISMS))
    others = sorted(({k for m, keys in _ONLY.items() if m != mechanism for k in keys} - set(_ONLY[mechanism])) & set(table))
    if others:
        raise SpecError(f"{where}: key(s) {others} do not apply to mechanism {mechanism!r}")
    check_keys(table, _COMMON + _ONLY[mechanism], where)
    noise = get(table, "noise", str, where, check=one_of(*MECHANISMS[mechanism]))
    delta = get(table, "delta", float, where, check=in_range(0, 1, lo_open=True, hi_open=True))
    positive = in_range(0, lo_open=True)
    sigma = get(table, "noise_multiplier", float, where, None, positive)
    target = get(table, "target_epsilon", float, where, None, positive)
    if (sigma is None) == (target is None):
        raise SpecError(f"{where}: give exactly one of 'noise_multiplier' or 'target_epsilon' "
                        f"(found noise_multiplier={sigma!r}, target_epsilon={target!r})")
    budgets = get_table(table, "site_budgets", where, {})
    for site, value in budgets.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise SpecError(f"{where}.site_budgets.{site}: expected a number > 0, found {value!r}")
    kind = getattr(secure_sum, "name", "") or "plain"
    cfg = PrivacyConfig(
        mechanism=mechanism,
        noise=noise,
        delta=delta,
        max_grad_norm=get(table, "max_grad_norm", float, where, check=positive),
        noise_multiplier=sigma,
        target_epsilon=target,
        secure_noise=get(table, "secure_noise", bool, where, True),
        accountant=get(table, "accountant", str, where, "pld", one_of(*ACCOUNTANTS)),
        epsilon_budget=get(table, "epsilon_budget", float, where, None, positive),
        site_budgets={k: float(v) for k, v in budgets.items()},
        clipping=get(table, "clipping", str, where, "fixed", one_of("fixed", "adaptive")),
        target_quantile=get(table, "target_quantile", float, where, 0.5, in_range(0, 1, lo_open=True, hi_open=True)),
        clip_learning_rate=get(table, "clip_learning_rate", float, where, 0.2, positive),
        clip_count_stddev=get(table, "clip_count_stddev", float, where, None, positive),
        noise_adder=get(table, "noise_adder", str, where, None, one_of("aggregator", "key-holders")),
        sample_rate=get(table, "sample_rate", float, where, None, in_range(0, 1, lo_open=True)),
        min_sites=get(table, "min_sites", int, where, 1, in_range(1)),
        on_too_few=get(table, "on_too_few", str, where, "abort", one_of("abort", "charge_weaker")),
        secure_sum_kind=kind,
        where=where,
    )
    _check_against_secure_sum(cfg, table, secure_sum, where)
    return cfg


def _check_against_secure_sum(cfg: PrivacyConfig, table: Mapping[str, Any], secure_sum: SecureSum, where: str) -> None:
    kind = cfg.secure_sum_kind
    view = getattr(secure_sum, "view_kind", ViewKind.PLAIN)
    if cfg.mechanism == "distributed-dp-sgd":
        if view == ViewKind.PLAIN:
            raise SpecError(
                f"{where}.noise: 'distributed' noise needs a secure sum, but [secure_sum].kind = {kind!r}: the "
                f"aggregator would see each site's share, which carries only 1/{cfg.min_sites} of the noise "
                "variance; use kind = 'ckks'"
            )
        if kind in _MASKING_SUMS or view == ViewKind.MASKED:
            raise SpecError(
                f"{where}.noise: distributed noise is not yet implemented for {kind}: needs discrete Gaussian shares "
                "(integer secure sum; Kairouz, Liu, Steinke 2021)"
            )
        if "sample_rate" not in table:
            raise SpecError(f"{where}: missing required key 'sample_rate' (Poisson rate at which every site samples its patients)")
        if "min_sites" not in table:
            raise SpecError(f"{where}: missing required key 'min_sites' (how many sites' noise shares make the full noise)")
    if cfg.mechanism == "dp-fedavg":
        if cfg.noise == "central":
            if cfg.noise_adder is None:
                raise SpecError(
                    f"{where}: central noise needs 'noise_adder' = 'aggregator' or 'key-holders': the spec must say who "
                    "adds the noise, because that party sees the sum before noise"
                )
            releases = getattr(secure_sum, "releases_to_aggregator", True)
            expected = "aggregator" if releases else "key-holders"
            if cfg.noise_adder != expected:
                raise SpecError(
                    f"{where}.noise_adder: the secure sum {kind!r} releases the sum to the {expected}, so the "
                    f"{expected} add the central noise, found {cfg.noise_adder!r}"
                )
        elif cfg.noise_adder is not None:
            raise SpecError(f"{where}.noise_adder: only for noise = 'central', found {cfg.noise_adder!r} with noise = 'local'")
        if cfg.clipping == "adaptive":
            if cfg.noise != "central":
                raise SpecError(f"{where}.clipping: 'adaptive' clipping (Andrew et al. 2021) needs noise = 'central', found {cfg.noise!r}")
            if view != ViewKind.PLAIN:
                raise SpecError(
                    f"{where}.clipping: 'adaptive' clipping is implemented for secure_sum.kind = 'plain' only (the clip "
                    f"bits would have to travel inside the {kind!r} sum), found {kind!r}"
                )
        else:
            for key in ("target_quantile", "clip_learning_rate", "clip_count_stddev"):
                if key in table:
                    raise SpecError(f"{where}.{key}: only for clipping = 'adaptive', found clipping = {cfg.clipping!r}")


# -- the layer the engine drives ---------------------------------------------------------------


def _site_generator(base: int, site_id: str) -> np.random.Generator:
    digest = hashlib.sha256(site_id.encode()).digest()
    return np.random.default_rng(np.random.SeedSequence([base, int.from_bytes(digest[:8], "little")]))


class DpSite:
    """One site's persistent privacy state: ledger, DP-SGD hook (with its Opacus accountant), round event."""

    def __init__(self, layer: "DpPrivacyLayer", site_id: str, n_examples: int) -> None:
        self.layer, self.site_id, self.n_examples = layer, site_id, n_examples
        cfg = layer.config
        limit = cfg.site_budgets.get(site_id, cfg.epsilon_budget)
        budget = Budget(limit, cfg.delta, cfg.accountant) if limit is not None else None
        self.ledger = PrivacyLedger(layer.run_dir / "sites" / site_id / "ledger.sqlite", site_id, budget)
        self.source = NoiseSource.secure() if cfg.secure_noise else NoiseSource.seeded(_site_generator(layer.seed_base, site_id))
        self.noise_multiplier = layer.noise_multiplier_for(site_id)
        self._hook: Any = None
        self._event: dp_event.DpEvent | None = None  # this round's event, known once the update is ready
        self._spent: dict[str, Any] = {}
        last = self.ledger.records()
        if last:
            self._spent = self._summary(last[-1].epsilon_rdp, last[-1].epsilon_pld)
        if cfg.mechanism == "dp-sgd":
            from ..training.dp_sgd import DpSgdHook

            self._hook = DpSgdHook(noise_multiplier=self.noise_multiplier, max_grad_norm=cfg.max_grad_norm,
                                   sample_rate=layer.dp_sgd_rate(site_id), source=self.source)

    # -- the SitePrivacy protocol ------------------------------------------------------------

    def planned_event(self) -> dp_event.DpEvent:
        """The most this site can be charged for one round (what the budget check uses)."""
        return self.layer.round_event(self.site_id, self.noise_multiplier)

    def before_round(self, round: int) -> None:
        self._event = None
        self.ledger.check(self.planned_event(), round)

    def training_hook(self) -> Any:
        return self._hook

    def local_update(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Any, round: int) -> tuple[np.ndarray, int] | None:
        """Distributed DP-SGD: this site's clipped gradient sum plus its noise share (else ``None``)."""
        cfg = self.layer.config
        if cfg.mechanism != "distributed-dp-sgd":
            return None
        from ..training.dp_distributed import distributed_share

        assert cfg.sample_rate is not None
        values, _ = distributed_share(
            model, x, y, loss_fn, sample_rate=cfg.sample_rate, clip=cfg.max_grad_norm,
            noise_multiplier=self.noise_multiplier, min_sites=cfg.min_sites, source=self.source,
        )
        self._event = self.planned_event()
        # the weight is the site's size: public, data-independent (the Poisson batch size is not sent)
        return values, self.n_examples

    def transform(self, delta: np.ndarray, n_examples: int, round: int) -> tuple[np.ndarray, float]:
        cfg = self.layer.config
        if cfg.mechanism == "dp-sgd":
            self._event = self._hook.round_event()
            w = weight_for(n_examples, self.layer.weighting)
            return np.asarray(delta, dtype=np.float64) * w, w
        if cfg.mechanism == "distributed-dp-sgd":  # local_update already made the final contribution
            return np.asarray(delta, dtype=np.float64), float(n_examples)
        clip = self.layer.clip
        clipped, norm = clip_l2(delta, clip)
        self._event = self.planned_event()
        if cfg.noise == "local":
            clipped = clipped + self.source.normal(self.noise_multiplier * clip, clipped.shape[0])
        else:
            self.layer.report_clip_bit(round, self.site_id, norm)
        return clipped, 1.0

    def charge(self, round: int) -> dict[str, Any]:
        """Write this round's event to the ledger (refusing it over budget) before the update leaves."""
        if self._event is None:
            raise RuntimeError(f"site {self.site_id!r}: charge({round}) before the round's update was computed")
        layer = self.layer
        record = self.ledger.charge(round, self._event, layer.config.delta, protocol=layer.protocol_name,
                                    spec_hash=layer.spec_hash, mechanism=layer.config.mechanism)
        self._spent = self._summary(record.epsilon_rdp, record.epsilon_pld)
        self._event = None
        return dict(self._spent)

    def spent(self) -> dict[str, Any]:
        return dict(self._spent)

    def _summary(self, eps_rdp: float, eps_pld: float) -> dict[str, Any]:
        cfg = self.layer.config
        out: dict[str, Any] = {
            "epsilon": eps_pld if cfg.accountant == "pld" else eps_rdp,
            "epsilon_rdp": eps_rdp, "epsilon_pld": eps_pld, "delta": cfg.delta, "unit": cfg.unit,
            "noise_multiplier": self.noise_multiplier,
        }
        if self._hook is not None and self._hook.opacus_accountant.history:
            out["epsilon_opacus_rdp"] = self._hook.opacus_epsilon(cfg.delta)
        return out


class DpPrivacyLayer:
    """The ``PrivacyLayer`` of a protocol with a ``[privacy]`` table (see :func:`build_privacy_layer`)."""

    def __init__(self, config: PrivacyConfig, *, weighting: str, plan: Any, site_sizes: Mapping[str, int],
                 run_dir: pathlib.Path, noise_rng: np.random.Generator, protocol_name: str, spec_hash: str) -> None:
        self.config, self.weighting, self.plan = config, weighting, plan
        self.site_sizes = dict(site_sizes)
        self.run_dir = pathlib.Path(run_dir)
        self.protocol_name, self.spec_hash = protocol_name, spec_hash
        self.seed_base = int(noise_rng.integers(2**63))
        self.server_source = NoiseSource.secure() if config.secure_noise else NoiseSource.seeded(_site_generator(self.seed_base, "\x00server"))
        self._sites: dict[str, DpSite] = {}
        self._bits: dict[int, dict[str, float]] = {}
        self.last_release: dict[str, Any] = {}
        self._validate_plan()
        self.adaptive: AdaptiveClip | None = None
        self._update_sigma: float | None = None
        self._sigma: dict[str, float] = {}
        self._calibrate()

    # -- planning --------------------------------------------------------------------------

    def _validate_plan(self) -> None:
        cfg, where = self.config, self.config.where
        if not self.site_sizes:
            raise SpecError(f"{where}: the privacy layer needs at least one site")
        for site, n in self.site_sizes.items():
            if n < 1:
                raise SpecError(f"{where}: site {site!r} has {n} training examples; DP needs at least 1")
        if cfg.mechanism == "dp-fedavg" and self.weighting != "uniform":
            raise SpecError(
                f"{where}: update-level DP needs [aggregation].weighting = 'uniform' (each clipped update counts "
                f"once, so one site moves the sum by at most C; McMahan et al. 2018), found {self.weighting!r}"
            )
        if cfg.mechanism == "distributed-dp-sgd" and cfg.min_sites > len(self.site_sizes):
            raise SpecError(f"{where}.min_sites: {cfg.min_sites} exceeds the {len(self.site_sizes)} sites of this federation")
        if self.plan.rounds < 1:
            raise SpecError(f"{where}: the run plans {self.plan.rounds} rounds; DP calibration needs at least 1")

    def dp_sgd_rate(self, site_id: str) -> float:
        """Poisson rate of DP-SGD at a site: expected batch = ``training.batch_size``."""
        return min(1.0, self.plan.training.batch_size / self.site_sizes[site_id])

    def _dp_sgd_steps(self, site_id: str) -> int:
        t = self.plan.training
        if t.local_steps is not None:
            return int(t.local_steps)
        return int(t.local_epochs) * max(1, round(1.0 / self.dp_sgd_rate(site_id)))

    def round_event(self, site_id: str, sigma: float) -> dp_event.DpEvent:
        """The DpEvent of one planned round at ``site_id`` with noise multiplier ``sigma``."""
        cfg = self.config
        if cfg.mechanism == "dp-sgd":
            return dp_sgd_event(sigma, self.dp_sgd_rate(site_id), self._dp_sgd_steps(site_id))
        if cfg.mechanism == "distributed-dp-sgd":
            assert cfg.sample_rate is not None
            return poisson_gaussian_event(sigma, cfg.sample_rate)
        # dp-fedavg: local noise -> sensitivity 2C; central -> add/remove one site, sensitivity C
        return gaussian_event(sigma / 2.0 if cfg.noise == "local" else sigma)

    def _calibrate(self) -> None:
        cfg = self.config
        rounds = self.plan.rounds
        # one calibration per distinct round event (DP-SGD rates differ by site size)
        for site_id in sorted(self.site_sizes):
            if cfg.noise_multiplier is not None:
                self._sigma[site_id] = cfg.noise_multiplier
                continue
            assert cfg.target_epsilon is not None
            key = self.round_event(site_id, 1.0)
            cached = next((s for other, s in self._sigma.items() if self.round_event(other, 1.0) == key), None)
            if cached is None:
                cached = calibrate_noise_multiplier(
                    cfg.target_epsilon, cfg.delta,
                    lambda s, sid=site_id: dp_event.SelfComposedDpEvent(self.round_event(sid, s), rounds), "rdp",
                )
            self._sigma[site_id] = cached
        if cfg.mechanism == "dp-fedavg":
            if cfg.clipping == "adaptive":
                sites = len(self.site_sizes)
                expected = max(1, round(self.plan.fraction * sites))
                sigma = self._sigma[sorted(self.site_sizes)[0]]
                # Andrew et al. suggest m/20 for m ~ hundreds of clients; with few sites that leaves the update
                # no budget (need 2σ_b > σ), so the default also keeps σ_Δ within ~3% of σ (σ_b >= 2σ).
                stddev = cfg.clip_count_stddev if cfg.clip_count_stddev is not None else max(expected / 20.0, 2.0 * sigma)
                try:
                    self._update_sigma = split_noise_multiplier(sigma, stddev)
                except ValueError as exc:
                    raise SpecError(f"{cfg.where}.clip_count_stddev: {exc}") from exc
                self.adaptive = AdaptiveClip(cfg.max_grad_norm, cfg.target_quantile, cfg.clip_learning_rate, stddev)

    def noise_multiplier_for(self, site_id: str) -> float:
        """σ used at ``site_id`` (given in the spec, or calibrated to the target over the planned rounds)."""
        return self._sigma[site_id]

    @property
    def clip(self) -> float:
        if self.adaptive is not None:
            return self.adaptive.clip
        return self.config.max_grad_norm

    def report_clip_bit(self, round: int, site_id: str, norm: float) -> None:
        """Adaptive clipping: the unclipped indicator of a site's update (central noise, plain sum only:
        the aggregator sees the clipped update and could compute it itself)."""
        if self.adaptive is not None:
            self._bits.setdefault(round, {})[site_id] = self.adaptive.bit(norm)

    # -- the PrivacyLayer protocol -----------------------------------------------------------

    def site(self, site_id: str) -> DpSite:
        if site_id not in self._sites:
            if site_id not in self.site_sizes:
                raise KeyError(f"unknown site {site_id!r}; the privacy layer was built for {sorted(self.site_sizes)}")
            self._sites[site_id] = DpSite(self, site_id, self.site_sizes[site_id])
        return self._sites[site_id]

    def release(self, result: SumResult, round: int, expected_sites: Sequence[str]) -> np.ndarray:
        cfg = self.config
        contributors = list(result.contributors)
        self.last_release = {"round": round, "contributors": len(contributors)}
        if not contributors:
            raise RoundAborted(f"round {round}: no site contributed; nothing to release")
        if cfg.mechanism == "dp-sgd" or (cfg.mechanism == "dp-fedavg" and cfg.noise == "local"):
            return result.mean
        if cfg.mechanism == "dp-fedavg":
            return self._release_central(result, round, contributors, expected_sites)
        return self._release_distributed(result, round, contributors)

    def _release_central(self, result: SumResult, round: int, contributors: list[str], expected: Sequence[str]) -> np.ndarray:
        sigma = self._update_sigma if self._update_sigma is not None else self._sigma[contributors[0]]
        clip = self.clip
        noised = result.total + self.server_source.normal(sigma * clip, result.total.shape[0])
        # fixed denominator: the number of sites expected to report (McMahan et al. 2018, estimator f̃_f)
        denominator = max(len(expected), len(contributors))
        if self.adaptive is not None:
            bits = self._bits.pop(round, {})
            new_clip = self.adaptive.update(sum(bits.get(s, 0.0) for s in contributors), len(contributors), self.server_source)
            self.last_release["next_clip"] = new_clip
        self.last_release.update({"clip": clip, "noise_std": sigma * clip})
        return noised / denominator

    def _release_distributed(self, result: SumResult, round: int, contributors: list[str]) -> np.ndarray:
        cfg = self.config
        assert cfg.sample_rate is not None
        k = len(contributors)
        sigma = min(self._sigma[s] for s in contributors)
        if k < cfg.min_sites:
            weak_sigma = effective_noise_multiplier(sigma, k, cfg.min_sites)
            if cfg.on_too_few == "abort":
                raise RoundAborted(
                    f"round {round}: only {k} site(s) added noise shares, min_sites is {cfg.min_sites}; the sum carries "
                    f"noise multiplier {weak_sigma:.3g} instead of {sigma:.3g}, so it is not released (on_too_few = 'abort')"
                )
            weak = poisson_gaussian_event(weak_sigma, cfg.sample_rate)
            sites = [self.site(s) for s in contributors]
            try:  # check every budget first, then amend: all or nothing
                for sp in sites:
                    sp.ledger.check(weak, round, replacing_round=round)
            except SiteRejected as exc:
                raise RoundAborted(f"round {round}: only {k} of {cfg.min_sites} noise shares; charging the weaker "
                                   f"guarantee would exceed a budget: {exc}") from exc
            for sp in sites:
                rec = sp.ledger.amend(round, weak, cfg.delta, protocol=self.protocol_name, spec_hash=self.spec_hash,
                                      mechanism=cfg.mechanism,
                                      note=f"only {k} of min_sites={cfg.min_sites} noise shares: noise multiplier {weak_sigma:.4g}")
                sp._spent = sp._summary(rec.epsilon_rdp, rec.epsilon_pld)
            self.last_release["weaker_noise_multiplier"] = weak_sigma
            self.last_release["charged_weaker"] = {s.site_id: s.spent()["epsilon"] for s in sites}
        expected_batch = cfg.sample_rate * sum(self.site_sizes[s] for s in contributors)
        self.last_release.update({"expected_batch": expected_batch})
        # the descent direction on the union, -(Σ clipped grads + noise) / (q · N); the server step
        # ([aggregation].server, server_lr) is the optimiser: FedAvg = DP-SGD, FedAdam = DP-Adam
        return -result.total / expected_batch


def build_privacy_layer(
    config: PrivacyConfig,
    *,
    weighting: str,
    plan: Any,
    site_sizes: dict[str, int],
    run_dir: pathlib.Path,
    noise_rng: np.random.Generator,
    protocol_name: str,
    spec_hash: str,
) -> DpPrivacyLayer:
    """The engine's entry point: a privacy layer for one run (``plan`` is a ``training.config.RunPlan``)."""
    if not isinstance(config, PrivacyConfig):
        raise TypeError(f"expected a PrivacyConfig from parse_privacy, found {type(config).__name__}")
    return DpPrivacyLayer(config, weighting=weighting, plan=plan, site_sizes=site_sizes, run_dir=run_dir,
                          noise_rng=noise_rng, protocol_name=protocol_name, spec_hash=spec_hash)
