"""The validated ``[privacy]`` table: common keys here, mechanism keys from the mechanism's class."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ...errors import SpecError
from ...privacy.accounting import ACCOUNTANTS
from ...speccheck import check_keys, get, get_table, in_range, one_of
from ..base import SecureSum
from .mechanism import COMMON_KEYS, REGISTRY, DpMechanism, mechanism_class

__all__ = ["PrivacyConfig", "parse_privacy"]


@dataclass(frozen=True)
class PrivacyConfig:
    """A validated ``[privacy]`` table. Build it with :func:`parse_privacy`.

    Mechanism-specific keys live in ``options`` and read as attributes (``cfg.min_sites``).
    """

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
    secure_sum_kind: str = "plain"
    where: str = "[privacy]"
    options: Mapping[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "options":
            raise AttributeError(name)
        options = self.__dict__.get("options", {})
        if name in options:
            return options[name]
        raise AttributeError(f"[privacy] of mechanism {self.__dict__.get('mechanism')!r} has no key {name!r}")

    @property
    def spec(self) -> type[DpMechanism]:
        """The mechanism class (spec-time methods)."""
        return mechanism_class(self.mechanism)

    @property
    def aggregator_view(self) -> str:
        """What the aggregator sees of one site's input when the secure sum is plain."""
        return self.spec.aggregator_view(self)

    @property
    def unit(self) -> str:
        """The privacy unit: "patient" (one training example), "person" (all of a person's examples) or "site"."""
        return self.spec.unit_for(self)

    @property
    def adjacency(self) -> str:
        """The neighbouring relation the ε is for, e.g. "add/remove one patient"."""
        return f"{self.spec.adjacency(self)} {self.unit}"

    def adjacency_for(self, record: str) -> str:
        """:attr:`adjacency` naming what one training example is in the task (``Task.record``): example-level
        DP on ORL faces protects one *photograph* ("add/remove one photograph"), not a patient with all of
        their photographs; person- and site-level units are unchanged."""
        unit = record if self.unit == "patient" else self.unit
        return f"{self.spec.adjacency(self)} {unit}"

    def constrain(self, secure_sum: SecureSum) -> None:
        """Push this mechanism's requirements into ``secure_sum`` (e.g. its minimum contributors),
        which enforces them where the data flows. Called for every secure sum a spec builds."""
        self.spec.constrain(self, secure_sum)

    def guarantee(self) -> list[str]:
        """Plain-language statement of the guarantee and what it assumes."""
        return self.spec.guarantee(self)

    def target_text(self) -> str:
        d = f"δ={self.delta:g}"
        if self.target_epsilon:
            return f"ε≤{self.target_epsilon:g}, {d}"
        return f"noise multiplier σ={self.noise_multiplier:g}, {d}"


def parse_privacy(table: Mapping[str, Any], where: str, secure_sum: SecureSum) -> PrivacyConfig:
    """Validate a ``[privacy]`` table against the protocol's secure sum.

    Unknown keys, wrong types and out-of-range values are refused with the key and value; the
    mechanism then checks the config against the secure sum (e.g. distributed noise without a
    secure sum is refused: each site's share is weak noise) and pushes its requirements into
    the secure sum (:meth:`DpMechanism.constrain`).
    """
    mechanism = get(table, "mechanism", str, where, check=one_of(*REGISTRY))
    spec = mechanism_class(mechanism)
    own = [k.name for k in spec.keys]
    foreign = {k.name for other in REGISTRY.values() if other is not spec for k in other.keys}
    others = sorted((foreign - set(own)) & set(table))
    if others:
        raise SpecError(f"{where}: key(s) {others} do not apply to mechanism {mechanism!r}")
    check_keys(table, list(COMMON_KEYS) + own, where)
    noise = get(table, "noise", str, where, check=one_of(*spec.placements))
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
        secure_sum_kind=secure_sum.name,
        where=where,
        options={k.name: k.read(table, where) for k in spec.keys},
    )
    spec.validate(cfg, table, secure_sum, where)
    cfg.constrain(secure_sum)
    return cfg
