"""The interface every DP mechanism implements, and the registry that names them.

A mechanism is one class (see :class:`DpMechanism`). Its *spec-time* part is class-level and
reads only the validated :class:`~.config.PrivacyConfig`: the spec keys it adds, where its
noise may be placed, its validation against the secure sum, what the aggregator sees, the
privacy unit, the neighbouring relation and the guarantee text. Its *run-time* part is an
instance the privacy layer makes once per run (``cls(layer)``): the round event and its
calibration, the site-side update (local training hook, ``local_update`` or ``transform``)
and the release of the secure sum's result.

Like ``dp_accounting``'s events, a registered name never changes meaning: a different
mechanism gets a new name (and a new file).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from dp_accounting import dp_event

from ...errors import SpecError
from ...speccheck import get
from ..base import SecureSum, SumResult, ViewKind

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .config import PrivacyConfig
    from .layer import DpPrivacyLayer, DpSite

__all__ = ["COMMON_KEYS", "Key", "DpMechanism", "Adjacency", "register_mechanism", "mechanism_class", "REGISTRY",
           "MECHANISMS"]


#: keys of ``[privacy]`` that every mechanism has (parsed by :func:`.config.parse_privacy`)
COMMON_KEYS = ("mechanism", "noise", "delta", "noise_multiplier", "target_epsilon", "max_grad_norm", "secure_noise",
               "accountant", "epsilon_budget", "site_budgets")


class Adjacency:
    """Neighbouring relations an ε can be stated for (Dwork & Roth 2014, §2.3; Ponomareva et al.,
    "How to DP-fy ML", JAIR 2023, §2.1.3), of one privacy unit (a patient or a site).

    ``ADD_REMOVE``: the dataset with or without the unit. ``ZERO_OUT``: the unit's contribution
    replaced by zero (same sensitivity as add/remove for clipped sums). ``REPLACE_ONE``: the unit's
    data changed arbitrarily; for a clipped sum it doubles the sensitivity (2C), so the same noise
    gives the ε of multiplier σ/2. ε values are comparable only under the same relation and unit;
    in every relation the dataset sizes and which sites take part are public.
    """

    ADD_REMOVE = "add/remove one"
    ZERO_OUT = "zero-out one"
    REPLACE_ONE = "replace one"


@dataclass(frozen=True)
class Key:
    """One mechanism-specific key of the ``[privacy]`` table.

    ``required`` (when set) says why the key has no default; the error quotes it.
    """

    name: str
    type: type | tuple[type, ...]
    default: Any = None
    check: Callable[[Any], str | None] | None = None
    required: str | None = None

    def read(self, table: Mapping[str, Any], where: str) -> Any:
        if self.required is not None and self.name not in table:
            raise SpecError(f"{where}: missing required key {self.name!r} ({self.required})")
        return get(table, self.name, self.type, where, self.default, self.check)


class DpMechanism:
    """A DP mechanism of the privacy layer. Subclass, set the class attributes, register.

    Spec time (classmethods, no run state): :meth:`validate`, :meth:`constrain`,
    :meth:`aggregator_view`, :meth:`adjacency`, :meth:`guarantee`.
    Run time (an instance per layer, ``self.layer`` / ``self.config``): :meth:`validate_plan`,
    :meth:`round_event`, :meth:`after_calibration`, :meth:`training_hook`, :meth:`local_update`,
    :meth:`transform`, :meth:`release`.
    """

    #: the value of ``[privacy].mechanism``
    name: ClassVar[str] = ""
    #: allowed values of ``[privacy].noise``, first = the mechanism's own
    placements: ClassVar[tuple[str, ...]] = ()
    #: keys this mechanism adds to the common ones (see :data:`COMMON_KEYS`)
    keys: ClassVar[tuple[Key, ...]] = ()
    #: the privacy unit: "patient" (one training example), "person" (all of a person's examples) or "site"
    unit: ClassVar[str] = "patient"

    # -- spec time -------------------------------------------------------------------------

    @classmethod
    def validate(cls, cfg: "PrivacyConfig", table: Mapping[str, Any], secure_sum: SecureSum, where: str) -> None:
        """Refuse a config this mechanism cannot honour with this secure sum (SpecError naming the key)."""

    @classmethod
    def constrain(cls, cfg: "PrivacyConfig", secure_sum: SecureSum) -> None:
        """Push requirements *into* the secure sum, which enforces them where the data flows
        (e.g. :meth:`SecureSum.require_contributors`). Called at parse time and by
        ``ProtocolSpec.build_secure_sum`` for the secure sum of a run."""

    @classmethod
    def aggregator_view(cls, cfg: "PrivacyConfig") -> str:
        """What the aggregator sees of one site's input when the secure sum is plain."""
        return ViewKind.PLAIN.value

    @classmethod
    def unit_for(cls, cfg: "PrivacyConfig") -> str:
        """The privacy unit of this config (default: the class's :attr:`unit`)."""
        return cls.unit

    @classmethod
    def adjacency(cls, cfg: "PrivacyConfig") -> str:
        """The neighbouring relation the reported ε is for (one of :class:`Adjacency`)."""
        return Adjacency.ADD_REMOVE

    @classmethod
    def guarantee(cls, cfg: "PrivacyConfig") -> list[str]:
        """Plain-language guarantee and the assumptions it rests on."""
        raise NotImplementedError

    # -- run time --------------------------------------------------------------------------

    def __init__(self, layer: "DpPrivacyLayer") -> None:
        self.layer = layer
        self.config = layer.config

    def validate_plan(self) -> None:
        """Refuse a run plan (sites, weighting, rounds) this mechanism cannot honour."""

    def round_event(self, site_id: str, sigma: float) -> dp_event.DpEvent:
        """The DpEvent of one planned round at ``site_id`` with noise multiplier ``sigma``
        (what the calibration solves for and the ledger is charged)."""
        raise NotImplementedError

    def after_calibration(self) -> None:
        """Called once the per-site noise multipliers are known (e.g. to split σ between releases)."""

    def training_hook(self, site: "DpSite") -> Any:
        """A hook wrapping the site's local training (DP-SGD), or ``None``."""
        return None

    def local_update(self, site: "DpSite", model: "torch.nn.Module", x: "torch.Tensor", y: "torch.Tensor",
                     loss_fn: Any, round: int) -> tuple[np.ndarray, float, dp_event.DpEvent] | None:
        """Replace local training: ``(values, weight, event)`` this site sends, or ``None``."""
        return None

    def transform(self, site: "DpSite", delta: np.ndarray, n_examples: int,
                  round: int) -> tuple[np.ndarray, float, dp_event.DpEvent | None]:
        """The site's update as it enters the secure sum, its weight and this round's event
        (``None``: keep the event :meth:`local_update` set)."""
        raise NotImplementedError

    def release(self, result: SumResult, round: int, contributors: list[str], expected: Sequence[str]) -> np.ndarray:
        """The secure sum's result -> the vector the server step applies (central noise, checks)."""
        return result.mean


