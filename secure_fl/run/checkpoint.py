"""The state of a federation after a finished round, saved so ``--resume`` can continue a crashed run.

What a round's result depends on besides the round number: the global weights, the server
optimiser's state (FedAdam moments), the site-selection generator, and, for DP protocols, the
privacy layer's seeded noise generators (``secure_noise = false``), adaptive-clipping state and
Opacus accountant histories. Training randomness is already per round (``derive_seed(seed, r, i)``)
and the ledgers are their own SQLite files, so neither needs saving. Generators are saved as their
bit-generator state, which keeps the results of every existing seed unchanged (re-deriving the
site-selection stream per round would have changed them).

With ``secure_noise = true`` noise comes from the OS CSPRNG: a resumed run then draws fresh noise
and its weights differ from an uninterrupted run's (its ledger charges do not).

``checkpoint.pt`` is written atomically (temp file + ``os.replace``) before the round's line is
appended to ``rounds.jsonl``; it carries that line, so a crash between the two loses nothing.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["save_checkpoint", "load_checkpoint", "federation_state", "restore_federation"]

CHECKPOINT = "checkpoint.pt"


def save_checkpoint(folder: Path, state: dict[str, Any]) -> None:
    tmp = folder / f".{CHECKPOINT}.{os.getpid()}.tmp"
    torch.save(state, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, folder / CHECKPOINT)


def load_checkpoint(folder: Path) -> dict[str, Any] | None:
    path = folder / CHECKPOINT
    if not path.exists():
        return None
    return torch.load(path, weights_only=False)  # type: ignore[no-any-return]


def _rng_state(rng: Any) -> Any:
    return copy.deepcopy(rng.bit_generator.state) if isinstance(rng, np.random.Generator) else None


def _set_rng(rng: Any, state: Any) -> None:
    if isinstance(rng, np.random.Generator) and state is not None:
        rng.bit_generator.state = state


def _privacy_state(layer: Any) -> dict[str, Any]:
    """Seeded generators and adaptive state of a DP privacy layer (nothing for ``NoPrivacy``)."""
    sites = getattr(layer, "_sites", None)
    if sites is None:
        return {}
    adaptive = getattr(layer, "adaptive", None)
    out: dict[str, Any] = {
        "server_rng": _rng_state(getattr(getattr(layer, "server_source", None), "rng", None)),
        "adaptive": copy.deepcopy(adaptive.__dict__) if adaptive is not None else None,
        "bits": copy.deepcopy(getattr(layer, "_bits", {})),
        "sites": {},
    }
    for name, sp in sites.items():
        hook = getattr(sp, "_hook", None)
        accountant = getattr(hook, "opacus_accountant", None)
        out["sites"][name] = {
            "rng": _rng_state(getattr(getattr(sp, "source", None), "rng", None)),
            "opacus_history": copy.deepcopy(getattr(accountant, "history", None)),
        }
    return out


def _restore_privacy(layer: Any, state: dict[str, Any]) -> None:
    if not state or getattr(layer, "_sites", None) is None:
        return
    _set_rng(getattr(getattr(layer, "server_source", None), "rng", None), state.get("server_rng"))
    if state.get("adaptive") is not None and getattr(layer, "adaptive", None) is not None:
        layer.adaptive.__dict__.update(copy.deepcopy(state["adaptive"]))
    layer._bits = copy.deepcopy(state.get("bits", {}))
    for name, s in state.get("sites", {}).items():
        sp = layer.site(name)  # built now, as it was by the round that first picked it
        _set_rng(getattr(getattr(sp, "source", None), "rng", None), s.get("rng"))
        accountant = getattr(getattr(sp, "_hook", None), "opacus_accountant", None)
        if accountant is not None and s.get("opacus_history") is not None:
            accountant.history = copy.deepcopy(s["opacus_history"])


def federation_state(fed: Any) -> dict[str, Any]:
    """Everything of ``fed`` (a :class:`~secure_fl.run.federation.Federation`) the next round depends on."""
    return {
        "weights": torch.from_numpy(np.array(fed.weights, copy=True)),
        "server": copy.deepcopy(fed.server.__dict__),
        "rng": _rng_state(fed.rng),
        "privacy": _privacy_state(fed.privacy),
    }


def restore_federation(fed: Any, state: dict[str, Any]) -> None:
    fed.weights = state["weights"].numpy().copy()
    fed.server.__dict__.update(copy.deepcopy(state["server"]))
    _set_rng(fed.rng, state["rng"])
    _restore_privacy(fed.privacy, state.get("privacy", {}))
