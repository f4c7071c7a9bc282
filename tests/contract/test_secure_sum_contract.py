"""The SecureSum contract (issue 18): one suite that every registered secure sum must pass.

Parametrised over :data:`secure_fl.protocol.registry.SECURE_SUMS`, so a kind added to the
registry is tested automatically: its configuration is the one of the first catalogue spec using
it (plus :data:`EXTRA_CONFIGS`); a kind with neither fails :func:`test_every_registered_kind_is_configured`.
Rounds are driven by :func:`drive`, which follows the routing contract of
:mod:`secure_fl.protocol.base` and lets a test drop, tamper with or replay messages.

Cases that fail today because a check is being added on another branch are marked
``xfail(strict=True)`` with that branch's name: they flip to a failure when the fix lands,
and the marker must then be removed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from payload_audit import Promise, SiteInput, audit, quantizer_of

from secure_fl.errors import RoundAborted, SiteRejected, StageError
from secure_fl.protocol.base import AGGREGATOR, AggregatorParty, Message, SecureSum, SiteParty, SumResult, ViewKind
from secure_fl.protocol.registry import SECURE_SUMS, secure_sum_class
from secure_fl.protocol.spec import list_protocols, load_protocol

SITES = [f"s{i}" for i in range(5)]
#: enough coordinates for the payload audit's correlation check; one CKKS chunk in every preset used
DIM = 2000

#: configurations tested besides the catalogue's ([secure_sum] tables): what no spec in protocols/ exercises
EXTRA_CONFIGS: dict[str, list[dict[str, Any]]] = {
    "ckks": [{"kind": "ckks", "preset": "wide", "release": "aggregator"}],
}

#: (case, config id or config id-extra) -> why it fails today; strict, so it fails once the fix lands
XFAIL: dict[tuple[str, str], str] = {}


def _catalogue_tables() -> dict[str, list[dict[str, Any]]]:
    """Per kind, the [secure_sum] table of the first spec using it (specs without [privacy] first)."""
    specs = sorted((load_protocol(n) for n in list_protocols()), key=lambda sp: (sp.privacy is not None, sp.name))
    out: dict[str, list[dict[str, Any]]] = {}
    for sp in specs:
        out.setdefault(sp.secure_sum_kind, [dict(sp.secure_sum_table)])
    return out


def _configs() -> list[tuple[str, dict[str, Any]]]:
    """(id, table) for every registered kind: the catalogue's configuration, then EXTRA_CONFIGS."""
    catalogue = _catalogue_tables()
    out = []
    for kind in SECURE_SUMS:
        out += [(kind, table) for table in catalogue.get(kind, [])[:1]]
        for table in EXTRA_CONFIGS.get(kind, []):
            label = "-".join(f"{k}={v}" for k, v in table.items() if k not in ("kind", "preset"))
            out.append((f"{kind}-{label}", table))
    return out


CONFIG_IDS = [cid for cid, _ in _configs()]


def params(case: str, extra: Sequence[Any] | None = None) -> list[Any]:
    """pytest params over every configuration (times ``extra``), with this case's xfail markers."""
    out = []
    for cid, table in _configs():
        for e in extra if extra is not None else [None]:
            key = cid if e is None else f"{cid}-{e}"
            reason = XFAIL.get((case, key)) or XFAIL.get((case, cid))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            values = (cid, table) if e is None else (cid, table, e)
            out.append(pytest.param(*values, marks=marks, id=key))
    return out


_BUILT: dict[str, SecureSum] = {}


def protocol(cid: str, table: Mapping[str, Any]) -> SecureSum:
    """The configuration's secure sum, set up once for SITES and DIM (CKKS keys cost ~0.3 s a set)."""
    if cid not in _BUILT:
        proto = secure_sum_class(str(table["kind"]), cid).from_params(table, f"contract[{cid}]")
        proto.setup(SITES, DIM)
        _BUILT[cid] = proto
    return _BUILT[cid]


