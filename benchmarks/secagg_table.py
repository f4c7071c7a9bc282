"""Print the README tables of pairwise-masking cost: ours (SecAgg, SecAgg+) beside Flower's SecAgg+.

    python benchmarks/secagg_table.py [--n 5 10 20 50 100] [--d 100000 1000000]
        [--dropout 0 0.1 0.3] [--impl ours-secagg ours-secagg+ flower-secagg flower-secagg+]
        [--bits 16] [--json results.json] [--max-pairs 2000]

One round per configuration, in process, sites and server stepped one after the other on
one core. Each site holds a ``d``-vector in [-1, 1] and weight 1 (``max_weight = 1``), is
quantized to ``--bits`` bits and summed modulo 2^k with k = bits + ceil(log2 n) (the same
k for both implementations). ``dropout`` is the fraction of sites (rounded) that vanish
after sharing keys and before sending their masked input: the worst case for the server,
which must then reconstruct their mask keys and regenerate their pairwise masks.
SecAgg+ uses degree 2 ceil(log2 n) (Flower: ``num_shares`` = degree + 1), not the degree our
specs derive from Bell et al.'s bounds, so both implementations run the same graph size; the
threshold is the smallest majority of the share holders (ours refuses t <= holders / 2).
Ours runs its default: signed keys and the consistency check (one more site stage than Flower).

Measured per round:

* ``server s``: seconds in the aggregator's four stages; ``site s``: mean seconds one site
  spends in its four stages (key generation, sharing, quantization + masking, unmasking).
* ``site up`` / ``site down``: mean payload bytes one site sends / receives;
  ``server out``: payload bytes the server sends in total. Payload only: ids, keys,
  ciphertexts, shares and vectors as they would be serialized, without the transport
  framing (gRPC/protobuf for Flower, whatever the engine adds for us).
* ``expansion``: (site up + site down) / (d x bits / 8), the communication expansion
  against sending the ``bits``-bit quantized vector in the clear — Bonawitz et al. report
  1.73x for 16-bit inputs, 2^10 users and 2^20 dimensions.

Flower (``flwr==1.40.*``) is driven through its own primitives in the four stages of its
``secaggplus_mod`` / ``SecAggPlusWorkflow`` — ``generate_key_pairs`` (ECDH P-384, PEM),
``create_shares`` / ``combine_shares`` (pycryptodome Shamir, 16-byte chunks),
``generate_shared_key`` + ``encrypt`` / ``decrypt`` (HKDF + Fernet), ``quantize``,
``pseudo_rand_gen`` (numpy ``RandomState`` with the seed folded to 32 bits),
``share_keys_plaintext_concat``, ``parameters_*`` and ``ndarray_to_bytes`` — with the data
flow of those modules; its gRPC/Grid transport and record serialization are not run.
``flower-secagg`` is its SecAgg+ with ``num_shares = n`` (the complete graph), which is how
Flower's ``SecAggWorkflow`` runs SecAgg.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from secure_fl.protocol.base import Message
from secure_fl.protocol.secagg import MASKED_INPUT, SecAggPlusSum, SecAggSum

__all__ = ["Row", "run_ours", "run_flower", "main"]

IMPLS = ("ours-secagg", "ours-secagg+", "flower-secagg", "flower-secagg+")


@dataclass
class Row:
    impl: str
    n: int
    d: int
    dropout: float
    dropped: int
    server_s: float
    site_s: float
    site_up: float
    site_down: float
    server_out: int
    expansion: float
    max_error: float
    status: str = "ok"


def _threshold(holders: int) -> int:
    return holders // 2 + 1


def _degree(n: int) -> int:
    """2 ceil(log2 n), capped at n - 1: the degree Flower's examples use."""
    return min(2 * math.ceil(math.log2(n)), n - 1) if n > 1 else 0


def _dropped(n: int, dropout: float, seed: int) -> list[int]:
    return sorted(random.Random(seed).sample(range(n), round(dropout * n)))


def _row(
    impl: str,
    n: int,
    d: int,
    dropout: float,
    bits: int,
    dropped: int,
    server_s: float,
    site_s: list[float],
    up: list[int],
    down: list[int],
    server_out: int,
    err: float,
    status: str = "ok",
) -> Row:
    site_up, site_down = float(np.mean(up)), float(np.mean(down))
    return Row(
        impl,
        n,
        d,
        dropout,
        dropped,
        server_s,
        float(np.mean(site_s)),
        site_up,
        site_down,
        server_out,
        (site_up + site_down) / (d * bits / 8),
        err,
        status,
    )


