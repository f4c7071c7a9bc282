"""Plaintext FedAvg against a hand-computed weighted mean; the in-process carrier's contract."""

from __future__ import annotations

import numpy as np
import pytest

from secure_fl.aggregation.server import FedAdam, FedAvg
from secure_fl.engine.local import drive_round
from secure_fl.protocol.base import AGGREGATOR, Message, ViewKind
from secure_fl.protocol.pipeline import NoPrivacy
from secure_fl.protocol.plain import PlainSum, encode_plain


def _inputs(deltas, counts, weighting="examples"):
    layer = NoPrivacy(weighting)
    return {
        f"s{i}": layer.site(f"s{i}").transform(np.asarray(d, dtype=np.float32), n, 0)
        for i, (d, n) in enumerate(zip(deltas, counts))
    }


def test_fedavg_equals_hand_computed_weighted_mean():
    deltas = [[1.0, 2.0, 3.0], [3.0, 0.0, -1.0], [0.5, 0.5, 0.5]]
    counts = [10, 30, 60]
    out = drive_round(PlainSum(), 0, _inputs(deltas, counts), 3)
    # (10*[1,2,3] + 30*[3,0,-1] + 60*[.5,.5,.5]) / 100
    expected = np.array([(10 + 90 + 30) / 100, (20 + 0 + 30) / 100, (30 - 30 + 30) / 100])
    np.testing.assert_allclose(out.result.mean, expected, rtol=1e-6)
    assert out.result.weight == 100 and out.result.contributors == ("s0", "s1", "s2")
    uniform = drive_round(PlainSum(), 0, _inputs(deltas, counts, "uniform"), 3)
    np.testing.assert_allclose(uniform.result.mean, np.mean(deltas, axis=0), rtol=1e-6)


def test_bytes_and_views_are_recorded():
    out = drive_round(PlainSum(), 3, _inputs([[1.0] * 5, [2.0] * 5], [1, 1]), 5)
    assert out.bytes_up == {"s0": 16 + 4 * 5, "s1": 16 + 4 * 5}  # round, weight, float32 values
    assert [(v.sender, v.receiver, v.kind, v.round) for v in out.views] == [
        ("s0", AGGREGATOR, "plain", 3),
        ("s1", AGGREGATOR, "plain", 3),
    ]
    assert set(out.stage_seconds) == {"submit", "release"}


def test_dropout_and_broken_site_do_not_cost_the_others():
    inputs = _inputs([[1.0, 1.0], [2.0, 2.0], [4.0, 4.0]], [1, 1, 1])
    out = drive_round(PlainSum(), 0, inputs, 2, drop_before={"s1": "submit"})
    np.testing.assert_allclose(out.result.mean, [2.5, 2.5])
    assert "s1" in out.dropped and out.result.contributors == ("s0", "s2")

    class Broken(PlainSum):
        def site(self, site_id, round, values, weight):
            party = super().site(site_id, round, values, weight)
            if site_id == "s0":
                party.step = lambda stage, inbox: (_ for _ in ()).throw(RuntimeError("disk full"))
            return party

    out = drive_round(Broken(), 0, inputs, 2)
    assert out.dropped["s0"].startswith("RuntimeError") and "disk full" in out.dropped["s0"]
    np.testing.assert_allclose(out.result.mean, [3.0, 3.0])


def test_aggregator_rejects_bad_and_duplicate_messages_and_keeps_the_rest():
    protocol = PlainSum()
    agg = protocol.aggregator(0, ["a", "b", "c"], 2)
    def good(s, v):
        return Message(0, "submit", s, AGGREGATOR, encode_plain(np.array(v, np.float32), 1.0), ViewKind.PLAIN)

    inbox = [
        good("a", [1.0, 1.0]),
        Message(0, "submit", "b", AGGREGATOR, b"\x00" * 5, ViewKind.PLAIN),  # truncated
        good("c", [3.0, 3.0]),
        good("c", [5.0, 5.0]),  # sent twice
        good("mallory", [100.0, 100.0]),  # not a participant
    ]
    agg.step("release", inbox)
    res = agg.result()
    assert res.contributors == ("a",)
    np.testing.assert_allclose(res.mean, [1.0, 1.0])
    assert "expected 24" in agg.rejected["b"]
    assert agg.rejected["c"] == "sent twice in one round"
    assert "not a participant" in agg.rejected["mallory"]


def test_non_finite_update_is_rejected():
    agg = PlainSum().aggregator(0, ["a"], 1)
    agg.step(
        "release",
        [Message(0, "submit", "a", AGGREGATOR, encode_plain(np.array([np.nan], np.float32), 1.0), ViewKind.PLAIN)],
    )
    assert "non-finite" in agg.rejected["a"]


def test_server_optimisers():
    w = np.zeros(3, dtype=np.float32)
    np.testing.assert_allclose(FedAvg(0.5).step(w, np.array([2.0, -2.0, 0.0])), [1.0, -1.0, 0.0])
    adam = FedAdam(lr=0.1, beta1=0.0, beta2=0.0, tau=0.0)
    # with no momentum the step is lr * sign(delta)
    np.testing.assert_allclose(adam.step(w, np.array([3.0, -0.5, 2.0])), [0.1, -0.1, 0.1], rtol=1e-6)
    with pytest.raises(ValueError):
        from secure_fl.aggregation.server import make_server

        make_server("fedprox", 1.0)
