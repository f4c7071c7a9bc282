"""SecAgg / SecAgg+ rounds driven in-process: exact sums, dropouts at every stage, aborts,
uniformity of what the aggregator sees, and rejection of replayed/redirected/tampered messages.

The tiny driver below follows the routing contract of :mod:`secure_fl.protocol.base`:
stages run in order; at a site stage every live site steps once with the messages
delivered to it since its last step; every message passes through the carrier (which may
drop or alter it in these tests); a site whose step raises is dropped for the round.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pytest
from scipy.stats import chisquare, kstest

from secure_fl.errors import ProtocolError, RoundAborted, SiteRejected, SpecError, StageError
from secure_fl.protocol.base import AGGREGATOR, Message, ViewKind
from secure_fl.protocol.secagg import (
    ADVERTISE_KEYS,
    MASKED_INPUT,
    REQUEST_UNMASK,
    ROUTE_KEYS,
    ROUTE_SHARES,
    SHARE_KEYS,
    SIGN_SURVIVORS,
    UNMASK,
    SecAggPlusSum,
    SecAggSum,
    wire,
)
from secure_fl.protocol.secagg.graph import harary_graph
from secure_fl.protocol.secagg.sums import _spawn

SITE_STAGES = [ADVERTISE_KEYS, SHARE_KEYS, MASKED_INPUT, SIGN_SURVIVORS, UNMASK]
Transit = Callable[[Message], "Message | list[Message] | None"]


@dataclass
class Round:
    aggregator: object
    views: list[Message]
    dropped: dict[str, str] = field(default_factory=dict)
    error: Exception | None = None

    @property
    def result(self):  # noqa: ANN201
        return self.aggregator.result()  # type: ignore[attr-defined]


def drive(
    proto: SecAggSum,
    inputs: dict[str, tuple[np.ndarray, int]],
    round: int = 0,
    drop_at: dict[str, str] | None = None,
    transit: Transit | None = None,
) -> Round:
    """Run one round; ``drop_at[site] = stage`` makes a site stop before that stage."""
    ids = list(inputs)
    sites = {i: proto.site(i, round, v, w) for i, (v, w) in inputs.items()}
    agg = proto.aggregator(round, ids, proto.dim)
    inbox: dict[str, list[Message]] = {i: [] for i in ids}
    ainbox: list[Message] = []
    views: list[Message] = []
    dropped: dict[str, str] = {}
    drop_at = {} if drop_at is None else drop_at  # read at every stage: a transit hook may still add to it

    def carry(out: Sequence[Message]) -> None:
        for m in out:
            moved = transit(m) if transit else m
            for mm in [] if moved is None else moved if isinstance(moved, list) else [moved]:
                views.append(mm)
                if mm.receiver == AGGREGATOR:
                    ainbox.append(mm)
                elif mm.receiver in inbox:
                    inbox[mm.receiver].append(mm)

    for stage in proto.stages:
        if stage.actor == "sites":
            for i in list(sites):
                if drop_at.get(i) == stage.name:
                    del sites[i]
                    dropped[i] = f"dropped out before {stage.name}"
                    continue
                msgs, inbox[i] = inbox[i], []
                try:
                    out = sites[i].step(stage.name, msgs)
                except SiteRejected as exc:
                    del sites[i]
                    dropped[i] = exc.reason
                    continue
                carry(out)
        else:
            msgs, ainbox = ainbox, []
            try:
                out = agg.step(stage.name, msgs)
            except RoundAborted as exc:
                return Round(agg, views, dropped, exc)
            carry(out)
    return Round(agg, views, dropped)


def make_inputs(n: int, dim: int, seed: int = 0, max_weight: int = 20) -> dict[str, tuple[np.ndarray, int]]:
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        w = int(rng.integers(1, max_weight + 1))
        out[f"site-{i:02d}"] = (rng.uniform(-1, 1, dim) * w, w)
    return out


def secagg(n: int, dim: int, seed: int = 1, **kw: object) -> SecAggSum:
    params = {"bits": 12, "clip_range": 1.0, "max_weight": 20, "threshold": 4, "rng": np.random.default_rng(seed)}
    params.update(kw)
    proto = SecAggSum(**params)  # type: ignore[arg-type]
    proto.setup([f"site-{i:02d}" for i in range(n)], dim)
    return proto


def secagg_plus(n: int, dim: int, seed: int = 1, **kw: object) -> SecAggPlusSum:
    """A small graph for speed: no colluders or dropouts assumed, so the security target holds trivially."""
    params = {
        "bits": 12,
        "clip_range": 1.0,
        "max_weight": 20,
        "threshold": 3,
        "degree": 4,
        "rng": np.random.default_rng(seed),
        "corrupt_fraction": 0.0,
        "dropout_fraction": 0.0,
    }
    params.update(kw)
    proto = SecAggPlusSum(**params)  # type: ignore[arg-type]
    proto.setup([f"site-{i:02d}" for i in range(n)], dim)
    return proto


def expected_slots(
    proto: SecAggSum, seed: int, inputs: dict[str, tuple[np.ndarray, int]], keep: Sequence[str]
) -> np.ndarray:
    """The quantized plaintext sum: the same generators the protocol's sites get, encoded in the clear."""
    twin = replace(proto, rng=np.random.default_rng(seed))
    twin.setup(list(proto.roster), proto.dim)
    assert twin.rng is not None and twin.quantizer is not None
    total = np.zeros(proto.dim + 1, dtype=twin.quantizer.dtype)
    for site, (values, weight) in inputs.items():
        rng = _spawn(twin.rng)  # rng.spawn(1)[0], also on numpy 1.24
        if site in keep:
            total += twin.quantizer.encode(values, weight, rng)
    return total & twin.quantizer.dtype.type(twin.quantizer.modulus_mask)


