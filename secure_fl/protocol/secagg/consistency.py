"""What a site signs with its long-term identity key, and the checks on others' signatures.

Bonawitz et al., CCS 2017, §6.2 (the actively secure variant): public keys reach a site only
through the aggregator, so each site signs its advertised keys with a long-term identity key
whose public half every site holds from provisioning (:mod:`secure_fl.crypto.identity`);
a site verifies every neighbour's advertisement and refuses one that does not verify, so an
aggregator that swaps in keys of its own (to open the shares a site seals, then unmask its
input) is caught before any share is sealed. In the *consistency check* every survivor signs
the survivor set U3 it was told; a site reveals unmasking shares only after it verifies at
least t valid signatures on the same U3 from its neighbourhood, so the aggregator cannot tell
different sites different stories about who survived.

Each statement is length-prefixed and domain-separated (``aead.associated_data``) and binds
protocol name and round, so a signature cannot be replayed into another round, protocol or
role. The assumption: Ed25519 is EUF-CMA and identity keys are provisioned authentically.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from ...crypto import identity
from ...crypto.aead import associated_data

__all__ = ["advert_statement", "survivors_statement", "valid_signers"]


def advert_statement(protocol: str, round: int, site: str, c_pk: bytes, s_pk: bytes, commit: bytes) -> bytes:
    """The bytes a site signs when it advertises its round keys and self-mask commitment."""
    return associated_data("secure-fl/secagg/advertise/v1", protocol, round, site, c_pk, s_pk, commit)


def survivors_statement(protocol: str, round: int, survivors: Sequence[str]) -> bytes:
    """The bytes a site signs in the consistency check: the sorted survivor set U3."""
    return associated_data("secure-fl/secagg/survivors/v1", protocol, round, *sorted(survivors))


def valid_signers(
    statement: bytes, signatures: Iterable[tuple[str, bytes]], identities: Mapping[str, bytes], allowed: Iterable[str]
) -> set[str]:
    """The sites in ``allowed`` whose signature on ``statement`` verifies under their identity key."""
    ok = set(allowed)
    return {
        s for s, sig in signatures if s in ok and s in identities and identity.verify(identities[s], statement, sig)
    }
