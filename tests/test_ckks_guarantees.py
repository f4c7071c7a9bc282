"""What the CKKS secure sum guarantees, checked on what is sent (payload bytes), not on labels.

* minimum contributors (issue 8 items 1-2): the aggregator withholds, every site refuses;
* the contributor list is bound to the ciphertext (roster tags), so a relabelled sum is refused;
* Li-Micciancio mitigation (item 8): LMSS22 flooding from the CSPRNG, a release budget;
* public bounds (item 12): no magnitude histogram at all;
* stage order, and keys from a deployment kit (issue 11).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import tenseal as ts
from test_ckks_protocol import TOL, make, plain_mean, rel_err, run_round

from secure_fl.crypto.ckks import load_public_context, load_secret_context, provision
from secure_fl.crypto.ckks_frame import FrameKind, pack_frame, unpack_frame
from secure_fl.crypto.ckks_params import error_bound, flooding_std, get_preset, noise_std
from secure_fl.engine.local import drive_round
from secure_fl.errors import ProtocolError, RoundAborted, SpecError, StageError
from secure_fl.privacy.noise import NoiseSource
from secure_fl.protocol.base import AGGREGATOR, Message, ViewKind
from secure_fl.protocol.ckks import BOUNDS, BOUNDS_SUM, DECRYPT, RELEASE, SUBMIT, SUM, CkksSum, update_layout
from secure_fl.protocol.spec import load_protocol


def _drop(*senders_at: tuple[str, str]):
    """Tamper: the listed (sender, stage) messages never arrive (the site dropped out)."""
    gone = set(senders_at)
    return lambda m: [] if (m.sender, m.stage) in gone else [m]


def _assert_only_ciphertext_reaches_the_aggregator(proto: CkksSum, views: Sequence[Message], values) -> None:
    """Every payload the aggregator receives is a CKKS frame that holds no site's float64 or float32 input."""
    to_agg = [m for m in views if m.receiver == AGGREGATOR]
    for m in to_agg:
        kind = FrameKind.BOUNDS if m.stage == BOUNDS else FrameKind.UPDATE
        unpack_frame(m.payload, kind=kind, fingerprint=proto.fingerprint, round=m.round)  # raises if not a frame
        for v in values.values():
            for enc in (v[:4].astype("<f8").tobytes(), v[:4].astype("<f4").tobytes()):
                assert enc not in m.payload


# --- minimum contributors (enforced inside the secure sum) ------------------------------------


def test_two_of_three_contributors_release_nothing_to_the_aggregator() -> None:
    proto, values, weights = make(3, 60, preset="wide", release="aggregator")
    views: list[Message] = []
    with pytest.raises(RoundAborted, match=r"only 2 site\(s\).*min_contributors = 3: the aggregator withholds it"):
        run_round(proto, values, weights, tamper=_drop(("site-02", SUBMIT)), views=views)
    # no sum was sent to any site, so no site could decrypt; nothing but ciphertext reached the aggregator
    assert not [m for m in views if m.stage in (SUM, DECRYPT)]
    assert not [m for m in views if m.receiver == AGGREGATOR and len(m.payload) == 8 * (60 + 1)]
    _assert_only_ciphertext_reaches_the_aggregator(proto, views, values)


def test_two_of_three_at_the_bounds_stage_withholds_the_histogram() -> None:
    proto, values, weights = make(3, 20)
    views: list[Message] = []
    with pytest.raises(RoundAborted, match="bounds sum, fewer than min_contributors = 3"):
        run_round(proto, values, weights, tamper=_drop(("site-01", BOUNDS)), views=views)
    assert not [m for m in views if m.sender == AGGREGATOR]


def test_the_local_engine_records_an_aborted_round_without_result() -> None:
    proto, values, weights = make(3, 20)
    inputs = {s: (values[s], weights[s]) for s in values}
    out = drive_round(proto, 0, inputs, 20, drop_before={"site-02": SUBMIT})
    assert out.result is None and "min_contributors = 3" in (out.aborted or "")
    assert not [v for v in out.views if v.stage == SUM]