# ----------------------------------------------------------------- ours


def run_ours(plus: bool, n: int, d: int, dropout: float, bits: int = 16, seed: int = 0) -> Row:
    ids = [f"site-{i:03d}" for i in range(n)]
    common = {"bits": bits, "clip_range": 1.0, "max_weight": 1, "rng": np.random.default_rng(seed)}
    proto: SecAggSum
    if plus:
        degree = max(2, _degree(n) - _degree(n) % 2)
        proto = SecAggPlusSum(
            **common,
            threshold=_threshold(degree + 1),
            degree=degree,  # type: ignore[arg-type]
            corrupt_fraction=0.0,
            dropout_fraction=0.0,
        )  # a cost benchmark: no guarantee target
    else:
        proto = SecAggSum(**common, threshold=_threshold(n))  # type: ignore[arg-type]
    proto.setup(ids, d)
    x = np.random.default_rng(seed).uniform(-1, 1, d)  # one vector shared by all sites (memory)
    gone = {ids[i] for i in _dropped(n, dropout, seed)}
    site_s = {s: 0.0 for s in ids}
    up = {s: 0 for s in ids}
    down = {s: 0 for s in ids}
    server_s, server_out = 0.0, 0
    sites = {s: proto.site(s, 0, x, 1) for s in ids}
    agg = proto.aggregator(0, ids, d)
    inbox: dict[str, list[Message]] = {s: [] for s in ids}
    abox: list[Message] = []
    for stage in proto.stages:
        if stage.actor == "sites":
            for s in list(sites):
                if s in gone and stage.name == MASKED_INPUT:
                    del sites[s]
                    continue
                msgs, inbox[s] = inbox[s], []
                t0 = time.perf_counter()
                out = sites[s].step(stage.name, msgs)
                site_s[s] += time.perf_counter() - t0
                for m in out:
                    up[s] += m.nbytes
                    abox.append(m)
        else:
            msgs, abox = abox, []
            t0 = time.perf_counter()
            out = agg.step(stage.name, msgs)
            server_s += time.perf_counter() - t0
            for m in out:
                server_out += m.nbytes
                down[m.receiver] += m.nbytes
                inbox[m.receiver].append(m)
    res = agg.result()
    assert res is not None
    err = float(np.max(np.abs(res.total - len(res.contributors) * x)))
    live = [s for s in ids if s not in gone]
    name = "ours-secagg+" if plus else "ours-secagg"
    return _row(
        name,
        n,
        d,
        dropout,
        bits,
        len(gone),
        server_s,
        [site_s[s] for s in live],
        [up[s] for s in live],
        [down[s] for s in live],
        server_out,
        err,
    )


# ----------------------------------------------------------------- Flower's primitives, Flower's data flow