#: name -> mechanism class. Built in :mod:`.registry`; extend with :func:`register_mechanism`.
REGISTRY: dict[str, type[DpMechanism]] = {}
#: name -> allowed noise placements (a view of :data:`REGISTRY`, kept for callers of the old module)
MECHANISMS: dict[str, tuple[str, ...]] = {}


def register_mechanism(cls: type[DpMechanism]) -> type[DpMechanism]:
    """Add a mechanism class under ``cls.name``; refuse a name already taken or an incomplete class."""
    if not (isinstance(cls, type) and issubclass(cls, DpMechanism)):
        raise TypeError(f"expected a DpMechanism subclass, found {cls!r}")
    if not cls.name or not cls.placements:
        raise ValueError(f"{cls.__name__}: set 'name' and 'placements' before registering")
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"DP mechanism {cls.name!r} is already registered ({REGISTRY[cls.name].__name__}); "
                         "a registered name never changes meaning: choose a new one")
    clash = sorted(set(COMMON_KEYS) & {k.name for k in cls.keys})
    if clash:
        raise ValueError(f"{cls.__name__}: key(s) {clash} are common [privacy] keys")
    REGISTRY[cls.name] = cls
    MECHANISMS[cls.name] = tuple(cls.placements)
    return cls


def mechanism_class(name: str) -> type[DpMechanism]:
    """The registered class of ``name``; unknown names fail loudly with the known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown DP mechanism {name!r}; registered mechanisms are {sorted(REGISTRY)}") from None
