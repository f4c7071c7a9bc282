"""CkksSum: the aggregator adds ciphertexts it cannot decrypt; bad inputs drop one site or abort.

Rounds are driven by a tiny in-test driver that follows the routing contract of
:mod:`secure_fl.protocol.base` (the engine does the same).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytest
import tenseal as ts
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_fl.crypto.ckks_frame import FrameKind, pack_frame, unpack_frame
from secure_fl.errors import ProtocolError, RoundAborted, SiteRejected, SpecError
from secure_fl.privacy.noise import NoiseSource
from secure_fl.protocol.base import AGGREGATOR, Message, ViewKind
from secure_fl.protocol.ckks import BOUNDS, SUBMIT, CkksSum, update_layout
from secure_fl.protocol.spec import load_protocol, parse_protocol

Tamper = Callable[[Message], list[Message]]
TOL = 1e-4  # relative to the largest |mean| coordinate


def run_round(
    proto: CkksSum,
    values: Mapping[str, np.ndarray],
    weights: Mapping[str, float],
    round: int = 0,
    tamper: Tamper | None = None,
    dim: int | None = None,
    *,
    views: list[Message] | None = None,
    tamper_down: Tamper | None = None,
    agg_proto: CkksSum | None = None,
    streaming: bool = False,
) -> tuple[dict[str, Any], Any, list[Message], dict[str, str]]:
    """Drive one round: stages in order, messages delivered for the receiver's next step.

    ``views`` (if given) collects every message, also when the round aborts; ``tamper`` rewrites
    what sites send, ``tamper_down`` what the aggregator sends; ``agg_proto`` makes the aggregator
    party (a deployment where the aggregator holds its own, public-context CkksSum); ``streaming`` hands
    each site's outbox to the aggregator's ``receive`` as soon as the site has stepped.
    """
    ids = list(values)
    dim = dim if dim is not None else len(next(iter(values.values())))
    sites = {s: proto.site(s, round, values[s], weights[s]) for s in ids}
    agg = (agg_proto or proto).aggregator(round, ids, dim)
    inbox: dict[str, list[Message]] = {s: [] for s in ids}
    agg_inbox: list[Message] = []
    views = views if views is not None else []
    dropped: dict[str, str] = {}
    for stage in proto.stages:
        if stage.actor == "sites":
            for s, party in sites.items():
                if s in dropped:
                    continue
                try:
                    out = party.step(stage.name, inbox[s])
                except SiteRejected as exc:
                    dropped[s] = exc.reason
                    continue
                inbox[s] = []
                sent = [m for msg in out for m in (tamper(msg) if tamper else [msg])]
                views.extend(sent)
                agg_inbox.extend(agg.receive(s, sent) if streaming and sent else sent)
        else:
            out = agg.step(stage.name, agg_inbox)
            agg_inbox = []
            for msg in out:
                for m in tamper_down(msg) if tamper_down else [msg]:
                    views.append(m)
                    inbox[m.receiver].append(m)
    return sites, agg, views, dropped


def make(n: int, dim: int, seed: int = 0, **kw) -> tuple[CkksSum, dict[str, np.ndarray], dict[str, float]]:
    rng = np.random.default_rng(seed)
    proto = CkksSum(preset=kw.pop("preset", "small"), **kw)
    ids = [f"site-{i:02d}" for i in range(n)]
    proto.setup(ids, dim)
    weights = {s: float(rng.integers(1, 2000)) for s in ids}
    base = rng.normal(size=dim) * 0.05
    values = {s: (base + rng.normal(size=dim) * 0.05) * weights[s] for s in ids}
    return proto, values, weights


def plain_mean(values: Mapping[str, np.ndarray], weights: Mapping[str, float], only=None) -> np.ndarray:
    keep = [s for s in values if only is None or s in only]
    return sum(values[s] for s in keep) / sum(weights[s] for s in keep)


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


# --- keys stay where they belong ------------------------------------------------------------


def test_aggregator_holds_only_the_public_context_and_cannot_decrypt() -> None:
    proto, values, weights = make(3, 50)
    sites, agg, views, _ = run_round(proto, values, weights)
    ctx = agg.context
    assert ctx.kind == "public" and not ctx.can_decrypt
    assert not ctx.context.is_private() and not ctx.context.has_secret_key()
    # every site -> aggregator message is a ciphertext, and the aggregator cannot open it
    to_agg = [m for m in views if m.receiver == AGGREGATOR]
    assert to_agg and all(m.kind is ViewKind.CIPHERTEXT for m in to_agg)
    submit = next(m for m in to_agg if m.stage == SUBMIT)
    frame = unpack_frame(submit.payload, kind=FrameKind.UPDATE, fingerprint=ctx.fingerprint, round=0)
    vec = ts.ckks_vector_from(ctx.context, frame.chunks[0])
    with pytest.raises(ValueError, match="secret"):
        vec.decrypt()
    assert agg.result() is None  # release = "sites": nothing for the aggregator
    assert all(s.result() is not None for s in sites.values())


def test_aggregator_refuses_a_secret_context() -> None:
    proto, _, _ = make(3, 4)
    proto._public = proto._secret  # a mis-wired deployment
    with pytest.raises(ProtocolError, match="secret key"):
        proto.aggregator(0, ["site-00", "site-01", "site-02"], 4)


def test_rounds_need_setup() -> None:
    with pytest.raises(ProtocolError, match="setup"):
        CkksSum().site("a", 0, np.zeros(2), 1.0)


# --- correctness ----------------------------------------------------------------------------


@settings(max_examples=6, deadline=None)
@given(
    n=st.integers(min_value=3, max_value=5),
    dim=st.integers(min_value=1, max_value=4200),
    seed=st.integers(min_value=0, max_value=2**31),
    magnitude=st.sampled_from([1e-6, 1e-2, 1.0, 1e3]),
)
def test_decrypted_weighted_mean_matches_plaintext(n: int, dim: int, seed: int, magnitude: float) -> None:
    proto, values, weights = make(n, dim, seed)
    values = {s: v * magnitude for s, v in values.items()}
    sites, agg, views, dropped = run_round(proto, values, weights)
    assert not dropped and not agg.rejected
    want = plain_mean(values, weights)
    for site in sites.values():
        res = site.result()
        assert res is not None and res.contributors == tuple(sorted(values))
        assert rel_err(res.mean, want) < TOL
        assert abs(res.weight - sum(weights.values())) / sum(weights.values()) < TOL
    submits = [m for m in views if m.stage == SUBMIT]
    assert len(submits) == n  # whole-model packing: one message per site, chunks inside
    frame = unpack_frame(submits[0].payload, kind=FrameKind.UPDATE, fingerprint=proto.fingerprint, round=0)
    assert len(frame.chunks) == len(update_layout(dim, 2048, n))


def test_one_hundred_sites_meet_the_tolerance() -> None:
    proto, values, weights = make(100, 300, seed=1, preset="compact")
    sites, agg, _, _ = run_round(proto, values, weights)
    res = sites["site-42"].result()
    assert res is not None and len(res.contributors) == 100
    assert rel_err(res.mean, plain_mean(values, weights)) < TOL


def test_layers_larger_than_the_slots_are_packed() -> None:
    # 3 x 2048 slots + the weight: a "layer" longer than one ciphertext never fails
    proto, values, weights = make(3, 3 * 2048 + 5)
    sites, _, _, _ = run_round(proto, values, weights)
    assert rel_err(sites["site-00"].result().mean, plain_mean(values, weights)) < TOL


def test_same_setup_serves_several_rounds() -> None:
    proto, values, weights = make(3, 20)
    for rnd in range(3):
        sites, agg, _, _ = run_round(proto, values, weights, round=rnd)
        assert rel_err(sites["site-01"].result().mean, plain_mean(values, weights)) < TOL


# --- bad inputs -----------------------------------------------------------------------------


def _retarget(victim: str, stage: str, change: Callable[[bytes], bytes]) -> Tamper:
    def tamper(msg: Message) -> list[Message]:
        if msg.sender == victim and msg.stage == stage:
            return [Message(msg.round, msg.stage, msg.sender, msg.receiver, change(msg.payload), msg.kind)]
        return [msg]

    return tamper


def _reframe(
    proto: CkksSum, change_chunk: Callable[[bytes], bytes], n_chunks: int | None = None
) -> Callable[[bytes], bytes]:
    """A site that frames a broken ciphertext correctly (the digest cannot catch it)."""

    def change(payload: bytes) -> bytes:
        frame = unpack_frame(payload, kind=FrameKind.UPDATE, fingerprint=proto.fingerprint, round=0)
        chunks = [change_chunk(c) for c in frame.chunks]
        if n_chunks is not None:
            chunks = (chunks * n_chunks)[:n_chunks]
        return pack_frame(FrameKind.UPDATE, proto.fingerprint, 0, chunks, frame.meta)

    return change


def _foreign(dim: int) -> Callable[[bytes], bytes]:
    other, ov, ow = make(4, dim, seed=9)
    _, _, views, _ = run_round(other, ov, ow)
    payload = next(m.payload for m in views if m.stage == SUBMIT)
    return lambda _: payload


BAD = {
    "another key set": lambda proto, dim: _foreign(dim),
    "truncated or padded": lambda proto, dim: lambda p: p[: len(p) - 1000],
    "digest does not match": lambda proto, dim: lambda p: p[:-300] + bytes([p[-300] ^ 0x40]) + p[-299:],
    "not a valid ciphertext": lambda proto, dim: _reframe(proto, lambda c: c[: len(c) // 2]),
    "layout of this round needs 1": lambda proto, dim: _reframe(proto, lambda c: c, n_chunks=2),
    "shorter than a frame header": lambda proto, dim: lambda p: b"\x00" * 7,
}


@pytest.mark.parametrize("needle", sorted(BAD))
def test_bad_ciphertext_drops_only_its_sender(needle: str) -> None:
    dim = 40
    proto, values, weights = make(4, dim)
    tamper = _retarget("site-02", SUBMIT, BAD[needle](proto, dim))
    sites, agg, _, dropped = run_round(proto, values, weights, tamper=tamper)
    assert needle in agg.rejected["site-02"]
    assert set(agg.rejected) == {"site-02"}
    honest = {"site-00", "site-01", "site-03"}
    res = sites["site-00"].result()
    assert res is not None and set(res.contributors) == honest
    assert rel_err(res.mean, plain_mean(values, weights, only=honest)) < TOL
    # the dropped site is told nothing: it gets no sum to decrypt
    assert "site-02" in dropped and sites["site-02"].result() is None


@pytest.mark.parametrize("needle", sorted(BAD))
def test_bad_ciphertext_aborts_when_the_spec_says_so(needle: str) -> None:
    dim = 40
    proto, values, weights = make(4, dim, on_bad_input="abort")
    tamper = _retarget("site-01", SUBMIT, BAD[needle](proto, dim))
    with pytest.raises(RoundAborted, match=f"site 'site-01'.*{needle}"):
        run_round(proto, values, weights, tamper=tamper)


def test_a_site_sending_twice_is_dropped_entirely() -> None:
    proto, values, weights = make(4, 10)

    def twice(msg: Message) -> list[Message]:
        return [msg, msg] if msg.sender == "site-01" and msg.stage == SUBMIT else [msg]

    sites, agg, _, _ = run_round(proto, values, weights, tamper=twice)
    assert "sent 2 messages" in agg.rejected["site-01"]
    res = sites["site-00"].result()
    assert res is not None and res.contributors == ("site-00", "site-02", "site-03")
    assert rel_err(res.mean, plain_mean(values, weights, only=res.contributors)) < TOL
    proto, values, weights = make(4, 10, on_bad_input="abort")
    with pytest.raises(RoundAborted, match="site 'site-01'.*sent 2 messages"):
        run_round(proto, values, weights, tamper=twice)


def test_bad_bounds_message_drops_the_site_before_the_sum() -> None:
    proto, values, weights = make(4, 10)
    sites, agg, _, dropped = run_round(proto, values, weights, tamper=_retarget("site-00", BOUNDS, lambda p: p[:100]))
    assert "truncated" in agg.rejected["site-00"] and "site-00" in dropped
    res = sites["site-01"].result()
    assert res.contributors == ("site-01", "site-02", "site-03")
    assert rel_err(res.mean, plain_mean(values, weights, only=res.contributors)) < TOL


def test_wrong_dimension_is_refused_by_layout() -> None:
    proto, values, weights = make(4, 3000)
    values["site-01"] = values["site-01"][:1000]  # one chunk instead of two
    sites, agg, _, _ = run_round(proto, values, weights, dim=3000)
    assert "needs 2" in agg.rejected["site-01"]


def test_non_finite_or_negative_input_is_refused_at_its_site() -> None:
    proto, values, weights = make(5, 10)
    values["site-00"] = values["site-00"].copy()
    values["site-00"][3] = np.nan
    weights["site-02"] = -1.0
    sites, agg, _, dropped = run_round(proto, values, weights)
    assert "non-finite" in dropped["site-00"] and "weight" in dropped["site-02"]
    assert sites["site-01"].result().contributors == ("site-01", "site-03", "site-04")


def test_nothing_valid_aborts_the_round() -> None:
    proto, values, weights = make(3, 10)
    with pytest.raises(RoundAborted, match="no valid update"):
        run_round(proto, values, weights, tamper=lambda m: [] if m.stage == SUBMIT else [m])


# --- release to the aggregator ----------------------------------------------------------------


def test_release_to_aggregator_is_flooded_once_and_within_the_stated_precision() -> None:
    noise = lambda: NoiseSource.seeded(np.random.default_rng(3))  # noqa: E731
    proto, values, weights = make(5, 200, preset="wide", release="aggregator", noise=noise())
    sites, agg, views, _ = run_round(proto, values, weights)
    released = [m for m in views if m.kind is ViewKind.AGGREGATE]
    assert len(released) == 1 and released[0].sender == "site-00"  # one designated site
    got, exact = agg.result(), sites["site-03"].result()
    assert not np.array_equal(got.total, exact.total)  # noise was added before release
    # the flooding std relative to the public bound 2^Lv is 2^-release_precision_bits
    bits = proto.release_precision_bits
    assert bits is not None and 14 <= bits < 20
    bound = 2.0 ** sites["site-00"]._lv
    err = (got.total - exact.total) / bound
    assert 0.8 < np.std(err) / 2.0**-bits < 1.2
    # seeded source: the same noise again
    proto2, _, _ = make(5, 200, preset="wide", release="aggregator", noise=noise())
    proto2._keys, proto2._secret, proto2._public, proto2._fingerprint = (
        proto._keys,
        proto._secret,
        proto._public,
        proto._fingerprint,
    )
    sites2, agg2, _, _ = run_round(proto2, values, weights)
    noise2 = agg2.result().total - sites2["site-03"].result().total
    np.testing.assert_allclose(noise2, got.total - exact.total, rtol=1e-6)


def test_release_needs_room_for_the_flooding() -> None:
    with pytest.raises(SpecError, match="keeps .* bits, need 14: use preset 'wide'"):
        make(3, 10, preset="compact", release="aggregator")
    with pytest.raises(SpecError, match="max_released_rounds = 1000000"):
        make(3, 10_000, preset="wide", release="aggregator", max_released_rounds=1_000_000)
    make(3, 10, preset="wide", release="aggregator")


def test_releaser_dropping_out_aborts_the_release() -> None:
    proto, values, weights = make(3, 10, preset="wide", release="aggregator")
    with pytest.raises(RoundAborted, match="releasing site 'site-00'"):
        run_round(proto, values, weights, tamper=lambda m: [] if m.kind is ViewKind.AGGREGATE else [m])


# --- spec -----------------------------------------------------------------------------------


def test_catalogue_spec_builds_a_ckks_sum() -> None:
    spec = load_protocol("ckks-fedavg")
    ss = spec.build_secure_sum()
    assert isinstance(ss, CkksSum) and ss.view_kind is ViewKind.CIPHERTEXT
    assert spec.threat_model.aggregator_sees == "ciphertext"
    assert not ss.releases_to_aggregator and ss.preset == "compact"


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        ({"kind": "ckks", "preset": "huge"}, "preset: expected one of"),
        ({"kind": "ckks", "release": "everyone"}, "release: expected one of"),
        ({"kind": "ckks", "on_bad_input": "ignore"}, "on_bad_input: expected one of"),
        ({"kind": "ckks", "mitigation": "none"}, r"mitigation: expected one of \['flood'\]"),
        ({"kind": "ckks", "mitigation": "round"}, "'round' was removed: rounding to a grid is deterministic"),
        ({"kind": "ckks", "mitigation_bits": 20}, "mitigation_bits: no longer a key.*statistical_security"),
        ({"kind": "ckks", "statistical_security": 30}, "statistical_security: must be >= 40"),
        ({"kind": "ckks", "min_contributors": 1}, "min_contributors: must be >= 2"),
        ({"kind": "ckks", "bounds": "public"}, "needs value_bound and weight_bound"),
        ({"kind": "ckks", "value_bound": 1.0}, "only with bounds = 'public'"),
        ({"kind": "ckks", "bounds": "public", "value_bound": -1.0, "weight_bound": 1.0}, "value_bound: must be > 0"),
        ({"kind": "ckks", "poly_degree": 4096}, "unknown key"),
    ],
)
def test_bad_spec_tables_are_refused(table: dict, needle: str) -> None:
    with pytest.raises(SpecError, match=needle):
        CkksSum.from_params(table, "protocols/x.toml [secure_sum]")


def test_spec_cannot_claim_the_aggregator_sees_less() -> None:
    spec = load_protocol("ckks-fedavg").raw
    data = {**spec, "threat_model": {**spec["threat_model"], "aggregator_sees": "masked"}}
    with pytest.raises(SpecError, match="aggregator_sees"):
        parse_protocol(data, "x.toml")


# --- streaming: the aggregator adds each input on arrival -------------------------------------


@pytest.mark.parametrize("bounds", ["histogram", "public"])
def test_streaming_aggregator_takes_each_input_on_arrival_and_releases_the_same_sum(bounds: str) -> None:
    dim = 3000  # two chunks of the small preset (2048 slots)
    kw = {"bounds": "public", "value_bound": 5000.0, "weight_bound": 2000.0} if bounds == "public" else {}
    proto, values, weights = make(4, dim, **kw)
    sites, agg, _, dropped = run_round(proto, values, weights, streaming=True)
    assert not dropped and not agg.rejected
    want = plain_mean(values, weights)
    for party in sites.values():
        assert rel_err(party.result().mean, want) < TOL
    # the aggregator kept no site's message for its step: every one was consumed by receive
    proto2, values2, weights2 = make(4, dim, seed=1, **kw)
    agg2 = proto2.aggregator(0, list(values2), dim)
    parties = {s: proto2.site(s, 0, values2[s], weights2[s]) for s in values2}
    inbox: dict[str, list[Message]] = {s: [] for s in values2}
    taken: list[int] = []  # messages receive() left for the aggregator's step
    for stage in proto2.stages:
        if stage.actor == "sites":
            for s, party in parties.items():
                left = agg2.receive(s, party.step(stage.name, inbox.pop(s, [])))
                taken.append(len(left))
                inbox.setdefault(AGGREGATOR, []).extend(left)
        else:
            for m in agg2.step(stage.name, inbox.pop(AGGREGATOR, [])):
                inbox.setdefault(m.receiver, []).append(m)
    # bounds and submit messages are consumed on arrival; the decrypt stage sends nothing to it
    assert taken and all(n == 0 for n in taken)
    assert rel_err(parties["site-00"].result().mean, plain_mean(values2, weights2)) < TOL


def test_a_ciphertext_failing_midway_is_taken_out_of_the_running_sum() -> None:
    """site-02's second chunk is not a ciphertext: its first chunk was already added on arrival and must be
    subtracted again, so the released sum is exactly the other sites' (rolled back, not poisoned)."""
    dim = 3000
    proto, values, weights = make(4, dim)
    state = {"i": 0}

    def break_second(c: bytes) -> bytes:
        state["i"] += 1
        return c if state["i"] == 1 else c[: len(c) // 2]

    tamper = _retarget("site-02", SUBMIT, _reframe(proto, break_second))
    sites, agg, _, dropped = run_round(proto, values, weights, tamper=tamper, streaming=True)
    assert "chunk 1 is not a valid ciphertext" in agg.rejected["site-02"]
    others = [s for s in values if s != "site-02"]
    res = sites["site-00"].result()
    assert sorted(res.contributors) == others
    assert rel_err(res.mean, plain_mean(values, weights, only=others)) < TOL


def test_a_carrier_delivering_a_site_twice_is_a_protocol_error() -> None:
    from secure_fl.errors import ProtocolError

    proto, values, weights = make(3, 50, bounds="public", value_bound=5000.0, weight_bound=2000.0)
    agg = proto.aggregator(0, list(values), 50)
    sent = proto.site("site-00", 0, values["site-00"], weights["site-00"]).step(SUBMIT, [])
    assert agg.receive("site-00", sent) == []
    with pytest.raises(ProtocolError, match="delivered twice"):
        agg.receive("site-00", sent)


def test_streaming_refuses_a_message_handed_over_under_another_name() -> None:
    proto, values, weights = make(4, 50)

    def spoof(m: Message) -> list[Message]:
        if m.sender == "site-00" and m.stage == SUBMIT:
            return [Message(m.round, m.stage, "site-01", m.receiver, m.payload, m.kind)]
        return [m]

    sites, agg, _, _ = run_round(proto, values, weights, tamper=spoof, streaming=True)
    assert "labelled" in agg.rejected["site-00"]
    res = sites["site-01"].result()
    assert "site-00" not in res.contributors
    assert rel_err(res.mean, plain_mean(values, weights, only=res.contributors)) < TOL


def test_the_local_engine_hands_each_ciphertext_to_the_aggregator_on_arrival(monkeypatch) -> None:
    """drive_round streams: when the aggregator's summing stages run, every site's ciphertext is already in
    the running sum (its step gets an empty inbox), and the time spent adding counts in those stages."""
    from secure_fl.engine.local import drive_round

    dim = 3000
    proto, values, weights = make(4, dim)
    inboxes: dict[str, int] = {}
    make_aggregator = proto.aggregator

    def aggregator(*args: Any, **kwargs: Any) -> Any:
        agg = make_aggregator(*args, **kwargs)
        step = agg.step

        def recording(stage: str, inbox: Any) -> list[Message]:
            inboxes[stage] = len(inbox)
            return step(stage, inbox)

        agg.step = recording
        return agg

    monkeypatch.setattr(proto, "aggregator", aggregator)
    out = drive_round(proto, 0, {s: (values[s], weights[s]) for s in values}, dim)
    assert out.aborted is None and out.result is not None
    assert rel_err(out.result.mean, plain_mean(values, weights)) < TOL
    assert inboxes == {"bounds_sum": 0, "sum": 0}
    assert out.stage_seconds["sum"] > 0