def check_exact(proto: SecAggSum, seed: int, inputs: dict[str, tuple[np.ndarray, int]], r: Round) -> None:
    assert r.error is None, r.error
    res = r.result
    assert res is not None
    expected = expected_slots(proto, seed, inputs, res.contributors)
    assert np.array_equal(r.aggregator.integer_sum, expected)  # type: ignore[attr-defined]
    assert res.weight == sum(inputs[s][1] for s in res.contributors)
    true = sum(inputs[s][0] for s in res.contributors)
    assert np.all(np.abs(res.total - true) <= res.weight * proto.quantizer.step)  # type: ignore[union-attr]


# ----------------------------------------------------------------- exact sums and dropouts

N, T, DIM = 7, 4, 40


def test_no_dropout_sum_is_exact_and_equals_the_quantized_plaintext_sum() -> None:
    inputs = make_inputs(N, DIM)
    proto = secagg(N, DIM, seed=11)
    r = drive(proto, inputs)
    check_exact(proto, 11, inputs, r)
    assert r.result.contributors == tuple(sorted(inputs))
    assert r.aggregator.rejected == {}  # type: ignore[attr-defined]


@pytest.mark.parametrize("stage", SITE_STAGES)
@pytest.mark.parametrize("count", [1, N - T - 1])
def test_secagg_survives_dropouts_at_every_stage(stage: str, count: int) -> None:
    inputs = make_inputs(N, DIM, seed=2)
    proto = secagg(N, DIM, seed=3)
    gone = list(inputs)[1 : 1 + count]
    r = drive(proto, inputs, drop_at={s: stage for s in gone})
    check_exact(proto, 3, inputs, r)
    contributors = set(r.result.contributors)
    if stage in (SIGN_SURVIVORS, UNMASK):  # they sent masked inputs: still counted, others unmask for them
        assert contributors == set(inputs)
    else:
        assert contributors == set(inputs) - set(gone)


