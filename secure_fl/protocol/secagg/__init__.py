"""Secure aggregation by pairwise masking with dropout recovery: SecAgg and SecAgg+.

SecAgg is the protocol of Bonawitz, Ivanov, Kreuter, Marcedone, McMahan, Patel, Ramage,
Segal, Seth, "Practical Secure Aggregation for Privacy-Preserving Machine Learning", CCS 2017
(§4, Fig. 4; the signed variant and consistency check of §6.2); SecAgg+ is its sparse-graph
variant of Bell, Bonawitz, Gascón, Lepoint, Raykova, "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead", CCS 2020. Every site u holds a quantized vector x_u (see
:mod:`secure_fl.crypto.quantize`) and sends

    y_u = x_u + PRG(b_u) + Σ_{v ∈ P_u, u < v} PRG(s_uv) − Σ_{v ∈ P_u, v < u} PRG(s_uv)   (mod 2^k)

where b_u is a fresh self-mask seed, s_uv = HKDF(X25519(s_sk_u, s_pk_v)) a pairwise seed and
P_u the neighbours of u that completed key sharing. Pairwise masks cancel in the sum; the
aggregator removes self masks of survivors (reconstructing b_u from t Shamir shares) and the
dangling pairwise masks of sites that dropped after sharing keys (reconstructing s_sk_v).
*Double masking*: an honest site reveals, for each peer, either its share of b (peer
survived) or its share of s_sk (peer dropped), never both.

Modules follow the stages and parties:

========================  ==========================================================
``stages``                stage names and order (4 site stages, 5 with the consistency check)
``sums``                  :class:`SecAggSum`, :class:`SecAggPlusSum`: parameters, validation, setup
``params``                SecAgg+ degree/threshold from Bell et al.'s bounds, exact failure probabilities
``graph``                 complete and Harary graphs, the survivors' connectivity check
``keys``                  per-round secrets and HKDF derivations
``consistency``           what sites sign with their identity keys (§6.2) and signature checks
``site``                  :class:`SecAggSite`
``aggregator``            :class:`SecAggAggregator`
``wire``                  byte formats of every message
========================  ==========================================================

Stages: 1. ``advertise_keys`` (sites): fresh X25519 pairs (c for share encryption, s for
masks), a SHA-256 commitment to b_u, all signed with the site's long-term Ed25519 identity key.
2. ``route_keys`` (aggregator): U1 = adverts whose signature verifies; each site gets its
neighbours' signed keys. 3. ``share_keys`` (sites): each site verifies every neighbour's
signature and refuses (reports) a neighbour whose keys do not verify; t-of-(holders) Shamir
shares of b_u and s_sk_u, AES-GCM-sealed per accepted neighbour (below t holders it refuses
to go on). 4. ``route_shares`` (aggregator): U2 = sites whose share set is complete; a site that
reports refused keys is dropped itself (the aggregator verified every advert it routed).
5. ``masked_input`` (sites): y_u. 6. ``announce_survivors`` (aggregator): U3 = well-formed
masked inputs from sites nobody reported; before anything is unmasked it checks
|U3| >= min_survivors, t holders per neighbourhood and (SecAgg+) the survivors' graph is
connected, else aborts. 7. ``sign_survivors`` (sites, consistency check): each survivor checks
U3 itself and signs it. 8. ``request_unmask`` (aggregator): relays U3 and the signatures.
9. ``unmask`` (sites): a site checks U3 again (size >= min_survivors, t in its neighbourhood,
t valid signatures on the same U3) and only then reveals one kind of share per peer.
10. ``release`` (aggregator): reconstructs, checks every secret against its commitment
(b_u against its hash, s_sk_u against s_pk_u), unmasks and decodes the sum. Without the
consistency check stages 6-7 are skipped and the request carries U3.

Threat model (what holds; the spec files say it per protocol):

* Semi-honest aggregator colluding with up to C sites (SecAgg: C = t - 1; SecAgg+: C = ⌊γ n⌋
  with failure probability :attr:`SecAggPlusSum.failure_probability` over the graph): they learn
  nothing about the other inputs beyond the sum over U3, and |U3| >= C + 2 (and >=
  ``min_contributors``) is enforced by the aggregator *and* by every site before it unmasks, so
  that sum covers at least two honest inputs (Bonawitz et al., Theorem 6.3; Bell et al.,
  Theorem 3.6).
* Active aggregator (SecAgg with signed keys and the consistency check): it cannot substitute
  keys (every advert is signed) nor give two sites different survivor sets that both reach t;
  with up to 2t - n - 1 colluding sites it learns only the sum of a set of survivors of its
  choosing with at least min_survivors members (Bonawitz et al., §6.2, Theorem 6.5). For
  SecAgg+, an active aggregator still chooses the graph and whom to ignore, so it may isolate
  components of survivors: only key substitution is ruled out.
* Channels are authenticated (TLS); masked inputs carry no MAC, so a forged masked input yields
  a wrong sum, not a leak. Identity keys are provisioned authentically.
"""

from __future__ import annotations

from ...errors import InvalidParameter
from .aggregator import SecAggAggregator
from .keys import seed_commitment
from .site import SecAggSite
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
from .sums import SecAggPlusSum, SecAggSum

__all__ = [
    "ADVERTISE_KEYS",
    "ROUTE_KEYS",
    "SHARE_KEYS",
    "ROUTE_SHARES",
    "MASKED_INPUT",
    "ANNOUNCE_SURVIVORS",
    "SIGN_SURVIVORS",
    "REQUEST_UNMASK",
    "UNMASK",
    "RELEASE",
    "InvalidParameter",
    "SecAggSum",
    "SecAggPlusSum",
    "SecAggSite",
    "SecAggAggregator",
    "seed_commitment",
]