def run_flower(plus: bool, n: int, d: int, dropout: float, bits: int = 16, seed: int = 0) -> Row:
    from flwr.common import ndarray_to_bytes
    from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import decrypt, encrypt, generate_shared_key
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (
        factor_combine,
        factor_extract,
        parameters_addition,
        parameters_mod,
        parameters_multiply,
        parameters_subtraction,
    )
    from flwr.common.secure_aggregation.quantization import dequantize, quantize
    from flwr.common.secure_aggregation.secaggplus_utils import (
        pseudo_rand_gen,
        share_keys_plaintext_concat,
        share_keys_plaintext_separate,
    )
    from flwr.supercore.primitives.asymmetric import (
        bytes_to_private_key,
        bytes_to_public_key,
        generate_key_pairs,
        private_key_to_bytes,
        public_key_to_bytes,
    )

    ID = 8  # a node id on the wire (sint64 in Flower's records)
    np.random.seed(seed)  # Flower's stochastic rounding draws from the global numpy generator
    num_shares = (_degree(n) + 1) if plus else n
    threshold = _threshold(num_shares)
    k = bits + math.ceil(math.log2(n))  # the modulus our quantizer picks for weight 1
    target_range, mod_range, clipping_range, max_weight = 1 << bits, 1 << k, 1.0, 1.0
    nids = list(range(1, n + 1))
    x = np.random.default_rng(seed).uniform(-1, 1, d)
    gone = {nids[i] for i in _dropped(n, dropout, seed)}
    site_s = {u: 0.0 for u in nids}
    up = {u: 0 for u in nids}
    down = {u: 0 for u in nids}
    server_s, server_out = 0.0, 0
    state: dict[int, dict] = {u: {} for u in nids}

    def site(u: int, fn, *args):  # noqa: ANN001, ANN202
        nonlocal site_s
        t0 = time.perf_counter()
        out = fn(u, *args)
        site_s[u] += time.perf_counter() - t0
        return out

    def server(fn, *args):  # noqa: ANN001, ANN202
        nonlocal server_s
        t0 = time.perf_counter()
        out = fn(*args)
        server_s += time.perf_counter() - t0
        return out

    # stage 0, setup: the server builds the ring of num_shares; each client makes two EC key pairs
    def build_graph() -> dict[int, set[int]]:
        order = nids[:]
        random.Random(f"graph-{seed}").shuffle(order)  # independent of the choice of dropped sites
        half = num_shares >> 1
        return {u: {order[(i + off) % n] for off in range(-half, half + 1)} for i, u in enumerate(order)}

    neighbours = server(build_graph)

    def setup(u: int) -> tuple[bytes, bytes]:
        sk1, pk1 = generate_key_pairs()
        sk2, pk2 = generate_key_pairs()
        st = state[u]
        st["sk1"], st["pk1"] = private_key_to_bytes(sk1), public_key_to_bytes(pk1)
        st["sk2"], st["pk2"] = private_key_to_bytes(sk2), public_key_to_bytes(pk2)
        return st["pk1"], st["pk2"]

    public = {}
    for u in nids:
        public[u] = site(u, setup)
        up[u] += len(public[u][0]) + len(public[u][1])

    # stage 1, share keys: the server sends each client its neighbours' keys
    def route_keys() -> dict[int, dict[int, tuple[bytes, bytes]]]:
        return {u: {v: public[v] for v in neighbours[u]} for u in nids}

    keysets = server(route_keys)
    for u in nids:
        b = sum(ID + len(p1) + len(p2) for p1, p2 in keysets[u].values())
        down[u] += b
        server_out += b

    def share_keys(u: int, keys: dict[int, tuple[bytes, bytes]]) -> list[tuple[int, bytes]]:
        st = state[u]
        st["keys"] = keys
        st["rd_seed"] = os.urandom(32)
        b_shares = create_shares(st["rd_seed"], threshold, num_shares)
        sk1_shares = create_shares(st["sk1"], threshold, num_shares)
        st["b_shares"], st["sk1_shares"], st["ss2"] = {}, {}, {}
        out = []
        for idx, (v, (_, pk2)) in enumerate(keys.items()):
            if v == u:
                st["b_shares"][u], st["sk1_shares"][u] = b_shares[idx], sk1_shares[idx]
                continue
            key = generate_shared_key(bytes_to_private_key(st["sk2"]), bytes_to_public_key(pk2))
            st["ss2"][v] = key
            out.append((v, encrypt(key, share_keys_plaintext_concat(u, v, b_shares[idx], sk1_shares[idx]))))
        return out

    sent = {}
    for u in nids:
        sent[u] = site(u, share_keys, keysets[u])
        up[u] += sum(ID + len(c) for _, c in sent[u])

    def route_shares() -> dict[int, list[tuple[int, bytes]]]:
        fwd: dict[int, list[tuple[int, bytes]]] = {u: [] for u in nids}
        for u in nids:
            for v, c in sent[u]:
                fwd[v].append((u, c))
        return fwd

    forwarded = server(route_shares)
    for u in nids:
        b = sum(ID + len(c) for _, c in forwarded[u])
        down[u] += b
        server_out += b

    # stage 2, collect masked vectors (the dropped clients vanish here)
    def masked(u: int, incoming: list[tuple[int, bytes]]) -> list[np.ndarray]:
        st = state[u]
        available = []
        for src, c in incoming:
            actual, dst, b_share, sk1_share = share_keys_plaintext_separate(decrypt(st["ss2"][src], c))
            assert actual == src and dst == u
            st["b_shares"][src], st["sk1_shares"][src] = b_share, sk1_share
            available.append(src)
        q_ratio = round(1.0 / max_weight * target_range)
        params = parameters_multiply([x], q_ratio / target_range)
        params = factor_combine(q_ratio, quantize(params, clipping_range, target_range))
        shapes = [a.shape for a in params]
        params = parameters_addition(params, pseudo_rand_gen(st["rd_seed"], mod_range, shapes))
        sk1 = bytes_to_private_key(st["sk1"])
        for v in available:
            mask = pseudo_rand_gen(generate_shared_key(sk1, bytes_to_public_key(st["keys"][v][0])), mod_range, shapes)
            params = parameters_addition(params, mask) if u > v else parameters_subtraction(params, mask)
        return parameters_mod(params, mod_range)

    aggregate: list[np.ndarray] | None = None
    live = [u for u in nids if u not in gone]
    for u in live:
        vec = site(u, masked, forwarded[u])
        up[u] += sum(len(ndarray_to_bytes(a)) for a in vec)

        def fold(vec: list[np.ndarray] = vec) -> None:
            nonlocal aggregate
            aggregate = vec if aggregate is None else parameters_addition(aggregate, vec)

        server(fold)
    live_set = set(live)

    # stage 3, unmask: shares of b for live neighbours, of sk1 for dropped ones
    def unmask(u: int) -> tuple[list[int], list[bytes]]:
        st = state[u]
        act = [v for v in neighbours[u] if v in live_set]
        dead = [v for v in neighbours[u] if v in gone]
        return act + dead, [st["b_shares"][v] for v in act] + [st["sk1_shares"][v] for v in dead]

    collected: dict[int, list[bytes]] = {u: [] for u in nids}
    for u in live:
        req = ID * len(neighbours[u])
        down[u] += req
        server_out += req
        owners, shares = site(u, unmask)
        up[u] += ID * len(owners) + sum(len(s) for s in shares)
        for o, s in zip(owners, shares):
            collected[o].append(s)

    def finish() -> np.ndarray:
        vec = aggregate
        assert vec is not None
        shapes = [a.shape for a in vec]
        for u, shares in collected.items():
            if len(shares) < threshold:
                raise RuntimeError(f"only {len(shares)} shares for node {u}")
            secret = combine_shares(shares)
            if u in live_set:
                vec = parameters_subtraction(vec, pseudo_rand_gen(secret, mod_range, shapes))
            else:
                sk1 = bytes_to_private_key(secret)
                for v in neighbours[u] - {u}:
                    if v not in live_set:
                        continue
                    mask = pseudo_rand_gen(
                        generate_shared_key(sk1, bytes_to_public_key(public[v][0])), mod_range, shapes
                    )
                    vec = parameters_addition(vec, mask) if u > v else parameters_subtraction(vec, mask)
        vec = parameters_mod(vec, mod_range)
        q_total, rest = factor_extract(vec)
        out = dequantize(rest, clipping_range, target_range)[0]
        out += -(len(live) - 1) * clipping_range
        return out * (target_range / q_total) * len(live)  # the weighted sum (the workflow returns the mean)

    try:
        total = server(finish)
        err, status = float(np.max(np.abs(total - len(live) * x))), "ok"
    except RuntimeError as exc:
        err, status = float("nan"), f"aborted: {exc}"
    name = "flower-secagg+" if plus else "flower-secagg"
    return _row(
        name,
        n,
        d,
        dropout,
        bits,
        len(gone),
        server_s,
        [site_s[u] for u in live],
        [up[u] for u in live],
        [down[u] for u in live],
        server_out,
        err,
        status,
    )