@pytest.mark.parametrize("stage", SITE_STAGES)
def test_secagg_aborts_below_threshold_and_releases_nothing(stage: str) -> None:
    inputs = make_inputs(N, DIM, seed=4)
    proto = secagg(N, DIM, seed=5)
    gone = list(inputs)[: N - T + 1]
    r = drive(proto, inputs, drop_at={s: stage for s in gone})
    assert isinstance(r.error, RoundAborted)
    agg = r.aggregator
    assert agg.result() is None and agg.integer_sum is None  # type: ignore[attr-defined]
    assert f"< threshold t = {T}" in agg.abort_reason  # type: ignore[attr-defined]
    with pytest.raises(RoundAborted, match="aborted earlier"):
        agg.step("release", [])  # type: ignore[attr-defined]


def test_dropouts_spread_over_all_stages() -> None:
    inputs = make_inputs(9, DIM, seed=6)
    proto = secagg(9, DIM, seed=7, threshold=5)
    r = drive(proto, inputs, drop_at={"site-01": SHARE_KEYS, "site-03": MASKED_INPUT, "site-05": UNMASK})
    check_exact(proto, 7, inputs, r)
    assert set(r.result.contributors) == set(inputs) - {"site-01", "site-03"}


@pytest.mark.parametrize("stage", SITE_STAGES)
@pytest.mark.parametrize("count", [0, 1, 3])
def test_secagg_plus_survives_dropouts_at_every_stage(stage: str, count: int) -> None:
    n = 16
    inputs = make_inputs(n, DIM, seed=8)
    proto = secagg_plus(n, DIM, seed=9, threshold=4, degree=6)
    gone = list(inputs)[::5][:count]  # spread out: no neighbourhood loses more than 7 - 3 sites
    r = drive(proto, inputs, drop_at={s: stage for s in gone})
    check_exact(proto, 9, inputs, r)


def test_secagg_plus_aborts_when_a_neighbourhood_falls_below_threshold() -> None:
    n = 16
    inputs = make_inputs(n, DIM, seed=10)
    proto = secagg_plus(n, DIM, seed=12, threshold=4, degree=4)
    # the graph of a round follows from that round's advertised keys: read the victim's neighbours from the
    # key list the aggregator routes to it, then drop 3 of them before masking. Their shares are held by their
    # own neighbourhoods (the victim's, on a Harary graph), which keep fewer than t = 4 survivors
    victim = "site-00"
    drop_at: dict[str, str] = {}

    def transit(m: Message) -> Message:
        if m.stage == ROUTE_KEYS and m.receiver == victim:
            neighbours = sorted(e[0] for e in wire.decode_keys(m.payload))
            assert len(neighbours) == 4
            drop_at.update({s: MASKED_INPUT for s in neighbours[:3]})
        return m

    r = drive(proto, inputs, round=1, drop_at=drop_at, transit=transit)
    assert len(drop_at) == 3
    if r.error is None:  # the victim refused to send its input: it is not in the sum
        assert victim not in r.result.contributors
        assert "< threshold t = 4" in r.dropped[victim]
    else:
        assert isinstance(r.error, RoundAborted) and "threshold t = 4" in r.aggregator.abort_reason  # type: ignore[attr-defined]
        assert r.result is None


def test_secagg_plus_masks_only_with_degree_neighbours() -> None:
    n, degree = 30, 6
    inputs = make_inputs(n, 8, seed=13)
    proto = secagg_plus(n, 8, seed=14, degree=degree, threshold=4)
    r = drive(proto, inputs)
    check_exact(proto, 14, inputs, r)
    shares_sent = [m for m in r.views if m.stage == SHARE_KEYS]
    assert len(shares_sent) == n * degree  # SecAgg would send n (n - 1)
    graph = r.aggregator._graph  # type: ignore[attr-defined]
    assert all(len(nb) == degree for nb in graph.values())
    assert all(u in graph[v] for u in graph for v in graph[u])  # symmetric


def test_harary_graph_is_regular_seeded_and_complete_when_dense() -> None:
    sites = [f"s{i}" for i in range(20)]
    a, b = harary_graph(sites, 6, b"\x01" * 32), harary_graph(sites, 6, b"\x01" * 32)
    assert a == b and a != harary_graph(sites, 6, b"\x02" * 32)
    assert all(len(v) == 6 and u not in v for u, v in a.items())
    full = harary_graph(sites[:5], 4, b"\x01" * 32)
    assert all(len(v) == 4 for v in full.values())
    with pytest.raises(ValueError, match="even integer"):
        harary_graph(sites, 5, b"\x01" * 32)


