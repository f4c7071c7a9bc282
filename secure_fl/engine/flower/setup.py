"""Protocol setup for a deployed party: its provisioned keys instead of in-memory ones.

A CKKS party gets its kit's context (a site's secret one, the aggregator's public one) and, at a
site, the file that counts the sums released under that key set; a SecAgg party gets the
federation's Ed25519 identity keys (and a site its own signing key), so advertised keys are signed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ...crypto.ckks import load_context
from ...errors import ProtocolError
from ...protocol.base import SecureSum
from ...protocol.ckks import CkksSum
from ...protocol.secagg import SecAggSum

__all__ = ["RELEASE_LOG", "setup_protocol"]

#: file beside a site's secret CKKS context that counts the sums released under that key set
RELEASE_LOG = "releases.json"


def setup_protocol(
    protocol: SecureSum,
    site_ids: Sequence[str],
    dim: int,
    *,
    ckks_file: Path | None = None,
    ckks_kind: str = "secret",
    identities: Mapping[str, bytes] | None = None,
    signing_keys: Mapping[str, bytes] | None = None,
) -> None:
    """Set ``protocol`` up for one deployed party from its kit's files."""
    if isinstance(protocol, CkksSum):
        if ckks_file is None:
            raise ProtocolError("a deployed CKKS party needs its kit's context file")
        ctx = load_context(ckks_file, ckks_kind)  # type: ignore[arg-type]
        if ctx.preset.name != protocol.preset:
            raise ProtocolError(
                f"{ckks_file}: the federation's CKKS key set uses preset {ctx.preset.name!r}, the protocol spec "
                f"asks for {protocol.preset!r}; provision with ckks_preset = {protocol.preset!r} "
                f"or use a spec with preset = {ctx.preset.name!r}"
            )
        # a site counts the sums released under its key set beside the key (KIT/ckks/releases.json): the count
        # must outlive this process and this run, or the flooding budget (max_released_rounds) restarts with them
        release_log = Path(ckks_file).parent / RELEASE_LOG if ckks_kind == "secret" else None
        protocol.setup(site_ids, dim, context=ctx, release_log=release_log)
    elif isinstance(protocol, SecAggSum) and identities is not None:
        protocol.setup(site_ids, dim, identities=dict(identities), signing_keys=dict(signing_keys or {}))
    else:
        protocol.setup(site_ids, dim)