def site_stages(table: Mapping[str, Any]) -> list[str]:
    proto = secure_sum_class(str(table["kind"]), "contract").from_params(table, "contract")
    return [s.name for s in proto.stages if s.actor == "sites"]


def inputs_for(proto: SecureSum, seed: int, sites: Sequence[str] = SITES) -> dict[str, tuple[np.ndarray, float]]:
    """Random inputs the protocol accepts: integer weights within max_weight, deltas within clip_range."""
    rng = np.random.default_rng(seed)
    clip = float(getattr(proto, "clip_range", 1.0))
    top = int(getattr(proto, "max_weight", 50))
    out = {}
    for s in sites:
        w = float(rng.integers(1, min(50, top) + 1))
        out[s] = (rng.uniform(-0.9 * clip, 0.9 * clip, DIM) * w, w)
    return out


def tolerance(
    proto: SecureSum, inputs: Mapping[str, tuple[np.ndarray, float]], contributors: Sequence[str]
) -> tuple[float, float]:
    """The protocol's stated accuracy for a sum over ``contributors``: (values, weight)."""
    peak = sum(float(np.max(np.abs(inputs[s][0]))) for s in contributors)
    weight = sum(inputs[s][1] for s in contributors)
    q = quantizer_of(proto, len(SITES))
    if q is not None:  # one quantisation step per unit of weight per coordinate (secagg specs); weights exact
        return q.step * weight * (1 + 1e-9) + 1e-9, 0.0
    if proto.name == "ckks":
        # a release keeps >= 14 bits relative to its bound 2^ceil(log2 Σ max|v|) <= 2 Σ max|v| (ckks-fedavg.toml):
        # flooding std <= 2^-13 Σ max|v|; the largest of a few thousand coordinates stays below 8 std
        return 2.0**-10 * peak, 2.0**-10 * weight
    if proto.name == "plain":  # float32 on the wire
        return 2.0**-20 * peak, 0.0
    raise AssertionError(f"state the accuracy of secure sum {proto.name!r} in tests/contract (tolerance())")


# --- the driver ----------------------------------------------------------------------------------

Tamper = Callable[[Message], list[Message]]


@dataclass
class Outcome:
    sites: dict[str, SiteParty]
    aggregator: AggregatorParty
    messages: list[Message] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)
    aborted: str | None = None

    def results(self) -> dict[str, SumResult]:
        """Released sums: per live site holding one, and the aggregator's under AGGREGATOR."""
        out = {s: r for s, p in self.sites.items() if s not in self.dropped and (r := p.result()) is not None}
        if (r := self.aggregator.result()) is not None:
            out[AGGREGATOR] = r
        return out


def drive(proto: SecureSum, round: int, inputs: Mapping[str, tuple[np.ndarray, float]], *,
          drop_before: Mapping[str, str] | None = None, tamper: Tamper | None = None,
          streaming: bool = False) -> Outcome:
    """One round by the routing contract: stages in order, a message reaches its receiver's next step.

    ``streaming``: each site's (tampered) messages to the aggregator go to its ``receive`` as soon as the
    site has stepped, as the local and Flower engines deliver them. Only the project's refusals are caught
    (SiteRejected drops a site, RoundAborted ends the round): any other exception is a bug and fails the test.
    """
    drop_before = dict(drop_before or {})
    ids = list(inputs)
    out = Outcome({s: proto.site(s, round, *inputs[s]) for s in ids}, proto.aggregator(round, ids, DIM))
    inbox: dict[str, list[Message]] = defaultdict(list)

    def send(messages: Sequence[Message], sender: str | None = None) -> None:
        sent = [mm for m in messages for mm in (tamper(m) if tamper is not None else [m])]
        out.messages.extend(sent)
        to_agg = [m for m in sent if m.receiver == AGGREGATOR]
        for m in sent:
            if m.receiver != AGGREGATOR:
                inbox[m.receiver].append(m)
        if streaming and sender is not None and to_agg:
            to_agg = out.aggregator.receive(sender, to_agg)
        inbox[AGGREGATOR].extend(to_agg)

    try:
        for stage in proto.stages:
            if stage.actor == "sites":
                for s in ids:
                    if s in out.dropped:
                        continue
                    if drop_before.get(s) == stage.name:
                        out.dropped[s] = f"dropped before {stage.name!r}"
                        continue
                    try:
                        send(out.sites[s].step(stage.name, inbox.pop(s, [])), s)
                    except SiteRejected as exc:
                        out.dropped[s] = exc.reason
            else:
                send(out.aggregator.step(stage.name, inbox.pop(AGGREGATOR, [])))
    except RoundAborted as exc:
        out.aborted = str(exc)
    return out