def _sum_frame(proto: CkksSum, payloads: Sequence[bytes], dim: int, meta: dict) -> bytes:
    """What a lying aggregator can build: the sum of some submitted ciphertexts, any list in the meta."""
    ctx = proto._public
    layout = update_layout(dim, proto.parameters.slots, len(proto.roster))
    total = None
    for payload in payloads:
        frame = unpack_frame(payload, kind=FrameKind.UPDATE, fingerprint=proto.fingerprint, round=0)
        vecs = [ts.ckks_vector_from(ctx.context, c) for c in frame.chunks]
        total = vecs if total is None else [a + b for a, b in zip(total, vecs)]
    assert total is not None and len(total) == len(layout)
    return pack_frame(FrameKind.SUM, proto.fingerprint, 0, [v.serialize() for v in total], meta)


def _lying_aggregator(proto: CkksSum, dim: int, summed: Sequence[str], listed: list[str], releaser: str | None = None):
    """Replace every SUM the aggregator sends by the sum of ``summed`` labelled with ``listed``."""
    submitted: dict[str, bytes] = {}

    def up(m: Message) -> list[Message]:
        if m.stage == SUBMIT:
            submitted[m.sender] = m.payload
        return [m]

    def down(m: Message) -> list[Message]:
        if m.stage != SUM:
            return [m]
        payload = _sum_frame(proto, [submitted[s] for s in summed], dim, {"contributors": listed, "releaser": releaser})
        return [Message(m.round, m.stage, m.sender, m.receiver, payload, m.kind)]

    return up, down


@pytest.mark.parametrize(
    ("summed", "listed", "needle"),
    [
        (["site-00", "site-01"], ["site-00", "site-01"], r"2 contributor\(s\), fewer than min_contributors = 3"),
        (["site-00", "site-01"], ["site-00", "site-01", "site-02"], "not the sum of the sites it lists"),
        (["site-00", "site-01", "site-01"], ["site-00", "site-01", "site-02"], "not the sum of the sites it lists"),
        (["site-00", "site-01", "site-02"], ["site-00", "site-01", "site-02", "site-99"], "outside the federation"),
        (["site-00", "site-01", "site-02"], ["site-00", "site-00", "site-01", "site-02"], "repeats a site"),
    ],
)
def test_sites_refuse_a_sum_whose_list_is_short_or_a_lie(summed, listed, needle) -> None:
    dim = 30
    proto, values, weights = make(3, dim, preset="wide", release="aggregator")
    up, down = _lying_aggregator(proto, dim, summed, listed, releaser="site-00")
    views: list[Message] = []
    with pytest.raises(RoundAborted, match="releasing site 'site-00' sent 0"):
        sites, *_ = run_round(proto, values, weights, tamper=up, tamper_down=down, views=views)
    assert not [m for m in views if m.kind is ViewKind.AGGREGATE or m.stage == DECRYPT]


def test_every_site_refuses_a_short_or_lying_sum_and_keeps_no_result() -> None:
    dim = 30
    proto, values, weights = make(4, dim)
    three = ["site-00", "site-01", "site-02"]
    up, down = _lying_aggregator(proto, dim, three, three + ["site-03"])
    sites, _, _, dropped = run_round(proto, values, weights, tamper=up, tamper_down=down)
    assert all("not the sum of the sites it lists" in dropped[s] for s in sites)
    assert all(p.result() is None for p in sites.values())
    up, down = _lying_aggregator(proto, dim, three, three)
    sites, _, _, dropped = run_round(proto, values, weights, tamper=up, tamper_down=down)
    assert "does not include this site" in dropped["site-03"] and sites["site-03"].result() is None
    assert rel_err(sites["site-00"].result().mean, plain_mean(values, weights, only=three)) < TOL


def test_privacy_layers_raise_the_minimum_before_setup() -> None:
    proto = CkksSum(preset="small")
    proto.require_contributors(4)
    ids = [f"site-{i:02d}" for i in range(5)]
    proto.setup(ids, 10)
    rng = np.random.default_rng(0)
    values = {s: rng.normal(size=10) for s in ids}
    weights = {s: 1.0 for s in ids}
    with pytest.raises(RoundAborted, match="min_contributors = 4"):
        run_round(proto, values, weights, tamper=_drop(("site-03", SUBMIT), ("site-04", SUBMIT)))
    assert proto.min_contributors == 4


