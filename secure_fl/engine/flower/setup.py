"""Protocol setup for a deployed party: its provisioned keys instead of in-memory ones.

The keyword arguments ``CkksSum.setup(..., context=)`` (a site's secret or the aggregator's
public CKKS context) and ``SecAggSum.setup(..., identities=, signing_keys=)`` (Ed25519
identity keys) are being added to the protocols; :func:`setup_protocol` calls them when the
installed protocol has them (``inspect.signature``) and otherwise falls back to what the
protocol offers today: ``CkksSum.setup(keys=)`` with a key set rebuilt from the kit's context
file, and ``SecAggSum.setup`` without identities (then advertised keys are not signed).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path

from ...crypto.ckks import CkksKeys, _public_bytes, _read_header, load_context
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
) -> dict[str, bool]:
    """Set ``protocol`` up for one deployed party; returns which new APIs were used."""
    params = inspect.signature(protocol.setup).parameters
    used = {"ckks_context": False, "signed_keys": False}
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
        if "context" in params:
            protocol.setup(site_ids, dim, context=ctx, release_log=release_log)
            used["ckks_context"] = True
        else:
            header, body = _read_header(Path(ckks_file))
            key_id = bytes.fromhex(str(header["key_id"]))
            public = _public_bytes(ctx.context, ctx.preset) if ckks_kind == "secret" else body
            # the aggregator has no secret bytes: its key set carries the public context twice
            # (the protocol only ever hands the aggregator party the public one)
            keys = CkksKeys(ctx.preset, key_id, body, public)
            if keys.fingerprint != ctx.fingerprint:
                raise ProtocolError(f"{ckks_file}: rebuilt key set has fingerprint {keys.fingerprint}, "
                                    f"the file says {ctx.fingerprint}")
            protocol.setup(site_ids, dim, keys=keys, release_log=release_log)
        return used
    if isinstance(protocol, SecAggSum):
        if "identities" in params and identities is not None:
            protocol.setup(site_ids, dim, identities=dict(identities),  # type: ignore[call-arg]
                           signing_keys=dict(signing_keys or {}))
            used["signed_keys"] = True
        else:
            protocol.setup(site_ids, dim)
        return used
    protocol.setup(site_ids, dim)
    return used