# ----------------------------------------------------------------- what the aggregator sees


def _byte_chi2_pvalue(words: np.ndarray) -> float:
    return float(chisquare(np.bincount((words & 0xFF).astype(np.int64), minlength=256)).pvalue)


def test_masked_inputs_are_indistinguishable_from_uniform() -> None:
    """Chi-square on the low byte and KS on the values at alpha = 1e-3; both reject the unmasked input."""
    dim = 20_000
    proto = secagg(5, dim, seed=15, threshold=3)
    inputs = {s: (np.zeros(dim), 1) for s in proto.roster}  # a constant input: masking must hide it
    r = drive(proto, inputs)
    k = proto.quantizer.modulus_bits  # type: ignore[union-attr]
    masked = [m for m in r.views if m.stage == MASKED_INPUT]
    assert len(masked) == 5 and all(m.kind is ViewKind.MASKED for m in masked)
    for m in masked:
        _, vec = wire.decode_masked(m.payload)
        from secure_fl.crypto.quantize import from_wire

        y = from_wire(vec, k, dim + 1)[:-1]
        assert _byte_chi2_pvalue(y) > 1e-3
        assert kstest(y.astype(np.float64) / 2**k, "uniform").pvalue > 1e-3
    # the same statistics flag the input that masking hid (the test can fail)
    plain = proto.quantizer.encode(np.zeros(dim), 1, np.random.default_rng(0))[:-1]  # type: ignore[union-attr]
    assert _byte_chi2_pvalue(plain) < 1e-3
    assert kstest(plain.astype(np.float64) / 2**k, "uniform").pvalue < 1e-3
    # nothing the carrier sees is plain
    assert {m.kind for m in r.views} <= {ViewKind.PUBLIC, ViewKind.CIPHERTEXT, ViewKind.MASKED}


def test_no_site_reveals_both_kinds_of_share_for_one_peer() -> None:
    inputs = make_inputs(N, DIM, seed=16)
    proto = secagg(N, DIM, seed=17)
    r = drive(proto, inputs, drop_at={"site-02": MASKED_INPUT, "site-04": UNMASK})
    check_exact(proto, 17, inputs, r)
    kinds: dict[str, set[int]] = {}
    for m in r.views:
        if m.stage == UNMASK:
            for owner, kind, _ in wire.decode_unmask(m.payload):
                kinds.setdefault(owner, set()).add(kind)
    assert all(len(v) == 1 for v in kinds.values())
    assert kinds["site-02"] == {wire.SHARE_OF_KEY} and kinds["site-04"] == {wire.SHARE_OF_SEED}


ALL = [f"site-{i:02d}" for i in range(N)]


@pytest.mark.parametrize(
    "survivors,reason",
    [
        (ALL[:3] + ALL[2:4], "lists a site twice"),
        (ALL[1:], "does not list this site"),
        (ALL + ["site-99"], "outside the roster"),
        (ALL[:4], "only 4 survivors < 5 needed"),
    ],
)
def test_site_refuses_a_malicious_unmask_request(survivors: list[str], reason: str) -> None:
    """Without the consistency check the request carries U3; a bad one is refused before any share leaves."""
    inputs, proto = make_inputs(N, DIM, seed=18), secagg(N, DIM, seed=19, consistency_check=False)
    forged = wire.encode_request(survivors)

    def forge(m: Message) -> Message:
        return replace(m, payload=forged) if m.stage == REQUEST_UNMASK and m.receiver == "site-00" else m

    r = drive(proto, inputs, transit=forge)
    assert reason in r.dropped["site-00"]
    assert not any(m.stage == UNMASK and m.sender == "site-00" for m in r.views)  # it revealed nothing
    check_exact(proto, 19, inputs, r)  # the others still unmask site-00's input, which it sent


# ----------------------------------------------------------------- replayed, redirected, tampered


