"""One validation path per component, stage sequencing in the base (secure_fl/protocol/base.py).

A component checks its arguments once, in its constructor, raising InvalidParameter naming the argument;
its spec reader re-raises that error with the spec location (speccheck.build). The tests check that the
constructor's error and the spec's error carry the same text, so the two cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest

from secure_fl.errors import InvalidParameter, SpecError, StageError
from secure_fl.privacy.mechanisms import AdaptiveClip
from secure_fl.protocol.base import SecureSum, StagedParty, ViewKind, handles
from secure_fl.protocol.ckks import CkksSum
from secure_fl.protocol.dp import parse_privacy
from secure_fl.protocol.plain import PlainSum
from secure_fl.protocol.secagg import SecAggPlusSum, SecAggSum

WHERE = "x.toml [secure_sum]"


@pytest.mark.parametrize(
    ("cls", "kwargs", "key", "text"),
    [
        (SecAggSum, {"threshold_fraction": 0.4}, "threshold_fraction", "must be > 1/2"),
        (SecAggSum, {"threshold": 3, "bits": 40}, "bits", "must be <= 32, found 40"),
        (SecAggSum, {"threshold": 3, "threshold_fraction": 0.6}, "", "set exactly one of 'threshold'"),
        (SecAggPlusSum, {"degree": 3}, "degree", "must be an even integer >= 2"),
        (CkksSum, {"min_contributors": 1}, "min_contributors", "must be >= 2, found 1"),
        (CkksSum, {"statistical_security": 200}, "statistical_security", "must be <= 128, found 200"),
        (CkksSum, {"release": "everyone"}, "release", "expected one of ['sites', 'aggregator'], found 'everyone'"),
        (CkksSum, {"bounds": "public", "value_bound": 1.0}, "", "needs value_bound and weight_bound"),
    ],
)
def test_constructor_and_spec_give_one_error(cls: type[SecureSum], kwargs: dict, key: str, text: str) -> None:
    base = {"clip_range": 1.0, "max_weight": 1} if issubclass(cls, SecAggSum) else {}
    with pytest.raises(InvalidParameter) as direct:
        cls(**base, **kwargs)
    assert direct.value.key == key and text in str(direct.value)
    with pytest.raises(SpecError) as spec:
        cls.from_params({"kind": cls.name, **base, **kwargs}, WHERE)
    located = f"{WHERE}.{key}: " if key else f"{WHERE}: "
    assert str(spec.value) == located + direct.value.problem


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"target_quantile": 1.5}, "[privacy].target_quantile: target quantile must be in (0, 1), found 1.5"),
        ({"clip_learning_rate": 0.0}, "[privacy].clip_learning_rate: clip learning rate must be a finite number > 0"),
    ],
)
def test_adaptive_clip_is_validated_by_its_constructor_with_the_spec_key_named(change: dict, message: str) -> None:
    table = {"mechanism": "dp-fedavg", "noise": "central", "noise_adder": "aggregator", "delta": 1e-5,
             "noise_multiplier": 1.0, "max_grad_norm": 1.0, "clipping": "adaptive", "accountant": "rdp", **change}
    with pytest.raises(SpecError) as err:
        parse_privacy(table, "[privacy]", PlainSum())
    assert message in str(err.value)
    with pytest.raises(InvalidParameter):  # the same check, by the constructor
        AdaptiveClip(clip=1.0, target_quantile=table["target_quantile"] if "target_quantile" in change else 0.5,
                     learning_rate=table.get("clip_learning_rate", 0.2))


def test_name_and_view_kind_are_class_variables() -> None:
    for cls, name, kind in [(PlainSum, "plain", ViewKind.PLAIN), (CkksSum, "ckks", ViewKind.CIPHERTEXT),
                            (SecAggSum, "secagg", ViewKind.MASKED), (SecAggPlusSum, "secagg-plus", ViewKind.MASKED)]:
        assert (cls.name, cls.view_kind) == (name, kind)
        assert {"name", "view_kind"}.isdisjoint(f.name for f in dataclasses.fields(cls))


class _Toy(StagedParty):
    def __init__(self, stages: tuple[str, ...]) -> None:
        from secure_fl.protocol.base import Stage

        self._sequence(tuple(Stage(s, "sites") for s in stages), "sites", "toy site")

    @handles("a")
    def _a(self, inbox: object) -> list:
        return ["a"]

    @handles("b")
    def _b(self, inbox: object) -> list:
        return ["b"]


def test_staged_party_refuses_unknown_repeated_and_out_of_order_stages_with_one_error() -> None:
    party = _Toy(("a", "b"))
    with pytest.raises(StageError, match=r"toy site: out-of-order stage 'b'; expected 'a' next"):
        party.step("b", [])
    assert party.step("a", []) == ["a"]
    with pytest.raises(StageError, match=r"repeated stage 'a'; expected 'b' next"):
        party.step("a", [])
    with pytest.raises(StageError, match=r"unknown stage 'c'"):
        party.step("c", [])
    assert party.step("b", []) == ["b"]
    with pytest.raises(StageError, match="this party has finished its round"):
        party.step("b", [])


def test_a_stage_without_a_handler_is_refused_when_the_party_is_made() -> None:
    with pytest.raises(Exception, match=r"no handler for stage\(s\) \['z'\]"):
        _Toy(("a", "z"))


def test_parties_stay_picklable_between_stages() -> None:
    """The Flower site keeps a round's party on disk between messages."""
    proto = SecAggSum(threshold=2, clip_range=1.0, max_weight=1)
    proto.setup(["s0", "s1", "s2"], 4)
    site = proto.site("s0", 0, np.zeros(4), 1.0)
    site.step("advertise_keys", [])
    again = pickle.loads(pickle.dumps(site))
    assert again.next_stage == "share_keys"
    with pytest.raises(StageError, match="repeated stage 'advertise_keys'"):
        again.step("advertise_keys", [])
    plain = PlainSum().site("s0", 3, np.ones(2), 1.0)
    assert pickle.loads(pickle.dumps(plain)).step("submit", [])[0].round == 3