def test_minimum_is_checked_against_the_federation_and_the_spec() -> None:
    with pytest.raises(SpecError, match="min_contributors: must be >= 2"):
        CkksSum(min_contributors=1)
    with pytest.raises(SpecError, match="min_contributors = 3 but the federation has 2 site"):
        CkksSum(preset="small").setup(["a", "b"], 4)
    two = CkksSum(preset="small", min_contributors=2)
    two.setup(["a", "b"], 4)
    sites, _, _, _ = run_round(two, {"a": np.ones(4), "b": np.ones(4) * 3}, {"a": 1.0, "b": 1.0})
    assert np.allclose(sites["a"].result().total, 4.0, atol=1e-4)
    assert load_protocol("ckks-fedavg").build_secure_sum().min_contributors == 3


# --- Li-Micciancio mitigation -----------------------------------------------------------------


def test_flooding_follows_lmss22_for_the_values_released_over_the_run() -> None:
    p = get_preset("wide")
    m = 201 * 100
    b = error_bound(p, 5, m, 40)
    assert b == pytest.approx(noise_std(p, 5) * math.sqrt(2 * (40 * math.log(2) + math.log(2 * m))))
    assert flooding_std(p, 5, m, 40) == pytest.approx(math.sqrt(64 * m) * 2.0**20 * b)
    proto, _, _ = make(5, 200, preset="wide", release="aggregator")
    assert proto.flood_std == pytest.approx(flooding_std(p, 5, m, 40))
    assert proto.release_precision_bits == pytest.approx(p.scale - math.log2(proto.flood_std))
    # more released rounds, more noise: sqrt(10) more for 10x the rounds (up to the log in the bound)
    ten, _, _ = make(5, 200, preset="wide", release="aggregator", max_released_rounds=1000)
    assert math.sqrt(10) < ten.flood_std / proto.flood_std < 3.4
    # today's 2^20 x the average error is far below it
    assert proto.flood_std > 2.0**20 * noise_std(p, 5) * 2**10


def test_flooding_noise_comes_from_the_os_csprng_by_default() -> None:
    proto, values, weights = make(3, 50, preset="wide", release="aggregator")
    sites, agg, _, _ = run_round(proto, values, weights)
    assert isinstance(proto.noise, NoiseSource) and proto.noise.is_secure
    assert not np.array_equal(agg.result().total, sites["site-01"].result().total)
    assert rel_err(agg.result().mean, plain_mean(values, weights)) < 1e-2


def test_sites_stop_releasing_after_max_released_rounds() -> None:
    proto, values, weights = make(3, 20, preset="wide", release="aggregator", max_released_rounds=2)
    for rnd in range(2):
        _, agg, _, _ = run_round(proto, values, weights, round=rnd)
        assert agg.result() is not None
    views: list[Message] = []
    with pytest.raises(RoundAborted, match="releasing site 'site-00' sent 0"):
        run_round(proto, values, weights, round=2, views=views)
    assert not [m for m in views if m.kind is ViewKind.AGGREGATE]
    # a releaser that missed earlier rounds still counts at least one release per round
    fresh, values, weights = make(3, 20, preset="wide", release="aggregator", max_released_rounds=2)
    with pytest.raises(RoundAborted, match="releasing site 'site-00' sent 0"):
        run_round(fresh, values, weights, round=2)


def _flooding(keys, log: Path | None, n: int = 3, dim: int = 20) -> tuple[CkksSum, dict, dict]:
    proto = CkksSum(preset="wide", release="aggregator", max_released_rounds=2)
    ids = [f"site-{i:02d}" for i in range(n)]
    proto.setup(ids, dim, keys=keys, release_log=log)
    rng = np.random.default_rng(0)
    return proto, {s: rng.normal(size=dim) for s in ids}, {s: 3.0 for s in ids}