def _flip(payload: bytes, at: int = -5) -> bytes:
    b = bytearray(payload)
    b[at] ^= 0x40
    return bytes(b)


def _relayed(m: Message, origin: str, receiver: str) -> bool:
    return (
        m.stage == ROUTE_SHARES
        and m.kind is ViewKind.CIPHERTEXT
        and m.receiver == receiver
        and wire.decode_relay(m.payload)[0] == origin
    )


def _assert_dropped_and_others_exact(
    proto: SecAggSum, seed: int, inputs: dict, r: Round, site: str, reason: str
) -> None:
    check_exact(proto, seed, inputs, r)
    assert site not in r.result.contributors
    assert set(r.result.contributors) == set(inputs) - {site}
    assert reason in r.aggregator.rejected[site]  # type: ignore[attr-defined]


def test_tampered_share_ciphertext_drops_its_sender_only() -> None:
    inputs, proto = make_inputs(N, DIM, seed=20), secagg(N, DIM, seed=21)
    r = drive(
        proto,
        inputs,
        transit=lambda m: replace(m, payload=_flip(m.payload)) if _relayed(m, "site-03", "site-05") else m,
    )
    _assert_dropped_and_others_exact(proto, 21, inputs, r, "site-03", "authentication tag mismatch")
    assert "refused by 'site-05'" in r.aggregator.rejected["site-03"]  # type: ignore[attr-defined]


def test_redirected_share_ciphertext_is_refused() -> None:
    inputs, proto = make_inputs(N, DIM, seed=22), secagg(N, DIM, seed=23)
    stolen: dict[str, bytes] = {}

    def redirect(m: Message) -> Message:
        if _relayed(m, "site-01", "site-02"):
            stolen["p"] = m.payload
        if _relayed(m, "site-01", "site-06") and "p" in stolen:  # the share meant for site-02
            return replace(m, payload=stolen["p"])
        return m

    r = drive(proto, inputs, transit=redirect)
    _assert_dropped_and_others_exact(proto, 23, inputs, r, "site-01", "replayed or redirected")


def test_share_replayed_from_an_earlier_round_is_refused() -> None:
    inputs, proto = make_inputs(N, DIM, seed=24), secagg(N, DIM, seed=25)
    old: dict[str, bytes] = {}

    def record(m: Message) -> Message:
        if _relayed(m, "site-04", "site-00"):
            old["p"] = m.payload
        return m

    drive(proto, inputs, round=0, transit=record)
    r = drive(
        proto,
        inputs,
        round=1,
        transit=lambda m: replace(m, payload=old["p"]) if _relayed(m, "site-04", "site-00") else m,
    )
    assert "site-04" not in r.result.contributors
    assert "authentication tag mismatch" in r.aggregator.rejected["site-04"]  # type: ignore[attr-defined]


def test_duplicated_share_message_is_refused() -> None:
    inputs, proto = make_inputs(N, DIM, seed=26), secagg(N, DIM, seed=27)
    r = drive(proto, inputs, transit=lambda m: [m, m] if _relayed(m, "site-06", "site-01") else m)
    _assert_dropped_and_others_exact(proto, 27, inputs, r, "site-06", "2 share ciphertexts arrived")


def test_truncated_share_envelope_is_refused_by_the_aggregator() -> None:
    inputs, proto = make_inputs(N, DIM, seed=28), secagg(N, DIM, seed=29)

    def cut(m: Message) -> Message:
        if m.stage == SHARE_KEYS and m.sender == "site-02" and wire.decode_relay(m.payload)[0] == "site-03":
            return replace(m, payload=m.payload[:-3])
        return m

    r = drive(proto, inputs, transit=cut)
    _assert_dropped_and_others_exact(proto, 29, inputs, r, "site-02", "expected 98 (truncated or padded)")


def test_truncated_masked_input_is_refused_and_its_masks_recovered() -> None:
    inputs, proto = make_inputs(N, DIM, seed=30), secagg(N, DIM, seed=31)
    r = drive(
        proto,
        inputs,
        transit=lambda m: (
            replace(m, payload=m.payload[:-1]) if m.stage == MASKED_INPUT and m.sender == "site-05" else m
        ),
    )
    _assert_dropped_and_others_exact(proto, 31, inputs, r, "site-05", "malformed masked input")


