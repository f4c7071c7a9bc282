"""The privacy layer of a deployed run: the local engine's layer, with each site's own ledger and budget.

A site owns its privacy (docs/architecture.md, "Rules"): in a deployment its ledger lives in its
kit's ledger folder (``KIT/ledger/ledger.sqlite`` or the federation file's ``ledger_dir``),
never in a run folder and never reset by the tool, and its budget (ε_max, δ) is the one it was
provisioned with (``budget_epsilon`` / ``budget_delta`` in the federation file), not the
experiment's or the spec's (``epsilon_budget`` / ``site_budgets`` are ignored in a deployment).
Everything else — calibration, training hook, transform, charge before the update leaves,
release — is :func:`~secure_fl.protocol.dp.build_privacy_layer`, exactly as
:class:`~secure_fl.run.federation.Federation` builds it (same plan, same noise seed), so a
deployed DP run and a local one compute the same thing.

Charges are keyed by (run, round): :class:`~.ledger.RunLedger` writes ``deployed run RUN round R`` in the
charge's note and never charges the same (run, round) twice, so a replayed round (an aggregator
restarted mid-round, or a round resumed after a crash) costs nothing more. That is sound because
the site re-sends the *same* update for a replayed round (it keeps the round's update in its run
state, written after the charge and before anything is sent; see :mod:`.site`): releasing one
noised update twice is post-processing. A crash after the charge but before the update was
kept means nothing left the site; the round's new update is then covered by that same charge.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...deploy.kit import Kit, KitError
from ...errors import ProtocolError, SpecError
from ...protocol.pipeline import NoPrivacy
from ...protocol.spec import ProtocolSpec

if TYPE_CHECKING:  # pragma: no cover
    from ...privacy.ledger import Budget, PrivacyLedger

__all__ = ["kit_budget", "check_site_may_run", "deployed_privacy_layer", "LEDGER_FILE"]

LEDGER_FILE = "ledger.sqlite"


def kit_budget(kit: Kit) -> "Budget":
    """The site's own budget from its kit; a site without one runs no DP protocol."""
    from ...privacy.ledger import Budget

    raw = kit.site_config.get("budget")
    if not isinstance(raw, dict):
        raise KitError(
            f"site {kit.name!r} has no privacy budget in its kit ({kit.path}/kit.json): a DP protocol charges the "
            "site's ledger against the site's own budget; provision the site with budget_epsilon and budget_delta "
            "in its [sites.NAME] table"
        )
    try:
        return Budget(float(raw["epsilon"]), float(raw["delta"]), str(raw.get("accountant", "pld")))
    except (KeyError, TypeError, ValueError) as exc:
        raise KitError(f"{kit.path}/kit.json: site.budget is unusable ({exc})") from exc


def check_site_may_run(kit: Kit, spec: ProtocolSpec, releases_to_sites: bool) -> "Budget | None":
    """Refuse, at the site, a DP spec its kit does not allow; return its budget (``None`` without DP)."""
    cfg = spec.privacy
    if cfg is None:
        return None
    budget = kit_budget(kit)
    if cfg.delta > budget.delta:
        raise SpecError(
            f"protocol {spec.name!r} (spec hash {spec.spec_hash}) states δ={cfg.delta:g}, above site {kit.name!r}'s "
            f"δ cap {budget.delta:g} (budget_delta in its kit)"
        )
    if not cfg.secure_noise and not kit.site_config.get("allow_seeded_noise", False):
        raise SpecError(
            f"protocol {spec.name!r} has [privacy].secure_noise = false: its noise would come from a seed the "
            f"aggregator sends, so it protects no one; site {kit.name!r} runs it only if provisioned with "
            "allow_seeded_noise = true (tests and reproducibility studies)"
        )
    if cfg.noise == "central" and releases_to_sites:
        raise SpecError(
            f"protocol {spec.name!r}: central noise with the sum released to the sites would have every site draw "
            "its own central noise (the sites' models would differ); the Flower engine refuses it"
        )
    return budget


def _no_ledger(site: str) -> "PrivacyLedger":
    raise ProtocolError(f"the aggregator keeps no privacy ledger (asked for site {site!r}'s): each site keeps its own")


def deployed_privacy_layer(spec: ProtocolSpec, exp: Any, seed: int, site_sizes: Mapping[str, int], run_dir: Path,
                           ledger_for: Any = None, noise_multipliers: Mapping[str, float] | None = None) -> Any:
    """The run's privacy layer as the local engine builds it (``run/federation.py``), sites named by the roster.

    ``ledger_for(site)`` opens a site's ledger (at a site: its kit ledger); the aggregator passes none
    and its layer refuses to open one. The experiment's and spec's budgets are dropped: a site's budget
    comes from its kit (:func:`kit_budget`). ``noise_multipliers``: σ per site from an earlier calibration
    of the same plan and sizes (the site keeps them in its run state; calibrating takes seconds).
    """
    if spec.privacy is None:
        return NoPrivacy(spec.aggregation.weighting)
    from ...protocol.dp import build_privacy_layer
    from ...run.federation import derive_seed
    from ...training.config import RunPlan

    cfg = dataclasses.replace(spec.privacy, epsilon_budget=None, site_budgets={})
    return build_privacy_layer(
        cfg, weighting=spec.aggregation.weighting, plan=RunPlan(exp.rounds, exp.federation.fraction, exp.training),
        site_sizes={str(s): int(n) for s, n in site_sizes.items()}, run_dir=run_dir,
        noise_rng=np.random.default_rng(derive_seed(seed, 0xD9)), protocol_name=spec.name, spec_hash=spec.spec_hash,
        ledger_for=ledger_for or _no_ledger, noise_multipliers=noise_multipliers,
    )