def assert_correct(proto: SecureSum, outcome: Outcome, inputs: Mapping[str, tuple[np.ndarray, float]],
                   allowed: Sequence[str] | None = None) -> dict[str, SumResult]:
    """Every released sum is the sum of its contributors' inputs (within tolerance), never a wrong one."""
    results = outcome.results()
    allowed = list(inputs) if allowed is None else list(allowed)
    for holder, res in results.items():
        contributors = list(res.contributors)
        assert len(set(contributors)) == len(contributors), f"{holder}: a contributor is listed twice: {contributors}"
        assert set(contributors) <= set(allowed), f"{holder}: contributors {contributors} include one outside {allowed}"
        assert len(contributors) >= max(1, proto.min_contributors), f"{holder}: {contributors} < min_contributors"
        want = sum(inputs[s][0] for s in contributors)
        want_w = sum(inputs[s][1] for s in contributors)
        tol, tol_w = tolerance(proto, inputs, contributors)
        err = float(np.max(np.abs(res.total - want)))
        assert err <= tol, f"{holder}: released sum over {contributors} is off by {err:.3g} > {tol:.3g}"
        assert abs(res.weight - want_w) <= tol_w, f"{holder}: weight {res.weight} != {want_w} over {contributors}"
    return results


# --- the registry ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(SECURE_SUMS))
def test_every_registered_kind_is_configured(kind: str) -> None:
    kinds = {table["kind"] for _, table in _configs()}
    assert kind in kinds, f"secure sum {kind!r} has no configuration: add a spec using it (or EXTRA_CONFIGS)"


# --- honest runs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cid", "table"), params("honest"))
def test_honest_run_gives_the_plaintext_sum(cid: str, table: dict[str, Any]) -> None:
    proto = protocol(cid, table)
    inputs = inputs_for(proto, 1)
    outcome = drive(proto, 0, inputs)
    assert outcome.aborted is None and outcome.dropped == {}, (outcome.aborted, outcome.dropped)
    results = assert_correct(proto, outcome, inputs)
    assert results, "nobody received the sum"
    assert all(sorted(r.contributors) == SITES for r in results.values())


@pytest.mark.parametrize(("cid", "table"), params("release"))
def test_the_sum_reaches_the_aggregator_only_when_the_protocol_says_so(cid: str, table: dict[str, Any]) -> None:
    proto = protocol(cid, table)
    inputs = inputs_for(proto, 2)
    outcome = drive(proto, 0, inputs)
    results = assert_correct(proto, outcome, inputs)
    to_aggregator = [m for m in outcome.messages if m.receiver == AGGREGATOR and m.kind is ViewKind.AGGREGATE]
    if proto.releases_to_aggregator:
        assert AGGREGATOR in results, "releases_to_aggregator is set but the aggregator holds no sum"
        return
    assert AGGREGATOR not in results and not to_aggregator, "the sum reached the aggregator"
    assert results, "nobody received the sum"
    # not even hidden in another message: no payload to the aggregator carries (or correlates with) the sum
    total = sum(v for v, _ in inputs.values())
    to_agg = [m for m in outcome.messages if m.receiver == AGGREGATOR]
    seen = Promise(proto.view_kind.value, proto.min_contributors, None, _public_context(proto))
    assert audit(to_agg, {"the sum": SiteInput(total, 1.0)}, seen) == []