def test_masked_input_sent_twice_is_refused() -> None:
    inputs, proto = make_inputs(N, DIM, seed=32), secagg(N, DIM, seed=33)
    r = drive(proto, inputs, transit=lambda m: [m, m] if m.stage == MASKED_INPUT and m.sender == "site-00" else m)
    _assert_dropped_and_others_exact(proto, 33, inputs, r, "site-00", "sent 2 messages")


def test_message_from_another_round_is_ignored_with_a_note() -> None:
    inputs, proto = make_inputs(N, DIM, seed=34), secagg(N, DIM, seed=35)
    r = drive(
        proto,
        inputs,
        round=3,
        transit=lambda m: replace(m, round=2) if m.stage == MASKED_INPUT and m.sender == "site-06" else m,
    )
    check_exact(proto, 35, inputs, r)
    assert "site-06" not in r.result.contributors
    assert any("round 2" in n and "replayed" in n for n in r.aggregator.notes)  # type: ignore[attr-defined]


def test_tampered_unmask_share_is_left_out_when_spare_shares_exist() -> None:
    inputs, proto = make_inputs(N, DIM, seed=36), secagg(N, DIM, seed=37)

    def corrupt(m: Message) -> Message:
        if m.stage == UNMASK and m.sender == "site-00":
            entries = wire.decode_unmask(m.payload)
            owner, kind, share = entries[1]
            entries[1] = (owner, kind, share[:20] + bytes([share[20] ^ 1]) + share[21:])
            return replace(m, payload=wire.encode_unmask(entries))
        return m

    r = drive(proto, inputs, transit=corrupt)
    check_exact(proto, 37, inputs, r)
    assert any("'site-00' sent a share" in n for n in r.aggregator.notes)  # type: ignore[attr-defined]


def test_site_with_a_weight_above_max_weight_is_rejected_others_kept() -> None:
    inputs, proto = make_inputs(N, DIM, seed=38), secagg(N, DIM, seed=39)
    inputs["site-03"] = (np.zeros(DIM), 21)
    r = drive(proto, inputs)
    assert "exceeds max_weight = 20" in r.dropped["site-03"]
    check_exact(proto, 39, inputs, r)
    assert "site-03" not in r.result.contributors


def test_stage_out_of_order_is_refused() -> None:
    proto = secagg(N, DIM)
    site = proto.site("site-00", 0, np.zeros(DIM), 1)
    with pytest.raises(StageError, match="out-of-order stage 'masked_input'; expected 'advertise_keys' next"):
        site.step(MASKED_INPUT, [])
    agg = proto.aggregator(0, list(proto.roster), DIM)
    with pytest.raises(StageError, match="out-of-order stage 'release'"):
        agg.step("release", [])


# ----------------------------------------------------------------- spec validation


BASE = {"kind": "secagg", "threshold_fraction": 0.6, "bits": 16, "clip_range": 1.0, "max_weight": 1000}


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"threshold": 3}, "exactly one of 'threshold'"),
        ({"threshold_fraction": None}, "exactly one of 'threshold'"),
        ({"threshold_fraction": None, "threshold": 1}, "threshold: must be >= 2"),
        ({"threshold_fraction": None, "threshold": 2.0}, "threshold: expected an integer"),
        ({"threshold_fraction": 1.5}, "threshold_fraction: must be <= 1"),
        ({"clip_range": 0.0}, "clip_range: must be a finite number > 0"),
        ({"bits": 40}, "bits: must be <= 32"),
        ({"max_weight": 0}, "max_weight: must be >= 1"),
        ({"max_weight": 2.5}, "max_weight: expected an integer"),
        ({"degree": 4}, "unknown key(s) ['degree']"),
        ({"bits": 32, "max_weight": 2**40}, "cannot fit a modulus"),
    ],
)
def test_spec_errors_name_the_key(change: dict, needle: str) -> None:
    params = {k: v for k, v in {**BASE, **change}.items() if v is not None}
    with pytest.raises(SpecError) as err:
        SecAggSum.from_params(params, "protocols/x.toml [secure_sum]")
    assert needle in str(err.value) and "protocols/x.toml [secure_sum]" in str(err.value)