# ----------------------------------------------------------------- tables


def _mib(b: float) -> str:
    return f"{b / 2**20:.3f}"


def render(rows: Sequence[Row]) -> str:
    lines = [
        "| impl | n | d | dropout | server s | site s | site up MiB | site down MiB | server out MiB | expansion | max error |",  # noqa: E501 (a table row or a translated phrase reads best whole)
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        err = f"{r.max_error:.1e}" if r.status == "ok" else r.status
        lines.append(
            f"| {r.impl} | {r.n} | {r.d:,} | {r.dropout:.0%} | {r.server_s:.2f} | {r.site_s:.3f} | {_mib(r.site_up)} | "
            f"{_mib(r.site_down)} | {_mib(r.server_out)} | {r.expansion:.2f}x | {err} |"
        )
    return "\n".join(lines)


def render_comparison(rows: Sequence[Row]) -> str:
    by = {(r.impl, r.n, r.d, r.dropout): r for r in rows}
    lines = [
        "| graph | n | d | dropout | server speed-up | site speed-up | site bytes ours / Flower |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (impl, n, d, p), ours in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1], kv[0][3])):
        if not impl.startswith("ours"):
            continue
        fl = by.get((impl.replace("ours", "flower"), n, d, p))
        if fl is None or fl.status != "ok":
            continue
        graph = "complete (SecAgg)" if impl == "ours-secagg" else "sparse (SecAgg+)"
        lines.append(
            f"| {graph} | {n} | {d:,} | {p:.0%} | {fl.server_s / ours.server_s:.1f}x | {fl.site_s / ours.site_s:.1f}x | "  # noqa: E501 (a table row or a translated phrase reads best whole)
            f"{(ours.site_up + ours.site_down) / (fl.site_up + fl.site_down):.2f} |"
        )
    return "\n".join(lines)


def render_compact(rows: Sequence[Row]) -> str:
    """One line per (n, d, dropout): ours / Flower, seconds and bytes, for both graphs."""
    by = {(r.impl, r.n, r.d, r.dropout): r for r in rows}
    lines = [
        "| n | d | dropout | SecAgg server s (ours / Flower) | SecAgg site s | SecAgg+ server s | SecAgg+ site s | site MiB up+down, SecAgg+ | expansion vs 16-bit plain |",  # noqa: E501 (a table row or a translated phrase reads best whole)
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def pair(a: Row | None, b: Row | None, attr: str, fmt: str) -> str:
        def one(r: Row | None) -> str:
            return "—" if r is None else ("aborted" if r.status != "ok" else format(getattr(r, attr), fmt))

        return f"{one(a)} / {one(b)}"

    keys = sorted({(r.n, r.d, r.dropout) for r in rows}, key=lambda k: (k[1], k[0], k[2]))
    for n, d, p in keys:
        o, f = by.get(("ours-secagg", n, d, p)), by.get(("flower-secagg", n, d, p))
        op, fp = by.get(("ours-secagg+", n, d, p)), by.get(("flower-secagg+", n, d, p))
        mib = "—"
        if op is not None and fp is not None:
            mib = f"{(op.site_up + op.site_down) / 2**20:.2f} / {(fp.site_up + fp.site_down) / 2**20:.2f}"
        lines.append(
            f"| {n} | {d:,} | {p:.0%} | {pair(o, f, 'server_s', '.2f')} | {pair(o, f, 'site_s', '.3f')} | "
            f"{pair(op, fp, 'server_s', '.2f')} | {pair(op, fp, 'site_s', '.3f')} | {mib} | {pair(op, fp, 'expansion', '.2f')} |"  # noqa: E501 (a table row or a translated phrase reads best whole)
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[5, 10, 20, 50, 100])
    ap.add_argument("--d", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--dropout", type=float, nargs="+", default=[0.0, 0.1, 0.3])
    ap.add_argument("--impl", nargs="+", choices=IMPLS, default=list(IMPLS))
    ap.add_argument("--bits", type=int, default=16)
    ap.add_argument(
        "--max-pairs",
        type=int,
        default=0,
        help="skip complete-graph configurations with n*(n-1)*d/1e6 above this (0: run all)",
    )
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    ap.add_argument(
        "--render",
        nargs="+",
        default=None,
        metavar="JSON",
        help="measure nothing: print the tables of rows saved with --json (later files replace earlier rows)",
    )
    ap.add_argument("--compact", action="store_true", help="with --render: one line per (n, d, dropout), ours / Flower")
    args = ap.parse_args(argv)
    if args.render:
        merged: dict[tuple, Row] = {}
        for path in args.render:
            with open(path) as fh:
                for r in json.load(fh)["rows"]:
                    row = Row(**r)
                    merged[(row.impl, row.n, row.d, row.dropout)] = row
        order = {impl: i for i, impl in enumerate(IMPLS)}
        rows_ = sorted(merged.values(), key=lambda r: (r.d, r.n, r.dropout, order[r.impl]))
        print(render_compact(rows_) if args.compact else render(rows_))
        print()
        print(render_comparison(rows_))
        return
    rows: list[Row] = []
    skipped: list[str] = []
    for d in args.d:
        for n in args.n:
            for p in args.dropout:
                for impl in args.impl:
                    full = impl in ("ours-secagg", "flower-secagg")
                    if full and args.max_pairs and n * (n - 1) * d / 1e6 > args.max_pairs:
                        skipped.append(f"{impl} n={n} d={d:,} dropout={p:.0%}")
                        continue
                    fn = run_ours if impl.startswith("ours") else run_flower
                    row = fn(impl.endswith("+"), n, d, p, args.bits)
                    rows.append(row)
                    print(
                        f"# {row.impl} n={n} d={d} dropout={p}: server {row.server_s:.2f}s site {row.site_s:.3f}s",
                        file=sys.stderr,
                        flush=True,
                    )
                    if args.json:
                        with open(args.json, "w") as fh:
                            json.dump({"rows": [asdict(r) for r in rows], "skipped": skipped}, fh, indent=1)
    print(render(rows))
    print()
    print(render_compact(rows))
    print()
    print(render_comparison(rows))
    if skipped:
        print("\nskipped (--max-pairs): " + "; ".join(skipped))


if __name__ == "__main__":
    main()