def test_release_count_outlives_the_process_and_the_run(tmp_path: Path) -> None:
    """The flooding budget is per key set: a new process or a new run with the same keys (a kit's) continues
    the count kept beside them, so no release leaves once max_released_rounds sums were released."""
    from secure_fl.crypto.ckks import generate_keys
    from secure_fl.protocol.ckks_releases import ReleaseCount

    keys, log = generate_keys(get_preset("wide")), tmp_path / "ckks" / "releases.json"
    proto, values, weights = _flooding(keys, log)
    for rnd in range(2):
        _, agg, _, _ = run_round(proto, values, weights, round=rnd)
        assert agg.result() is not None
    assert ReleaseCount(keys.fingerprint, log).seen("site-00") == 2 == proto.released_rounds("site-01")
    # a restarted process starting a new run at round 0 with the same keys: nothing is released
    again, values, weights = _flooding(keys, log)
    views: list[Message] = []
    with pytest.raises(RoundAborted, match="releasing site 'site-00' sent 0"):
        run_round(again, values, weights, round=0, views=views)
    assert not [m for m in views if m.kind is ViewKind.AGGREGATE]
    assert [m for m in views if m.stage == DECRYPT] == []  # no decrypted sum left any site
    # without the file the same keys would have released again (the count would restart at 0)
    _, agg, views, _ = run_round(_flooding(keys, None)[0], values, weights, round=0)
    assert agg.result() is not None and [m for m in views if m.kind is ViewKind.AGGREGATE]
    # new keys in the same file start their own count
    fresh, values, weights = _flooding(generate_keys(get_preset("wide")), log)
    _, agg, _, _ = run_round(fresh, values, weights, round=0)
    # (the refused attempt was counted too: a count may run ahead of the releases, never behind)
    assert agg.result() is not None and ReleaseCount(keys.fingerprint, log).seen("site-00") == 3
    assert ReleaseCount(fresh.fingerprint, log).seen("site-00") == 1
    # a count that cannot be read is refused by name, never read as zero
    log.write_text('{"format": "secure-fl-ckks-releases/1", "key_sets": {"x": {"site-00": -1}}}')
    with pytest.raises(ProtocolError, match="releases.json: 'key_sets' must map"):
        _flooding(keys, log)
    log.write_text("{not json")
    with pytest.raises(ProtocolError, match="releases.json: the CKKS release count is not valid JSON"):
        _flooding(keys, log)


def test_a_deployed_site_counts_releases_beside_its_kit_key(tmp_path: Path) -> None:
    from secure_fl.engine.flower.setup import RELEASE_LOG, setup_protocol

    manifest = provision(3, tmp_path / "keys", preset="wide")
    ids = sorted(manifest["sites"])
    secret = tmp_path / "keys" / manifest["sites"][ids[0]]
    proto = CkksSum(preset="wide", release="aggregator", max_released_rounds=2)
    setup_protocol(proto, ids, 20, ckks_file=secret, ckks_kind="secret")
    proto._count_release(ids[0])  # what a decrypting site does before a release leaves
    again = CkksSum(preset="wide", release="aggregator", max_released_rounds=2)
    setup_protocol(again, ids, 20, ckks_file=secret, ckks_kind="secret")
    assert again.released_rounds(ids[0]) == 1 and (secret.parent / RELEASE_LOG).is_file()


def test_rounding_mitigation_is_refused() -> None:
    with pytest.raises(SpecError, match="'round' was removed"):
        CkksSum(mitigation="round")


# --- public bounds ----------------------------------------------------------------------------


def test_public_bounds_skip_the_histogram_and_match_the_plaintext() -> None:
    _, values, weights = make(4, 100)
    peak = max(float(np.max(np.abs(v))) for v in values.values())
    proto = CkksSum(preset="small", bounds="public", value_bound=2 * peak, weight_bound=2000.0)
    assert [s.name for s in proto.stages] == [SUBMIT, SUM, DECRYPT]
    proto.setup(list(values), 100)
    sites, agg, views, dropped = run_round(proto, values, weights)
    assert not dropped and {m.stage for m in views} == {SUBMIT, SUM}
    assert rel_err(sites["site-02"].result().mean, plain_mean(values, weights)) < 1e-3
    _assert_only_ciphertext_reaches_the_aggregator(proto, views, values)