def _public_context(proto: SecureSum) -> object | None:
    return getattr(proto.aggregator(0, SITES, DIM), "context", None)


@pytest.mark.parametrize(("cid", "table"), params("payloads"))
def test_payloads_match_the_view_kind(cid: str, table: dict[str, Any]) -> None:
    """The item-7 payload audit (tests/payload_audit.py), against the protocol's own view_kind."""
    proto = protocol(cid, table)
    inputs = inputs_for(proto, 3)
    carried: list[Message] = []
    outcome = drive(proto, 0, inputs, tamper=lambda m: carried.append(m) or [m])
    assert outcome.aborted is None
    quantizer = quantizer_of(proto, len(SITES))
    promise = Promise(proto.view_kind.value, proto.min_contributors, quantizer, _public_context(proto))
    site_inputs = {s: SiteInput(v, w) for s, (v, w) in inputs.items()}
    assert audit(carried, site_inputs, promise) == []


# --- dropouts ----------------------------------------------------------------------------------------


def _stage_params(case: str) -> list[Any]:
    out = []
    for cid, table in _configs():
        for stage in site_stages(table):
            key = f"{cid}-{stage}"
            reason = XFAIL.get((case, key)) or XFAIL.get((case, cid))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            out.append(pytest.param(cid, table, stage, marks=marks, id=key))
    return out


@pytest.mark.parametrize(("cid", "table", "stage"), _stage_params("dropout"))
def test_a_dropout_before_each_site_stage_gives_the_sum_of_the_others_or_a_clean_abort(
    cid: str, table: dict[str, Any], stage: str
) -> None:
    proto = protocol(cid, table)
    inputs = inputs_for(proto, 4)
    gone = SITES[-1]
    outcome = drive(proto, 0, inputs, drop_before={gone: stage})
    results = assert_correct(proto, outcome, inputs)
    if outcome.aborted is None:
        assert results, f"no abort and no sum after {gone} dropped before {stage!r}"
    first = site_stages(table)[0]
    for res in results.values():
        if stage == first:  # it never sent anything
            assert gone not in res.contributors


def _hides_inputs(proto: SecureSum) -> bool:
    return proto.view_kind is not ViewKind.PLAIN


@pytest.mark.parametrize(("cid", "table"), params("too_few"))
def test_too_few_contributors_release_nothing(cid: str, table: dict[str, Any]) -> None:
    """A "sum" of fewer than min_contributors sites (at least 2: a sum of one is that site's input)
    is withheld by the aggregator and refused by every key holder (issue 8 items 2, 3)."""
    proto = protocol(cid, table)
    if not _hides_inputs(proto):
        pytest.skip(f"{cid}: the aggregator sees every input by design")
    keep = SITES[: max(1, proto.min_contributors - 1)]
    inputs = inputs_for(proto, 5)
    first = site_stages(table)[0]
    outcome = drive(proto, 0, inputs, drop_before={s: first for s in SITES if s not in keep})
    assert outcome.results() == {}, f"{cid}: a sum over {len(keep)} site(s) was released"
    assert proto.min_contributors >= 2, f"{cid} hides inputs, declares min_contributors = {proto.min_contributors}"


