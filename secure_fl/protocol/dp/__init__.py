"""The ``[privacy]`` layer of a protocol spec: parsing, validation against the secure sum, and the
per-site privacy objects the engine drives (see :mod:`secure_fl.protocol.pipeline`).

DP mechanisms are small classes in a registry (as Opacus's ``register_accountant`` and
``dp_accounting``'s events): each one, in its own module, declares its spec keys, where its
noise may be placed, its validation against the secure sum, what the aggregator sees, its privacy
unit and neighbouring relation, its guarantee text, its round event (what calibration solves for
and the ledger is charged), its site-side update and its release.

========================  ==============  ===============================================
``mechanism``             ``noise``       module
========================  ==============  ===============================================
``dp-sgd``                local           :mod:`.dp_sgd` (patient-level, Opacus DP-SGD)
``dp-fedavg``             local, central  :mod:`.dp_fedavg` (site-level, McMahan et al.)
``distributed-dp-sgd``    distributed     :mod:`.distributed` (patient-level, CKKS sum)
``ddg``                   distributed     :mod:`.ddg` (site-level, discrete Gaussian over SecAgg+)
========================  ==============  ===============================================

How to add a mechanism
----------------------
1. Write ``secure_fl/protocol/dp/<name>.py`` with one subclass of :class:`DpMechanism`:
   set ``name`` (the ``[privacy].mechanism`` value, never reused with another meaning),
   ``placements`` (allowed ``noise`` values), ``unit`` ("patient" or "site") and ``keys``
   (a tuple of :class:`Key`: name, type, default, check, ``required=<why>``). Override the
   spec-time classmethods ``validate`` (SpecError naming the key), ``constrain`` (push
   requirements into the secure sum, e.g. ``secure_sum.require_contributors(k)``),
   ``aggregator_view``, ``adjacency`` and ``guarantee``; and the run-time methods
   ``round_event`` (a ``dp_accounting`` event), ``transform`` or ``local_update`` (returning
   the round's event, charged to the site's ledger *before* the update leaves) and ``release``.
   Draw every noise sample from ``site.source`` / ``layer.server_source``
   (:class:`~secure_fl.privacy.noise.NoiseSource`); put the math in ``secure_fl/privacy/``.
2. Add one line to :mod:`.registry`: ``register_mechanism(MyMechanism),``.
3. Write ``protocols/<spec>.toml`` stating adversary, collusion bound, minimum contributors,
   adjacency and failure probability, and a ``tests/test_dp_<name>.py``.

Noise comes from the OS CSPRNG when ``secure_noise = true`` (the default) and from the engine's
seeded ``noise_rng`` when ``false`` (reproducible experiments and tests). Every round's DpEvent is
written to the site's ledger (``run_dir/sites/SITE/ledger.sqlite``) before its update leaves the site.
"""

from __future__ import annotations

from .config import PrivacyConfig, parse_privacy
from .layer import DpPrivacyLayer, DpSite, build_privacy_layer
from .mechanism import MECHANISMS, REGISTRY, Adjacency, DpMechanism, Key, mechanism_class, register_mechanism
from .registry import BUILTIN

__all__ = [
    "MECHANISMS",
    "REGISTRY",
    "BUILTIN",
    "Adjacency",
    "DpMechanism",
    "Key",
    "PrivacyConfig",
    "DpPrivacyLayer",
    "DpSite",
    "build_privacy_layer",
    "mechanism_class",
    "parse_privacy",
    "register_mechanism",
]
