"""Who masks with whom: the complete graph (SecAgg) or a random Harary graph (SecAgg+).

SecAgg+ (Bell, Bonawitz, Gascón, Lepoint, Raykova, CCS 2020, §3-4) replaces the complete
graph of SecAgg by a sparse random graph of degree k = O(log n): a site masks with, and
secret-shares to, only its k neighbours, so site cost falls from O(n + d n) to
O(log n + d log n) and server cost from O(n^2 + d n^2) to O(n log n + d n log n).
As in Bell et al. (§4, Harary graph instantiation), the graph is the Harary graph H(k, n)
(position i is joined to positions i ± 1 .. i ± k/2 modulo n) with the sites placed at
positions by a random permutation. The permutation is expanded by a public PRG from a seed
that hashes the round number and every advertised public key, so no single party picks it
once keys are fixed and anyone holding the advertised keys can recompute it. The degree and
threshold come from :mod:`secure_fl.protocol.secagg.params`; :func:`is_connected` is the check
the aggregator runs on the survivors' graph before it asks for unmasking shares.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping, Sequence

from ...crypto.aead import associated_data
from ...crypto.prg import keystream

__all__ = ["graph_seed", "complete_graph", "harary_graph", "public_permutation", "is_connected"]


def graph_seed(round: int, entries: Iterable[tuple[str, bytes, bytes]]) -> bytes:
    """SHA-256 of the round and the sorted advertised ``(site, key_1, key_2)`` entries."""
    h = hashlib.sha256(associated_data("secure-fl/secagg+/graph/v1", round))
    for site, k1, k2 in sorted(entries):
        h.update(associated_data(site, k1, k2))
    return h.digest()


def public_permutation(items: Sequence[str], seed: bytes) -> list[str]:
    """Fisher-Yates shuffle of ``sorted(items)`` driven by AES-CTR(seed), unbiased by rejection."""
    out = sorted(items)
    n = len(out)
    stream = keystream(seed, 8 * 4 * max(n, 1) + 64)
    pos = 0

    def below(bound: int) -> int:
        nonlocal stream, pos
        limit = (2**64 // bound) * bound
        while True:
            if pos + 8 > len(stream):
                stream = stream + keystream(hashlib.sha256(seed + stream[-32:]).digest(), 8 * 64)
            (word,) = struct.unpack_from("<Q", stream, pos)
            pos += 8
            if word < limit:
                return word % bound

    for i in range(n - 1, 0, -1):
        j = below(i + 1)
        out[i], out[j] = out[j], out[i]
    return out


def complete_graph(sites: Iterable[str]) -> dict[str, frozenset[str]]:
    """Every site is the neighbour of every other (SecAgg, Bonawitz et al. 2017)."""
    s = frozenset(sites)
    return {u: s - {u} for u in s}


def harary_graph(sites: Iterable[str], degree: int, seed: bytes) -> dict[str, frozenset[str]]:
    """A k-regular Harary graph on randomly permuted sites; complete when ``degree >= n - 1``."""
    ordered = list(sites)
    n = len(ordered)
    if not isinstance(degree, int) or degree < 2 or degree % 2:
        raise ValueError(f"degree must be an even integer >= 2, got {degree!r}")
    if degree >= n - 1:
        return complete_graph(ordered)
    perm = public_permutation(ordered, seed)
    half = degree // 2
    return {perm[i]: frozenset(perm[(i + off) % n] for off in range(-half, half + 1) if off != 0) for i in range(n)}


def is_connected(graph: Mapping[str, Iterable[str]], nodes: Iterable[str]) -> bool:
    """Whether the subgraph of ``graph`` induced on ``nodes`` is connected (an empty or single node set is).

    Bell et al. 2020, Lemma 3.7: if the survivors' graph splits into components, the sum of each
    component's masked inputs is free of pairwise masks between components, so the aggregator
    learns each component's sum on its own, not only the sum of all survivors.
    """
    keep = set(nodes)
    if len(keep) <= 1:
        return True
    start = min(keep)
    seen, stack = {start}, [start]
    while stack:
        for v in graph.get(stack.pop(), ()):
            if v in keep and v not in seen:
                seen.add(v)
                stack.append(v)
    return seen == keep