def test_secagg_plus_spec_degree() -> None:
    where = "p.toml [secure_sum]"
    plus = SecAggPlusSum.from_params({**BASE, "kind": "secagg-plus", "degree": 6}, where)
    assert plus.degree == 6 and plus.name == "secagg-plus"
    with pytest.raises(SpecError, match="degree: must be an even integer"):
        SecAggPlusSum.from_params({**BASE, "kind": "secagg-plus", "degree": 5}, where)
    plus = SecAggPlusSum.from_params(
        {k: v for k, v in BASE.items() if k != "threshold_fraction"} | {"kind": "secagg-plus"}, where
    )
    plus.setup([f"s{i}" for i in range(100)], 10)  # degree and t derived for corrupt 1/3, dropout 0.1, 2^-40
    assert (plus.effective_degree, plus.threshold_value, plus.colluders) == (40, 31, 33)
    assert plus.failure_probability <= 2**-40


def test_setup_refuses_a_threshold_above_the_share_holders() -> None:
    proto = SecAggSum(bits=8, clip_range=1.0, max_weight=1, threshold=6)
    with pytest.raises(ProtocolError, match="threshold t = 6 exceeds the 5 share holders"):
        proto.setup([f"s{i}" for i in range(5)], 10)
    with pytest.raises(ProtocolError, match="setup\\(site_ids, dim\\) must be called"):
        SecAggSum(bits=8, clip_range=1.0, max_weight=1, threshold=2).site("s0", 0, np.zeros(3), 1)


def test_protocol_specs_in_the_catalogue_load() -> None:
    from secure_fl.protocol.spec import load_protocol

    for name, cls in (("secagg-fedavg", SecAggSum), ("secagg-plus-fedavg", SecAggPlusSum)):
        spec = load_protocol(name)
        ss = spec.build_secure_sum()
        assert type(ss) is cls and ss.view_kind is ViewKind.MASKED and ss.releases_to_aggregator
        assert spec.threat_model.aggregator_sees == "masked"
        assert any("t" in a for a in spec.threat_model.assumptions)


def test_integer_noise_hook_flows_through_the_round() -> None:
    proto = SecAggSum(bits=12, clip_range=1.0, max_weight=20, threshold=3, rng=np.random.default_rng(40))
    proto.set_integer_noise(lambda dim, rng: np.full(dim, 3, dtype=np.int64), bound=3)
    proto.setup([f"site-{i:02d}" for i in range(5)], DIM)
    inputs = make_inputs(5, DIM, seed=41)
    r = drive(proto, inputs)
    res = r.result
    true = sum(v for v, _ in inputs.values())
    noise = 5 * 3 * proto.quantizer.step  # type: ignore[union-attr]
    assert np.all(np.abs(res.total - (true + noise)) <= res.weight * proto.quantizer.step)  # type: ignore[union-attr]
    with pytest.raises(ProtocolError, match="before setup"):
        proto.set_integer_noise(None, 0)


def test_a_site_keeps_only_its_input_between_stages() -> None:
    """Quantised only when masking: between stages a site holds no vector but the caller's input (memory does not
    grow by a quantised copy per site)."""
    inputs, proto = make_inputs(N, DIM, seed=40), secagg(N, DIM, seed=41)
    site = proto.site("site-00", 0, *inputs["site-00"])
    site.step(ADVERTISE_KEYS, [])

    def arrays(obj: object) -> list[np.ndarray]:
        return [v for v in vars(obj).values() if isinstance(v, np.ndarray)]

    held = arrays(site)
    assert len(held) == 1 and held[0] is inputs["site-00"][0]
    proto = secagg(N, DIM, seed=41)  # a fresh one: the site above drew from this one's generators
    r = drive(proto, inputs)
    check_exact(proto, 41, inputs, r)