def test_a_site_over_the_public_bound_sends_nothing() -> None:
    proto = CkksSum(preset="small")
    proto.use_public_bounds(1.0, 10.0)
    ids = [f"s{i}" for i in range(4)]
    proto.setup(ids, 5)
    values = {s: np.full(5, 0.5) for s in ids}
    values["s3"] = np.full(5, 7.0)
    sites, _, views, dropped = run_round(proto, values, {s: 1.0 for s in ids})
    assert "exceeds the public bounds" in dropped["s3"] and "7" not in dropped["s3"]
    assert not [m for m in views if m.sender == "s3"]
    assert np.allclose(sites["s0"].result().total, 1.5, atol=1e-3)
    with pytest.raises(ProtocolError, match="before setup"):
        proto.use_public_bounds(1.0, 1.0)


def test_public_bounds_from_the_spec() -> None:
    table = {"kind": "ckks", "bounds": "public", "value_bound": 4, "weight_bound": 1000}
    ss = CkksSum.from_params(table, "x.toml [secure_sum]")
    assert ss.bounds == "public" and ss.value_bound == 4.0 and BOUNDS not in [s.name for s in ss.stages]


# --- stage order ------------------------------------------------------------------------------


def test_sites_refuse_out_of_order_repeated_or_unknown_stages() -> None:
    proto, values, weights = make(3, 10)
    site = proto.site("site-00", 0, values["site-00"], weights["site-00"])
    with pytest.raises(StageError, match="out-of-order stage 'submit'; expected 'bounds' next"):
        site.step(SUBMIT, [])
    site = proto.site("site-00", 0, values["site-00"], weights["site-00"])
    site.step(BOUNDS, [])
    with pytest.raises(StageError, match="repeated stage 'bounds'; expected 'submit' next"):
        site.step(BOUNDS, [])
    with pytest.raises(StageError, match="unknown stage 'sum'"):
        site.step(SUM, [])


def test_aggregator_refuses_out_of_order_repeated_or_unknown_stages() -> None:
    proto, values, weights = make(3, 10)
    ids = list(values)
    agg = proto.aggregator(0, ids, 10)
    with pytest.raises(StageError, match="out-of-order stage 'sum'; expected 'bounds_sum' next"):
        agg.step(SUM, [])
    agg = proto.aggregator(0, ids, 10)
    msgs = [proto.site(s, 0, values[s], weights[s]).step(BOUNDS, [])[0] for s in ids]
    agg.step(BOUNDS_SUM, msgs)
    with pytest.raises(StageError, match="repeated stage 'bounds_sum'"):
        agg.step(BOUNDS_SUM, msgs)
    with pytest.raises(StageError, match="unknown stage 'release'"):
        agg.step(RELEASE, [])


# --- keys from a deployment kit ---------------------------------------------------------------


def test_parties_built_from_kit_contexts(tmp_path: Path) -> None:
    manifest = provision(3, tmp_path / "keys", preset="small")
    ids = sorted(manifest["sites"])
    dim = 25
    site_side = CkksSum(preset="small")
    site_side.setup(ids, dim, context=load_secret_context(tmp_path / "keys" / manifest["sites"][ids[0]]))
    agg_side = CkksSum(preset="small")
    agg_side.setup(ids, dim, context=load_public_context(tmp_path / "keys" / manifest["aggregator"]))
    assert site_side.fingerprint == agg_side.fingerprint == manifest["fingerprint"]
    rng = np.random.default_rng(4)
    values = {s: rng.normal(size=dim) for s in ids}
    weights = {s: 2.0 for s in ids}
    sites, agg, _, _ = run_round(site_side, values, weights, agg_proto=agg_side)
    assert rel_err(sites[ids[1]].result().mean, plain_mean(values, weights)) < TOL
    assert not agg.context.can_decrypt
    with pytest.raises(ProtocolError, match="secret context: it can make only site parties"):
        site_side.aggregator(0, ids, dim)
    with pytest.raises(ProtocolError, match="public .*context: it can make only aggregator parties"):
        agg_side.site(ids[0], 0, values[ids[0]], 1.0)
    with pytest.raises(ProtocolError, match="either keys .* or context"):
        not_used = object()  # refused before it is looked at
        CkksSum(preset="small").setup(ids, dim, keys=not_used, context=agg_side._public)  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="context is for preset 'small', the spec says 'compact'"):
        CkksSum().setup(ids, dim, context=agg_side._public)