@pytest.mark.parametrize(("cid", "table"), params("collusion"))
def test_a_coalition_within_the_collusion_bound_cannot_isolate_a_survivor(cid: str, table: dict[str, Any]) -> None:
    """With a collusion bound t - 1 (masking), a release over exactly t survivors gives the aggregator and
    t - 1 colluding survivors the last survivor's input (issue 8 item 3): at least t + 1 are needed."""
    proto = protocol(cid, table)
    t = getattr(proto, "threshold_value", None)
    if t is None:
        pytest.skip(f"{cid} states no collusion threshold")
    inputs = inputs_for(proto, 6)
    stages = site_stages(table)
    # survivors of the input stage: exactly t (the others drop after sharing keys, before their masked input)
    late = stages[min(2, len(stages) - 1)]
    outcome = drive(proto, 0, inputs, drop_before={s: late for s in SITES[t:]})
    assert len(SITES) - len(SITES[t:]) == t
    assert outcome.results() == {}, f"{cid}: released a sum over exactly t = {t} survivors"


# --- stage order -------------------------------------------------------------------------------------


def _refused(call: Callable[[], object], stage: str) -> None:
    """One error type for every protocol and party: StageError (secure_fl.protocol.base.StagedParty)."""
    with pytest.raises(StageError) as info:
        call()
    assert stage in str(info.value), f"the error does not name the stage {stage!r}: {info.value}"


@pytest.mark.parametrize(("cid", "table", "actor"), params("order", ["sites", "aggregator"]))
def test_unknown_stage_is_refused_with_a_clear_error(cid: str, table: dict[str, Any], actor: str) -> None:
    proto = protocol(cid, table)
    inputs = inputs_for(proto, 7)
    party = proto.site(SITES[0], 0, *inputs[SITES[0]]) if actor == "sites" else proto.aggregator(0, SITES, DIM)
    _refused(lambda: party.step("no-such-stage", []), "no-such-stage")


@pytest.mark.parametrize(("cid", "table", "actor"), params("repeat", ["sites", "aggregator"]))
def test_repeated_stage_is_refused_with_a_clear_error(cid: str, table: dict[str, Any], actor: str) -> None:
    proto = protocol(cid, table)
    inputs = inputs_for(proto, 8)
    outcome = _run_until_first(proto, inputs, actor)
    stage = next(s.name for s in proto.stages if s.actor == actor)
    party = outcome.sites[SITES[0]] if actor == "sites" else outcome.aggregator
    _refused(lambda: party.step(stage, []), stage)


@pytest.mark.parametrize(("cid", "table", "actor"), params("skip", ["sites", "aggregator"]))
def test_out_of_order_stage_is_refused_with_a_clear_error(cid: str, table: dict[str, Any], actor: str) -> None:
    proto = protocol(cid, table)
    names = [s.name for s in proto.stages if s.actor == actor]
    if len(names) < 2:
        pytest.skip(f"{cid}: one {actor} stage, no order to break (unknown and repeated stages are tested)")
    inputs = inputs_for(proto, 9)
    party = proto.site(SITES[0], 0, *inputs[SITES[0]]) if actor == "sites" else proto.aggregator(0, SITES, DIM)
    _refused(lambda: party.step(names[1], []), names[1])


def _run_until_first(proto: SecureSum, inputs: Mapping[str, tuple[np.ndarray, float]], actor: str) -> Outcome:
    """Parties that have run the first stage of ``actor`` (and everything before it), honestly."""
    out = Outcome({s: proto.site(s, 0, *inputs[s]) for s in SITES}, proto.aggregator(0, SITES, DIM))
    inbox: dict[str, list[Message]] = defaultdict(list)
    for stage in proto.stages:
        if stage.actor == "sites":
            for s in SITES:
                for m in out.sites[s].step(stage.name, inbox.pop(s, [])):
                    inbox[m.receiver].append(m)
        else:
            for m in out.aggregator.step(stage.name, inbox.pop(AGGREGATOR, [])):
                inbox[m.receiver].append(m)
        if stage.actor == actor:
            return out
    raise AssertionError(f"no {actor} stage")


# --- spoofed senders and replays -------------------------------------------------------------------


