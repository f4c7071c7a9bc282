"""One site's side of a SecAgg(+) round (Bonawitz et al. 2017, Fig. 4 and §6.2; Bell et al. 2020).

The site holds its secrets and reveals, per peer, at most one kind of share (its self-mask
seed b if the peer survived, its mask key s_sk if it dropped), and only after checking, itself,
what the aggregator claims: every neighbour's keys carry that neighbour's signature, the
survivor set has at least :attr:`~SecAggSum.min_survivors` members (so the released sum covers
at least two honest inputs), its neighbourhood keeps t of them, and (consistency check) t of
its neighbourhood signed the same survivor set.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ...crypto import aead, identity, kex, prg, shamir
from ...crypto.quantize import to_wire
from ...errors import SiteRejected
from ..base import AGGREGATOR, Message, SiteParty, StagedParty, ViewKind, handles
from . import wire
from .consistency import advert_statement, survivors_statement, valid_signers
from .keys import SECRET, SHARE, pair_seed, seed_commitment, self_seed, share_ad, share_key
from .stages import (
    ADVERTISE_KEYS,
    ANNOUNCE_SURVIVORS,
    MASKED_INPUT,
    REQUEST_UNMASK,
    ROUTE_KEYS,
    ROUTE_SHARES,
    SHARE_KEYS,
    SIGN_SURVIVORS,
    UNMASK,
)

if TYPE_CHECKING:
    from .sums import SecAggSum

__all__ = ["SecAggSite"]


class SecAggSite(StagedParty, SiteParty):
    """One site's side of a SecAgg(+) round. Holds its secrets; reveals at most one share kind per peer."""

    def __init__(
        self,
        proto: "SecAggSum",
        site_id: str,
        round: int,
        values: np.ndarray,
        weight: float,
        rng: np.random.Generator,
        signing_key: bytes,
    ) -> None:
        self.proto, self.site_id, self.round = proto, site_id, round
        self._values: np.ndarray | None = values
        self._weight, self._rng, self._signing_key = weight, rng, signing_key
        self._sequence(proto.stages, "sites", f"{proto.name} site {site_id!r} (round {round})")
        self._t = proto.threshold_value
        self._quantizer = proto._require_setup()
        self._neighbour_keys: dict[str, tuple[bytes, bytes, bytes]] = {}
        self._peers: list[str] = []
        self._held: dict[str, tuple[bytes, bytes]] = {}  # owner -> (share of b, share of s_sk)
        self._revealed: dict[str, int] = {}  # owner -> share kind revealed to the aggregator
        self._signed_u3: list[str] | None = None
        #: neighbours whose signed keys or shares failed checks, with the reason
        self.refused: dict[str, str] = {}

    def _reject(self, reason: str) -> SiteRejected:
        return SiteRejected(self.site_id, reason)

    def _from_aggregator(self, inbox: Sequence[Message], stage: str) -> Message:
        found = [
            m
            for m in inbox
            if m.sender == AGGREGATOR
            and m.stage == stage
            and m.round == self.round
            and m.receiver == self.site_id
            and m.kind is ViewKind.PUBLIC
        ]
        if len(found) != 1:
            raise self._reject(
                f"expected one {stage!r} message from the aggregator for round {self.round}, got {len(found)}"
            )
        return found[0]

    def _msg(self, stage: str, payload: bytes, kind: ViewKind) -> Message:
        return Message(self.round, stage, self.site_id, AGGREGATOR, payload, kind)

    # 1. advertise keys, signed with the long-term identity key
    @handles(ADVERTISE_KEYS)
    def _advertise(self, inbox: Sequence[Message]) -> list[Message]:
        if self._values is None:  # the first stage (StagedParty runs it once): the input is still here
            raise self._reject("the input was already encoded")
        try:  # checked now, quantised only when masking: between stages the site keeps nothing but its input
            self._quantizer.check(self._values, self._weight, self.proto.dim)
        except ValueError as exc:
            raise self._reject(f"input refused by the quantizer: {exc}") from exc
        self._c, self._s = kex.generate_keypair(), kex.generate_keypair()
        self._b = os.urandom(SECRET)
        commit = seed_commitment(self._b)
        statement = advert_statement(self.proto.name, self.round, self.site_id, self._c.public, self._s.public, commit)
        sig = identity.sign(self._signing_key, statement)
        return [
            self._msg(
                ADVERTISE_KEYS, wire.encode_advertise(self._c.public, self._s.public, commit, sig), ViewKind.PUBLIC
            )
        ]

    # 3. share keys with the neighbours whose signed keys verify
    @handles(SHARE_KEYS)
    def _share_keys(self, inbox: Sequence[Message]) -> list[Message]:
        msg = self._from_aggregator(inbox, ROUTE_KEYS)
        try:
            entries = wire.decode_keys(msg.payload)
        except ValueError as exc:
            raise self._reject(str(exc)) from exc
        ids = [e[0] for e in entries]
        if len(set(ids)) != len(ids) or self.site_id in ids:
            raise self._reject("key list repeats a site or lists this site as its own neighbour")
        if not set(ids) <= set(self.proto.roster):
            raise self._reject(f"key list names sites outside the roster: {sorted(set(ids) - set(self.proto.roster))}")
        if len(ids) > self.proto.max_neighbours:
            raise self._reject(f"key list has {len(ids)} neighbours, more than the {self.proto.max_neighbours} allowed")
        keys = [k for e in entries for k in (e[1], e[2])] + [self._c.public, self._s.public]
        if len(set(keys)) != len(keys):
            raise self._reject("key list repeats a public key (or replays this site's own)")
        reports = []
        for i, c, s, h, sig in entries:
            if identity.verify(
                self.proto.identities[i], advert_statement(self.proto.name, self.round, i, c, s, h), sig
            ):
                self._neighbour_keys[i] = (c, s, h)
            else:
                reason = "its advertised keys do not carry a valid signature by its identity key (substituted keys?)"
                self.refused[i] = reason
                reports.append((i, reason))
        accepted = sorted(self._neighbour_keys)
        if len(accepted) + 1 < self._t:
            raise self._reject(
                f"only {len(accepted)} neighbours advertised validly signed keys: with this site "
                f"{len(accepted) + 1} < threshold t = {self._t}"
            )
        holders = sorted([self.site_id, *accepted])
        b_shares = shamir.split(self._b, self._t, len(holders))
        s_shares = shamir.split(self._s.private, self._t, len(holders))
        out = []
        for holder, bs, ss in zip(holders, b_shares, s_shares):
            if holder == self.site_id:
                self._held[holder] = (bs.to_bytes(), ss.to_bytes())
                continue
            key = share_key(self._c.private, self._neighbour_keys[holder][0], self.proto.name, self.round)
            sealed = aead.seal(
                key, bs.to_bytes() + ss.to_bytes(), share_ad(self.proto.name, self.round, self.site_id, holder)
            )
            out.append(self._msg(SHARE_KEYS, wire.encode_relay(holder, sealed), ViewKind.CIPHERTEXT))
        if reports:
            out.append(self._msg(SHARE_KEYS, wire.encode_reports(reports), ViewKind.PUBLIC))
        return out

    # 5. masked input
    @handles(MASKED_INPUT)
    def _masked_input(self, inbox: Sequence[Message]) -> list[Message]:
        if self._values is None:
            raise self._reject("the input was already masked and sent")
        msg = self._from_aggregator(inbox, ROUTE_SHARES)
        try:
            peers = wire.decode_ids(msg.payload, "peer list")
        except ValueError as exc:
            raise self._reject(str(exc)) from exc
        if len(set(peers)) != len(peers) or not set(peers) <= set(self._neighbour_keys):
            raise self._reject("peer list repeats a site or names a site that is not an accepted neighbour")
        if len(peers) + 1 < self._t:
            raise self._reject(
                f"only {len(peers)} neighbours shared keys: {len(peers) + 1} < threshold t = {self._t}; "
                "refusing to send a masked input"
            )
        self._peers = peers
        self._open_shares(inbox, peers)
        q = self._quantizer
        values, self._values = self._values, None
        try:
            y = q.encode(values, self._weight, self._rng, self.proto.integer_noise)  # a fresh vector: masked in place
        except ValueError as exc:
            raise self._reject(f"input refused by the quantizer: {exc}") from exc
        del values
        prg.add_mask(y, self_seed(self._b, self.round), q.modulus_bits)
        for peer in peers:  # masks depend only on public keys: a refused share does not change them
            seed = pair_seed(self._s.private, self._neighbour_keys[peer][1], self.round, self.site_id, peer)
            prg.add_mask(y, seed, q.modulus_bits, subtract=self.site_id > peer)
        y &= q.dtype.type(q.modulus_mask)
        payload = wire.encode_masked(sorted(self.refused.items()), to_wire(y, q.modulus_bits))
        return [self._msg(MASKED_INPUT, payload, ViewKind.MASKED)]

    def _open_shares(self, inbox: Sequence[Message], peers: Sequence[str]) -> None:
        by_origin: dict[str, list[tuple[Message, bytes]]] = {}
        for m in inbox:
            if m.kind is not ViewKind.CIPHERTEXT:
                continue
            try:
                origin, sealed = wire.decode_relay(m.payload)
            except ValueError:
                continue  # no origin to blame: the missing share is reported below
            by_origin.setdefault(origin, []).append((m, sealed))
        for origin in sorted(set(by_origin) - set(peers)):
            self.refused.setdefault(origin, "a share arrived from a site that is not a peer of this round")
        for peer in peers:
            got = by_origin.get(peer, [])
            if len(got) != 1:
                self.refused[peer] = (
                    "no share ciphertext arrived" if not got else f"{len(got)} share ciphertexts arrived (replay)"
                )
                continue
            m, sealed = got[0]
            if m.round != self.round or m.stage != ROUTE_SHARES or m.receiver != self.site_id:
                self.refused[peer] = (
                    f"share message labelled round {m.round}, stage {m.stage!r}, receiver {m.receiver!r}"
                )
                continue
            key = share_key(self._c.private, self._neighbour_keys[peer][0], self.proto.name, self.round)
            try:
                plain = aead.open_sealed(key, sealed, share_ad(self.proto.name, self.round, peer, self.site_id))
            except aead.AuthenticationError as exc:
                self.refused[peer] = str(exc)
                continue
            if len(plain) != 2 * SHARE:
                self.refused[peer] = f"decrypted share is {len(plain)} bytes, expected {2 * SHARE}"
                continue
            self._held[peer] = (plain[:SHARE], plain[SHARE:])

    def _check_survivors(self, survivors: Sequence[str]) -> tuple[set[str], set[str]]:
        """Refuse a survivor set U3 that would make the released sum reveal too much; return
        (survivors in this neighbourhood, peers declared dropped)."""
        u3 = set(survivors)
        if len(u3) != len(survivors):
            raise self._reject("survivor set lists a site twice")
        if self.site_id not in u3:
            raise self._reject("survivor set does not list this site")
        if not u3 <= set(self.proto.roster):
            raise self._reject(f"survivor set names sites outside the roster: {sorted(u3 - set(self.proto.roster))}")
        need = self.proto.min_survivors
        if len(u3) < need:
            raise self._reject(
                f"only {len(u3)} survivors < {need} needed ({self.proto._survivor_rule()}): the sum would reveal "
                "too few honest inputs; refusing to unmask"
            )
        mine = u3 & (set(self._peers) | {self.site_id})
        if len(mine) < self._t:
            raise self._reject(
                f"only {len(mine)} survivors in this neighbourhood < threshold t = {self._t}; refusing to unmask"
            )
        return mine, set(self._peers) - u3

    # 6. (consistency check) sign the survivor set
    @handles(SIGN_SURVIVORS)
    def _sign_survivors(self, inbox: Sequence[Message]) -> list[Message]:
        msg = self._from_aggregator(inbox, ANNOUNCE_SURVIVORS)
        try:
            u3 = wire.decode_ids(msg.payload, "survivor set")
        except ValueError as exc:
            raise self._reject(str(exc)) from exc
        self._check_survivors(u3)
        self._signed_u3 = sorted(u3)
        sig = identity.sign(self._signing_key, survivors_statement(self.proto.name, self.round, self._signed_u3))
        return [self._msg(SIGN_SURVIVORS, wire.encode_signature(sig), ViewKind.PUBLIC)]

    # 7. unmask
    @handles(UNMASK)
    def _unmask(self, inbox: Sequence[Message]) -> list[Message]:
        msg = self._from_aggregator(inbox, REQUEST_UNMASK)
        try:
            u3, signatures = wire.decode_request(msg.payload)
        except ValueError as exc:
            raise self._reject(str(exc)) from exc
        survivors, dropped = self._check_survivors(u3)
        if self.proto.consistency_check:
            if sorted(u3) != self._signed_u3:
                raise self._reject("unmask request names a survivor set other than the one this site signed")
            statement = survivors_statement(self.proto.name, self.round, self._signed_u3)
            signed = valid_signers(statement, signatures, self.proto.identities, survivors - {self.site_id}) | {
                self.site_id
            }
            if len(signed) < self._t:
                raise self._reject(
                    f"only {len(signed)} valid signatures on the survivor set from this neighbourhood < threshold "
                    f"t = {self._t} (Bonawitz et al. §6.2 consistency check); refusing to unmask"
                )
        entries = []
        for owner in sorted(survivors | dropped):
            kind = wire.SHARE_OF_SEED if owner in survivors else wire.SHARE_OF_KEY
            if self._revealed.get(owner, kind) != kind:  # never both kinds for one peer
                raise self._reject(f"asked for both kinds of share of site {owner!r}")
            if owner not in self._held:
                continue  # its share never arrived or was refused
            self._revealed[owner] = kind
            entries.append((owner, kind, self._held[owner][kind]))
        return [self._msg(UNMASK, wire.encode_unmask(entries), ViewKind.PUBLIC)]
