"""The two halves of a round, shared by the local engine and the Flower engine.

* :func:`site_update` is what one site does before its update enters the secure sum: the
  privacy layer's ``before_round``, local training (or the layer's own ``local_update``),
  the update transform and the ledger charge, written *before* the update leaves the site.
* :func:`server_update` is what the key holder of the released sum does with it: the privacy
  layer's release (central noise, minimum-contributor check) and the server optimiser step.

:class:`~secure_fl.run.federation.Federation` calls both in one process; in a deployment the
site half runs in each ClientApp and the server half in the ServerApp (or, for protocols that
release the sum to the sites only, at every site).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from torch import nn

from ..aggregation.server import ServerOptimizer
from ..protocol.base import SumResult
from ..protocol.pipeline import PrivacyLayer, SitePrivacy
from ..tasks.base import SiteData
from ..training.config import TrainingConfig
from ..training.flat import load_flat
from ..training.local import LocalResult, train_local

__all__ = ["site_update", "server_update"]


def site_update(
    model: nn.Module,
    weights: np.ndarray,
    site: SiteData,
    privacy: SitePrivacy,
    training: TrainingConfig,
    loss_fn: nn.Module,
    seed: int,
    round: int,
    train: Callable[..., LocalResult] = train_local,
) -> tuple[np.ndarray, float, dict[str, float]]:
    """(values, weight, training metrics) that ``site`` sends into the secure sum for ``round``.

    ``seed`` drives local training only; ``train`` is the local trainer (default
    :func:`~secure_fl.training.local.train_local`). Raises :class:`~secure_fl.errors.SiteRejected` when
    the site's privacy layer refuses the round (e.g. its budget would be exceeded).
    """
    privacy.before_round(round)
    load_flat(model, weights)
    local_update = getattr(privacy, "local_update", None)
    contribution = local_update(model, site.x_train, site.y_train, loss_fn, round) if local_update else None
    metrics: dict[str, float] = {}
    if contribution is None:
        hook = privacy.training_hook()
        use_people = getattr(hook, "use_people", None)
        if use_people is not None:  # person-level DP-SGD samples and clips per person; None: the task has no ids
            use_people(None if site.persons is None else site.person_ids())
        res = train(model, site.x_train, site.y_train, training, loss_fn, seed, hook)
        values, weight = privacy.transform(res.delta, res.n_examples, round)
        metrics = res.metrics
    else:
        values, weight = contribution
    privacy.charge(round)  # the ledger is written before the update leaves the site
    return values, weight, metrics


def server_update(
    privacy: PrivacyLayer,
    server: ServerOptimizer,
    weights: np.ndarray,
    result: SumResult,
    round: int,
    expected_sites: Sequence[str],
) -> np.ndarray:
    """The next global weights from a released sum (may raise RoundAborted from the privacy layer)."""
    mean = privacy.release(result, round, list(expected_sites))
    return server.step(weights, mean)