@pytest.mark.parametrize(("cid", "table"), params("intruder"))
def test_a_message_from_a_non_participant_is_ignored_or_refused(cid: str, table: dict[str, Any]) -> None:
    proto = protocol(cid, table)
    inputs = inputs_for(proto, 10)

    def intrude(m: Message) -> list[Message]:
        if m.sender == SITES[0]:  # a copy of s0's message, as if from an outsider
            return [m, Message(m.round, m.stage, "intruder", m.receiver, m.payload, m.kind)]
        return [m]

    outcome = drive(proto, 0, inputs, tamper=intrude)
    results = assert_correct(proto, outcome, inputs)
    assert outcome.aborted is not None or results


def _spoof_s0_as_s1(m: Message) -> list[Message]:
    """Carrier tampering: s0's messages also arrive under s1's name."""
    if m.sender == SITES[0]:
        return [m, Message(m.round, m.stage, SITES[1], m.receiver, m.payload, m.kind)]
    return [m]


@pytest.mark.parametrize(("cid", "table"), params("spoof"))
def test_a_message_spoofing_another_site_is_ignored_or_refused(cid: str, table: dict[str, Any]) -> None:
    """s0 also sends its messages under s1's name: nobody's input may count twice or under another name."""
    proto = protocol(cid, table)
    inputs = inputs_for(proto, 11)

    outcome = drive(proto, 0, inputs, tamper=_spoof_s0_as_s1)
    results = assert_correct(proto, outcome, inputs)
    assert outcome.aborted is not None or results


@pytest.mark.parametrize(("cid", "table"), params("streaming"))
def test_streaming_delivery_gives_the_plaintext_sum(cid: str, table: dict[str, Any]) -> None:
    """Messages handed to ``receive`` as each site steps (the engines' way) give the same sum as a whole inbox."""
    proto = protocol(cid, table)
    inputs = inputs_for(proto, 14)
    outcome = drive(proto, 0, inputs, streaming=True)
    assert outcome.aborted is None and not outcome.dropped, (outcome.aborted, outcome.dropped)
    results = assert_correct(proto, outcome, inputs)
    assert results and all(sorted(r.contributors) == SITES for r in results.values())


@pytest.mark.parametrize(("cid", "table"), params("streaming-spoof"))
def test_streaming_refuses_a_message_handed_over_under_another_name(cid: str, table: dict[str, Any]) -> None:
    """s0's outbox also carries a message labelled s1: with streaming, nobody's input counts twice either."""
    proto = protocol(cid, table)
    inputs = inputs_for(proto, 15)

    outcome = drive(proto, 0, inputs, tamper=_spoof_s0_as_s1, streaming=True)
    results = assert_correct(proto, outcome, inputs)
    assert outcome.aborted is not None or results


@pytest.mark.parametrize(("cid", "table", "relabel"), params("replay", ["as-sent", "relabelled"]))
def test_a_message_replayed_from_the_previous_round_is_ignored_or_refused(
    cid: str, table: dict[str, Any], relabel: str
) -> None:
    """Every message s0 sends in round 1 is replaced by its round-0 message of the same stage (as sent,
    or relabelled round 1): round 0's input must never enter round 1's sum."""
    proto = protocol(cid, table)
    old_inputs, inputs = inputs_for(proto, 12), inputs_for(proto, 13)
    earlier: dict[str, list[Message]] = defaultdict(list)
    drive(proto, 0, old_inputs, tamper=lambda m: earlier[m.stage].append(m) or [m] if m.sender == SITES[0] else [m])

    def replay(m: Message) -> list[Message]:
        if m.sender != SITES[0]:
            return [m]
        old = earlier.pop(m.stage, [])
        if relabel == "relabelled":
            old = [Message(1, o.stage, o.sender, o.receiver, o.payload, o.kind) for o in old]
        return old

    outcome = drive(proto, 1, inputs, tamper=replay)
    # a replayed input is s0's round-0 input: s0 may not be counted with its round-1 input either way
    results = assert_correct(proto, outcome, inputs, allowed=SITES[1:])
    assert outcome.aborted is not None or results
