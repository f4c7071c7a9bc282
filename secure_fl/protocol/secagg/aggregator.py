"""The aggregator of one SecAgg(+) round: routes keys and shares, tracks survivors, unmasks the sum.

It holds only public material (identity public keys, advertised keys, commitments) and refuses,
before asking anyone for an unmasking share, a survivor set that is too small
(:attr:`~SecAggSum.min_survivors`), a neighbourhood below t, or (SecAgg+) a survivors' graph
that is disconnected: each component's sum would be free of the other components' masks
(Bell et al. 2020, Lemma 3.7), so releasing would reveal more than the survivors' sum.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ...crypto import identity, kex, prg, shamir
from ...crypto.quantize import from_wire
from ...errors import RoundAborted
from ..base import AGGREGATOR, AggregatorParty, Message, StagedParty, SumResult, ViewKind, handles
from . import wire
from .consistency import advert_statement, survivors_statement, valid_signers
from .graph import is_connected
from .keys import SEALED, SECRET, pair_seed, seed_commitment, self_seed
from .stages import (
    ADVERTISE_KEYS,
    ANNOUNCE_SURVIVORS,
    MASKED_INPUT,
    RELEASE,
    REQUEST_UNMASK,
    ROUTE_KEYS,
    ROUTE_SHARES,
    SHARE_KEYS,
    SIGN_SURVIVORS,
    UNMASK,
)

if TYPE_CHECKING:
    from .sums import SecAggSum

__all__ = ["SecAggAggregator"]


class SecAggAggregator(StagedParty, AggregatorParty):
    """The aggregator of one SecAgg(+) round: routes, tracks survivors, unmasks the sum."""

    def __init__(self, proto: "SecAggSum", round: int, site_ids: Sequence[str]) -> None:
        super().__init__()
        self.proto, self.round = proto, round
        self.site_ids = list(dict.fromkeys(site_ids))
        self.t = proto.threshold_value
        self.quantizer = proto._require_setup()
        self.dim = proto.dim + 1
        self.abort_reason: str | None = None
        #: observations that did not drop anyone (ignored stray messages, bad shares)
        self.notes: list[str] = []
        #: the sets of Bonawitz et al.: U1 advertised, U2 shared, U3 masked (and not reported),
        #: ``signed`` signed U3 (consistency check), U4 sent unmasking shares
        self.u1: list[str] = []
        self.u2: list[str] = []
        self.u3: list[str] = []
        self.signed: list[str] = []
        self.u4: list[str] = []
        self._sequence(proto.stages, "aggregator", f"{proto.name} aggregator (round {round})")
        self._keys: dict[str, tuple[bytes, bytes, bytes, bytes]] = {}
        self._graph: dict[str, frozenset[str]] = {}
        self._relay: dict[str, dict[str, bytes]] = {}
        self._peers: dict[str, frozenset[str]] = {}
        #: the sites whose masked input passed its checks this round (decoded again only when folded)
        self._masked: set[str] = set()
        self._total: np.ndarray | None = None
        self._result: SumResult | None = None
        #: the unmasked slot sum modulo 2^k (quantized values then the weight), after release
        self.integer_sum: np.ndarray | None = None

    # ---- bookkeeping
    def _abort(self, reason: str) -> RoundAborted:
        self.abort_reason = reason
        self._masked.clear()
        self._total = None
        return RoundAborted(f"{self.proto.name} round {self.round} aborted: {reason}")

    def _drop(self, site: str, reason: str) -> None:
        self.rejected.setdefault(site, reason)

    def _collect(
        self, inbox: Sequence[Message], stage: str, allowed: Sequence[str], single: bool = True
    ) -> dict[str, list[Message]]:
        allowed_set = set(allowed)
        out: dict[str, list[Message]] = {}
        for m in inbox:
            if m.receiver != AGGREGATOR:
                self.notes.append(f"ignored a message from {m.sender!r} addressed to {m.receiver!r}")
            elif m.round != self.round or m.stage != stage:
                self.notes.append(
                    f"ignored a message from {m.sender!r} for round {m.round}, stage {m.stage!r} "
                    "(replayed or out of order)"
                )
            elif m.sender not in allowed_set:
                if m.sender not in self.rejected:
                    self.notes.append(
                        f"ignored a {stage!r} message from {m.sender!r}, not a live participant of this round"
                    )
            else:
                out.setdefault(m.sender, []).append(m)
        if single:
            for s in list(out):
                if len(out[s]) > 1:
                    self._drop(s, f"sent {len(out[s])} messages at stage {stage!r}")
                    del out[s]
        return out

    def _require(self, count: int, what: str) -> None:
        if count < self.t:
            raise self._abort(f"{what}: {count} < threshold t = {self.t}")

    def step(self, stage: str, inbox: Sequence[Message]) -> list[Message]:
        if self.abort_reason is not None:
            raise RoundAborted(f"{self.proto.name} round {self.round} aborted earlier: {self.abort_reason}")
        return super().step(stage, inbox)

    def _send(self, stage: str, receiver: str, payload: bytes, kind: ViewKind) -> Message:
        return Message(self.round, stage, AGGREGATOR, receiver, payload, kind)

    # 2. route keys (only those signed by their site's identity key)
    @handles(ROUTE_KEYS)
    def _route_keys(self, inbox: Sequence[Message]) -> list[Message]:
        got = self._collect(inbox, ADVERTISE_KEYS, self.site_ids)
        seen_keys: dict[bytes, str] = {}
        for site in sorted(got):
            try:
                c, s, h, sig = wire.decode_advertise(got[site][0].payload)
            except ValueError as exc:
                self._drop(site, str(exc))
                continue
            if not identity.verify(
                self.proto.identities[site], advert_statement(self.proto.name, self.round, site, c, s, h), sig
            ):
                self._drop(site, "its advertised keys do not carry a valid signature by its identity key")
                continue
            clash = seen_keys.get(c) or seen_keys.get(s)
            if clash or c == s:
                self._drop(site, f"advertised a public key already used by {clash or site!r}")
                continue
            seen_keys[c] = seen_keys[s] = site
            self._keys[site] = (c, s, h, sig)
        self.u1 = sorted(self._keys)
        self._require(len(self.u1), "sites that advertised keys")
        self._graph = self.proto.neighbours(self.u1, self.round, {u: self._keys[u][:2] for u in self.u1})
        out = []
        for u in self.u1:
            entries = [(v, *self._keys[v]) for v in sorted(self._graph[u])]
            out.append(self._send(ROUTE_KEYS, u, wire.encode_keys(entries), ViewKind.PUBLIC))
        return out

    # 4. route shares
    @handles(ROUTE_SHARES)
    def _route_shares(self, inbox: Sequence[Message]) -> list[Message]:
        """U2: sites that sealed a share for every neighbour. A site that refused a neighbour's signed
        keys is dropped itself: this aggregator verified every advert it routed, so the report is false,
        the channel was tampered with, or the reporter holds other identity keys than the roster's."""
        got = self._collect(inbox, SHARE_KEYS, self.u1, single=False)
        for u in sorted(got):
            envelopes: dict[str, bytes] = {}
            problem = None
            for m in got[u]:
                try:
                    if m.kind is ViewKind.PUBLIC:
                        refused = sorted(p for p, _ in wire.decode_reports(m.payload))
                        raise ValueError(
                            f"refused the signed keys of {refused}, which verify against the provisioned identity "
                            "keys here (a false report, a tampered channel or inconsistent provisioning)"
                        )
                    receiver, sealed = wire.decode_relay(m.payload)
                except ValueError as exc:
                    problem = str(exc)
                    break
                if receiver not in self._graph[u]:
                    problem = f"sent a share to {receiver!r}, not one of its neighbours"
                elif receiver in envelopes:
                    problem = f"sent two shares to {receiver!r}"
                elif len(sealed) != SEALED:
                    problem = (
                        f"its share for {receiver!r} is {len(sealed)} bytes, expected {SEALED} (truncated or padded)"
                    )
                if problem:
                    break
                envelopes[receiver] = sealed
            if problem is None and set(envelopes) != set(self._graph[u]):
                problem = f"sent no share to {sorted(set(self._graph[u]) - set(envelopes))}"
            if problem is not None:
                self._drop(u, problem)
                continue
            self._relay[u] = envelopes
        self.u2 = sorted(self._relay)
        self._require(len(self.u2), "sites that shared keys")
        u2 = set(self.u2)
        out = []
        for v in self.u2:
            self._peers[v] = self._graph[v] & u2
            out.append(self._send(ROUTE_SHARES, v, wire.encode_ids(sorted(self._peers[v])), ViewKind.PUBLIC))
        for u in self.u2:
            for v, sealed in sorted(self._relay[u].items()):
                if v in u2:
                    out.append(self._send(ROUTE_SHARES, v, wire.encode_relay(u, sealed), ViewKind.CIPHERTEXT))
        self._relay.clear()
        return out

    # 6. fix the survivor set U3; announce it (consistency check) or ask for shares right away
    @handles(ANNOUNCE_SURVIVORS)
    def _fix_survivors(self, inbox: Sequence[Message]) -> list[Message]:
        got = self._collect(inbox, MASKED_INPUT, self.u2)
        q = self.quantizer
        reported: dict[str, str] = {}
        # fold each input as it is checked (one running vector, not n); addition modulo 2^k is exact, so an
        # input a later peer report drops is subtracted again (decoded a second time only in that case)
        total = np.zeros(self.dim, dtype=q.dtype)
        for v in sorted(got):
            try:
                refused, vector = wire.decode_masked(got[v][0].payload)
                total += from_wire(vector, q.modulus_bits, self.dim)
            except ValueError as exc:
                self._drop(v, f"malformed masked input: {exc}")
                continue
            self._masked.add(v)
            for peer, reason in refused:
                if peer in self._peers[v]:
                    reported.setdefault(peer, f"its share ciphertext was refused by {v!r}: {reason}")
                else:
                    self.notes.append(f"{v!r} refused {peer!r}, not its peer this round: {reason}")
        for peer, reason in reported.items():
            self._drop(peer, reason)
            if peer in self._masked:
                self._masked.discard(peer)
                total -= from_wire(wire.decode_masked(got[peer][0].payload)[1], q.modulus_bits, self.dim)
        self.u3 = sorted(self._masked)
        self._masked.clear()
        self._require(len(self.u3), "sites with an accepted masked input")
        self._check_release_set()
        self._total = total
        if self.proto.consistency_check:
            ids = wire.encode_ids(self.u3)
            return [self._send(ANNOUNCE_SURVIVORS, v, ids, ViewKind.PUBLIC) for v in self.u3]
        request = wire.encode_request(self.u3)
        return [self._send(REQUEST_UNMASK, v, request, ViewKind.PUBLIC) for v in self.u3]

    def _check_release_set(self) -> None:
        """Before any unmasking share is requested: enough survivors, t holders each, one component."""
        u3 = set(self.u3)
        need = self.proto.min_survivors
        if len(u3) < need:
            raise self._abort(
                f"only {len(u3)} survivors < {need} needed ({self.proto._survivor_rule()}): "
                "the released sum would cover too few honest inputs"
            )
        for v in self.u3:  # every survivor's self-mask seed must be recoverable
            holders = len((self._peers[v] | {v}) & u3)
            if holders < self.t:
                raise self._abort(f"site {v!r} has {holders} surviving share holders < threshold t = {self.t}")
        for d in sorted(set(self.u2) - u3):  # and every dropped peer's mask key
            live = self._peers[d] & u3
            if live and len(live) < self.t:
                raise self._abort(
                    f"dropped site {d!r} has {len(live)} surviving share holders < threshold t = {self.t}"
                )
        if not is_connected(self._peers, u3):
            raise self._abort(
                "the survivors' masking graph is disconnected: the sum of each component would be "
                "unmasked on its own (Bell et al. 2020, Lemma 3.7)"
            )

    # 8. (consistency check) relay the signatures on U3 and ask for shares
    @handles(REQUEST_UNMASK)
    def _request_unmask(self, inbox: Sequence[Message]) -> list[Message]:
        # with the consistency check, U3 was fixed at announce_survivors and this relays the signatures;
        # without it, this stage fixes U3 and carries it in the request
        if self.proto.consistency_check:
            return self._request_signed_unmask(inbox)
        return self._fix_survivors(inbox)

    def _request_signed_unmask(self, inbox: Sequence[Message]) -> list[Message]:
        got = self._collect(inbox, SIGN_SURVIVORS, self.u3)
        statement = survivors_statement(self.proto.name, self.round, self.u3)
        sigs: dict[str, bytes] = {}
        for v in sorted(got):
            try:
                sigs[v] = wire.decode_signature(got[v][0].payload)
            except ValueError as exc:
                self.notes.append(f"ignored {v!r}'s signature on the survivor set: {exc}")
        valid = valid_signers(statement, sigs.items(), self.proto.identities, self.u3)
        for v in sorted(set(sigs) - valid):
            self.notes.append(f"{v!r}'s signature on the survivor set does not verify; it is not relayed")
        self.signed = sorted(valid)
        self._require(len(self.signed), "sites that signed the survivor set")
        for v in self.u3:
            nb = (self._peers[v] | {v}) & valid
            if len(nb) < self.t:
                raise self._abort(
                    f"site {v!r} has {len(nb)} neighbours that signed the survivor set < threshold t = {self.t}"
                )
        for d in sorted(set(self.u2) - set(self.u3)):  # a dropped site's mask key needs t signed holders too
            live = self._peers[d] & valid
            if self._peers[d] & set(self.u3) and len(live) < self.t:
                raise self._abort(
                    f"dropped site {d!r} has {len(live)} holders that signed the survivor set < t = {self.t}"
                )
        out = []
        for w in self.signed:
            relayed = [(s, sigs[s]) for s in sorted((self._peers[w] | {w}) & valid)]
            out.append(self._send(REQUEST_UNMASK, w, wire.encode_request(self.u3, relayed), ViewKind.PUBLIC))
        return out

    # last: release
    @handles(RELEASE)
    def _release(self, inbox: Sequence[Message]) -> list[Message]:
        got = self._collect(inbox, UNMASK, self.signed if self.proto.consistency_check else self.u3)
        u3 = set(self.u3)
        dropped = set(self.u2) - u3
        seeds: dict[str, list[tuple[str, shamir.Share]]] = {}
        keys: dict[str, list[tuple[str, shamir.Share]]] = {}
        responders = []
        for holder in sorted(got):
            try:
                entries = wire.decode_unmask(got[holder][0].payload)
                parsed = [(o, k, shamir.Share.from_bytes(sh)) for o, k, sh in entries]
            except ValueError as exc:
                self.notes.append(f"ignored malformed shares from {holder!r}: {exc}")
                continue
            ok = True
            for owner, kind, _ in parsed:
                expected = wire.SHARE_OF_SEED if owner in u3 else wire.SHARE_OF_KEY if owner in dropped else None
                if kind != expected or (owner != holder and owner not in self._peers[holder]):
                    self.notes.append(f"ignored shares from {holder!r}: unexpected share of {owner!r}")
                    ok = False
                    break
            if not ok:
                continue
            responders.append(holder)
            for owner, kind, share in parsed:
                (seeds if kind == wire.SHARE_OF_SEED else keys).setdefault(owner, []).append((holder, share))
        self.u4 = responders
        self._require(len(self.u4), "sites that sent unmasking shares")
        if len(self.u3) < self.proto.min_survivors:  # fixed at stage 6; checked again where the sum is released
            raise self._abort(f"only {len(self.u3)} contributors < {self.proto.min_survivors} needed")
        q = self.quantizer
        total, self._total = self._total, None
        if total is None:
            raise self._abort("no folded masked sum to release")
        for v in self.u3:
            b = self._reconstruct(v, seeds.get(v, []), seed_commitment, self._keys[v][2], "self-mask seed")
            prg.add_mask(total, self_seed(b, self.round), q.modulus_bits, subtract=True)
        for d in sorted(dropped):
            live = sorted(self._peers[d] & u3)
            if not live:
                continue
            s_sk = self._reconstruct(d, keys.get(d, []), kex.public_bytes, self._keys[d][1], "mask key")
            for v in live:
                seed = pair_seed(s_sk, self._keys[v][1], self.round, d, v)
                prg.add_mask(total, seed, q.modulus_bits, subtract=v < d)  # v < d: y_v added their shared mask
        total &= q.dtype.type(q.modulus_mask)
        try:
            values, weight = q.decode(total, len(self.u3))
        except ValueError as exc:
            raise self._abort(f"the unmasked sum is inconsistent ({exc})") from exc
        self.integer_sum = total
        self._result = SumResult(values, float(weight), tuple(self.u3))
        return []

    def _reconstruct(
        self,
        owner: str,
        shares: list[tuple[str, shamir.Share]],
        public: Callable[[bytes], bytes],
        committed: bytes,
        what: str,
    ) -> bytes:
        """Combine t shares into a secret whose ``public(secret)`` equals its ``committed`` value;
        on a mismatch, retry leaving one share out (one bad holder)."""
        if len(shares) < self.t:
            raise self._abort(f"only {len(shares)} shares of site {owner!r}'s {what} arrived < threshold t = {self.t}")
        attempts: list[tuple[str | None, list[shamir.Share]]] = [(None, [s for _, s in shares])]
        if len(shares) > self.t:
            attempts += [(h, [s for hh, s in shares if hh != h]) for h, _ in shares[: self.t]]
        for culprit, subset in attempts:
            try:
                secret = shamir.combine(subset, self.t, SECRET)
            except ValueError:
                continue
            if public(secret) == committed:
                if culprit is not None:
                    self.notes.append(
                        f"{culprit!r} sent a share of {owner!r}'s {what} that does not match the commitment; "
                        "it was left out"
                    )
                return secret
        raise self._abort(
            f"could not reconstruct site {owner!r}'s {what} from {len(shares)} shares: "
            "they do not match its public commitment"
        )

    def result(self) -> SumResult | None:
        return self._result
