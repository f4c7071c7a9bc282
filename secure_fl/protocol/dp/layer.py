"""The privacy layer the engine drives (see :mod:`secure_fl.protocol.pipeline`): per-site state
(ledger, noise source, hook, round event) and the release, delegating the math to the mechanism."""

from __future__ import annotations

import hashlib
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from dp_accounting import dp_event

from ...errors import RoundAborted, SpecError
from ...privacy.accounting import calibrate_noise_multiplier
from ...privacy.ledger import Budget, PrivacyLedger
from ...privacy.noise import NoiseSource
from ..base import SumResult
from .config import PrivacyConfig
from .mechanism import DpMechanism

__all__ = ["DpSite", "DpPrivacyLayer", "build_privacy_layer"]


def _site_generator(base: int, site_id: str) -> np.random.Generator:
    digest = hashlib.sha256(site_id.encode()).digest()
    return np.random.default_rng(np.random.SeedSequence([base, int.from_bytes(digest[:8], "little")]))


def _source(secure: bool, base: int, name: str) -> NoiseSource:
    """The OS CSPRNG in production; a per-party seeded stream for reproducible experiments and tests."""
    return NoiseSource.secure() if secure else NoiseSource.seeded(_site_generator(base, name))


class DpSite:
    """One site's persistent privacy state: ledger, noise source, training hook, this round's event."""

    def __init__(self, layer: "DpPrivacyLayer", site_id: str, n_examples: int) -> None:
        self.layer, self.site_id, self.n_examples = layer, site_id, n_examples
        cfg = layer.config
        if layer.ledger_for is not None:  # a deployed site: its own ledger and budget (engine/flower/ledger.py)
            self.ledger = layer.ledger_for(site_id)
        else:
            limit = cfg.site_budgets.get(site_id, cfg.epsilon_budget)
            budget = Budget(limit, cfg.delta, cfg.accountant) if limit is not None else None
            self.ledger = PrivacyLedger(layer.run_dir / "sites" / site_id / "ledger.sqlite", site_id, budget)
        self.source = _source(cfg.secure_noise, layer.seed_base, site_id)
        self.noise_multiplier = layer.noise_multiplier_for(site_id)
        self._event: dp_event.DpEvent | None = None  # this round's event, known once the update is ready
        self._spent: dict[str, Any] = {}
        last = self.ledger.records()
        if last:
            self._spent = self._summary(last[-1].epsilon_rdp, last[-1].epsilon_pld)
        self._hook: Any = layer.mechanism.training_hook(self)

    # -- the SitePrivacy protocol ------------------------------------------------------------

    def planned_event(self) -> dp_event.DpEvent:
        """The most this site can be charged for one round (what the budget check uses)."""
        return self.layer.round_event(self.site_id, self.noise_multiplier)

    def before_round(self, round: int) -> None:
        self._event = None
        self.ledger.check(self.planned_event(), round)

    def training_hook(self) -> Any:
        return self._hook

    def local_update(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Any,
                     round: int) -> tuple[np.ndarray, float] | None:
        """The mechanism's replacement for local training (distributed DP-SGD), else ``None``."""
        out = self.layer.mechanism.local_update(self, model, x, y, loss_fn, round)
        if out is None:
            return None
        values, weight, self._event = out
        return values, weight

    def transform(self, delta: np.ndarray, n_examples: int, round: int) -> tuple[np.ndarray, float]:
        values, weight, event = self.layer.mechanism.transform(self, delta, n_examples, round)
        if event is not None:
            self._event = event
        return values, weight

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
        """What this site has spent: ε (from the planned, data-independent events), δ, σ, unit, adjacency.
        Public: it may go into run records."""
        return dict(self._spent)

    def public_metrics(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """The local-training metrics that may leave this site: none.

        Training loss (and any statistic of the site's private batches) is neither noised nor
        charged to the ledger, so under a DP guarantee it stays at the site; a run record must
        not carry it. The update itself, its public weight (dataset size) and :meth:`spent` are
        what leaves.
        """
        return {}

    def _summary(self, eps_rdp: float, eps_pld: float) -> dict[str, Any]:
        cfg = self.layer.config
        out: dict[str, Any] = {
            "epsilon": eps_pld if cfg.accountant == "pld" else eps_rdp,
            "epsilon_rdp": eps_rdp, "epsilon_pld": eps_pld, "delta": cfg.delta, "unit": cfg.unit,
            "adjacency": cfg.adjacency_for(self.layer.record),
            "noise_multiplier": self.noise_multiplier,
        }
        hook = getattr(self, "_hook", None)
        if hook is not None and hook.opacus_accountant.history:
            out["epsilon_opacus_rdp"] = hook.opacus_epsilon(cfg.delta)
        return out


class DpPrivacyLayer:
    """The ``PrivacyLayer`` of a protocol with a ``[privacy]`` table (see :func:`build_privacy_layer`)."""

    def __init__(self, config: PrivacyConfig, *, weighting: str, plan: Any, site_sizes: Mapping[str, int],
                 run_dir: pathlib.Path, noise_rng: np.random.Generator, protocol_name: str, spec_hash: str,
                 ledger_for: Callable[[str], PrivacyLedger] | None = None,
                 noise_multipliers: Mapping[str, float] | None = None, record: str = "patient") -> None:
        self.config, self.weighting, self.plan = config, weighting, plan
        #: what one training example is in the task ("patient", "photograph"): named in the reported adjacency
        self.record = record
        #: the ledger of a site (default: ``run_dir/sites/SITE/ledger.sqlite`` with the spec's budget)
        self.ledger_for = ledger_for
        self.site_sizes = dict(site_sizes)
        self.run_dir = pathlib.Path(run_dir)
        self.protocol_name, self.spec_hash = protocol_name, spec_hash
        self.seed_base = int(noise_rng.integers(2**63))
        self.server_source = _source(config.secure_noise, self.seed_base, "\x00server")
        self._sites: dict[str, DpSite] = {}
        self.last_release: dict[str, Any] = {}
        self.mechanism: DpMechanism = config.spec(self)
        self._validate_plan()
        self._sigma: dict[str, float] = {}
        if noise_multipliers is not None and set(noise_multipliers) == set(self.site_sizes):
            self._sigma = {s: float(v) for s, v in noise_multipliers.items()}  # calibrated earlier for this plan
        else:
            self._calibrate()
        self.mechanism.after_calibration()

    # -- planning --------------------------------------------------------------------------

    def _validate_plan(self) -> None:
        where = self.config.where
        if not self.site_sizes:
            raise SpecError(f"{where}: the privacy layer needs at least one site")
        for site, n in self.site_sizes.items():
            if n < 1:
                raise SpecError(f"{where}: site {site!r} has {n} training examples; DP needs at least 1")
        if self.plan.rounds < 1:
            raise SpecError(f"{where}: the run plans {self.plan.rounds} rounds; DP calibration needs at least 1")
        self.mechanism.validate_plan()

    def round_event(self, site_id: str, sigma: float) -> dp_event.DpEvent:
        """The DpEvent of one planned round at ``site_id`` with noise multiplier ``sigma``."""
        return self.mechanism.round_event(site_id, sigma)

    def _calibrate(self) -> None:
        cfg = self.config
        rounds = self.plan.rounds
        # one calibration per distinct round event (DP-SGD rates differ by site size)
        for site_id in sorted(self.site_sizes):
            if cfg.noise_multiplier is not None:
                self._sigma[site_id] = cfg.noise_multiplier
                continue
            if cfg.target_epsilon is None:
                raise SpecError(f"{cfg.where}: give 'noise_multiplier' or 'target_epsilon'")
            key = self.round_event(site_id, 1.0)
            cached = next((s for other, s in self._sigma.items() if self.round_event(other, 1.0) == key), None)
            if cached is None:

                def run_event(s: float, sid: str = site_id) -> dp_event.DpEvent:
                    return dp_event.SelfComposedDpEvent(self.round_event(sid, s), rounds)

                cached = calibrate_noise_multiplier(cfg.target_epsilon, cfg.delta, run_event, "rdp")
            self._sigma[site_id] = cached

    @property
    def clip(self) -> float:
        """The clip bound of this round (adaptive clipping moves it)."""
        return float(getattr(self.mechanism, "clip", self.config.max_grad_norm))

    def public_bounds(self) -> tuple[float, float] | None:
        """(value bound, weight bound) on every site's input to the secure sum when the mechanism makes them
        public (distributed noise); ``None`` otherwise. The engine hands them to a secure sum that can use them."""
        bounds = getattr(self.mechanism, "public_bounds", None)
        return bounds() if bounds is not None else None

    def noise_multiplier_for(self, site_id: str) -> float:
        """σ used at ``site_id`` (given in the spec, or calibrated to the target over the planned rounds)."""
        return self._sigma[site_id]

    # -- the PrivacyLayer protocol -----------------------------------------------------------

    def site(self, site_id: str) -> DpSite:
        if site_id not in self._sites:
            if site_id not in self.site_sizes:
                raise KeyError(f"unknown site {site_id!r}; the privacy layer was built for {sorted(self.site_sizes)}")
            self._sites[site_id] = DpSite(self, site_id, self.site_sizes[site_id])
        return self._sites[site_id]

    def release(self, result: SumResult, round: int, expected_sites: Sequence[str]) -> np.ndarray:
        contributors = list(result.contributors)
        self.last_release = {"round": round, "contributors": len(contributors)}
        if not contributors:
            raise RoundAborted(f"round {round}: no site contributed; nothing to release")
        return self.mechanism.release(result, round, contributors, expected_sites)


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
    ledger_for: Callable[[str], PrivacyLedger] | None = None,
    noise_multipliers: Mapping[str, float] | None = None,
    record: str = "patient",
) -> DpPrivacyLayer:
    """The engine's entry point: a privacy layer for one run (``plan`` is a ``training.config.RunPlan``).

    ``ledger_for(site)`` gives a site's ledger when the engine places it (a deployed site keeps its ledger
    and budget in its own kit, never in a run folder); by default each site's ledger is
    ``run_dir/sites/SITE/ledger.sqlite`` with the spec's ``epsilon_budget`` / ``site_budgets``.
    ``noise_multipliers`` (per site) skips the calibration when the same plan was calibrated before (a deployed
    site rebuilds the layer for every message and calibrates once per run).
    """
    if not isinstance(config, PrivacyConfig):
        raise TypeError(f"expected a PrivacyConfig from parse_privacy, found {type(config).__name__}")
    return DpPrivacyLayer(config, weighting=weighting, plan=plan, site_sizes=site_sizes, run_dir=run_dir,
                          noise_rng=noise_rng, protocol_name=protocol_name, spec_hash=spec_hash, ledger_for=ledger_for,
                          noise_multipliers=noise_multipliers, record=record)
