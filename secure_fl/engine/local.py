"""The in-process carrier: drives a secure-sum protocol's parties and measures every message.

It follows the routing contract of :mod:`secure_fl.protocol.base`: stages in order; a message
reaches its receiver's inbox for the receiver's next step; everything travels through the
aggregator, so every message is recorded as an aggregator *view*. It streams: each site's outbox
goes to the aggregator (:meth:`~secure_fl.protocol.base.AggregatorParty.receive`) as soon as the
site has stepped, so a protocol that folds inputs on arrival never has every site's message in
memory at once (the views keep only sizes). The time the aggregator spends on them counts in its
next stage, as it would if it had received them all there. A site whose step fails is
dropped for the round with its reason; the others carry on. A site whose message the aggregator
refused is recorded with the aggregator's reason (the cause), not with what the site met later.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import RoundAborted, SiteRejected
from ..protocol.base import AGGREGATOR, Message, SecureSum, SiteParty, SumResult

__all__ = ["View", "RoundOutcome", "Tap", "drive_round"]

#: receives every message the aggregator carries, payload included (audits, payload tests);
#: the deployment engine calls the same tap with the same messages
Tap = Callable[[Message], None]


@dataclass(frozen=True)
class View:
    """What the aggregator saw (or carried) in one message: metadata, not the payload."""

    round: int
    stage: str
    sender: str
    receiver: str
    kind: str
    nbytes: int

    def to_json(self) -> dict[str, object]:
        return self.__dict__.copy()


@dataclass
class RoundOutcome:
    result: SumResult | None
    aborted: str | None
    dropped: dict[str, str] = field(default_factory=dict)
    views: list[View] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    #: per stage, the time the stage would take with the sites working in parallel (as they do in a
    #: deployment): the slowest site for a site stage, the aggregator's time for its own stages
    stage_critical_seconds: dict[str, float] = field(default_factory=dict)
    bytes_up: dict[str, int] = field(default_factory=dict)
    bytes_down: dict[str, int] = field(default_factory=dict)


def drive_round(
    protocol: SecureSum,
    round: int,
    inputs: Mapping[str, tuple[np.ndarray, float]],
    dim: int,
    drop_before: Mapping[str, str] | None = None,
    tap: Tap | None = None,
) -> RoundOutcome:
    """Run one secure-sum round in process.

    ``inputs`` maps each participating site to its (weighted values, weight). ``drop_before``
    maps a site to the stage before which it disappears (simulated dropout). ``tap``, when
    given, is called with every message a party hands over (sites' messages to the
    aggregator and the aggregator's to sites), payload included, before the carrier checks
    its sender: exactly the bytes the aggregator would hold.
    """
    drop_before = dict(drop_before or {})
    site_ids = list(inputs)
    out = RoundOutcome(result=None, aborted=None)
    out.bytes_up = {s: 0 for s in site_ids}
    out.bytes_down = {s: 0 for s in site_ids}
    parties: dict[str, SiteParty] = {}  # made at each site's first step: an input is read only when needed
    aggregator = protocol.aggregator(round, site_ids, dim)

    def party(s: str) -> SiteParty:
        if s not in parties:
            values, weight = inputs[s]
            parties[s] = protocol.site(s, round, values, weight)
        return parties[s]
    inbox: dict[str, list[Message]] = defaultdict(list)
    alive = set(site_ids)

    def record(messages: Sequence[Message], sender: str) -> None:
        """Tap and meter what ``sender`` handed over; refuse the whole outbox if one message claims another sender."""
        for m in messages:
            if tap is not None:
                tap(m)
        for m in messages:
            if m.sender != sender:
                raise SiteRejected(sender, f"message claims sender {m.sender!r}")
        for m in messages:
            out.views.append(View(m.round, m.stage, m.sender, m.receiver, m.kind.value, m.nbytes))
            if m.sender in out.bytes_up:
                out.bytes_up[m.sender] += m.nbytes
            if m.receiver in out.bytes_down:
                out.bytes_down[m.receiver] += m.nbytes

    last_site_stage = [st.name for st in protocol.stages if st.actor == "sites"][-1]
    released: SumResult | None = None  # a key holder's sum, taken when it finishes (its party is then dropped)
    folding = 0.0  # seconds the aggregator spent on messages it took on arrival, counted in its next stage

    def route(messages: Sequence[Message], sender: str) -> None:
        """Deliver a party's checked outbox: a site's messages to the aggregator go to it at once (streaming)."""
        nonlocal folding
        to_agg = [m for m in messages if m.receiver == AGGREGATOR]
        for m in messages:
            if m.receiver != AGGREGATOR:
                inbox[m.receiver].append(m)
        if to_agg and sender != AGGREGATOR:
            t = time.perf_counter()
            inbox[AGGREGATOR].extend(aggregator.receive(sender, to_agg))  # RoundAborted ends the round
            folding += time.perf_counter() - t
        elif to_agg:
            inbox[AGGREGATOR].extend(to_agg)

    try:
        for stage in protocol.stages:
            t0 = time.perf_counter()
            slowest = 0.0
            if stage.actor == "sites":
                folded_before = folding
                for s in site_ids:
                    if s not in alive:
                        continue
                    if drop_before.get(s) == stage.name:
                        alive.discard(s)
                        out.dropped[s] = f"dropped out before stage {stage.name!r} (simulated)"
                        continue
                    site = party(s)
                    messages = inbox.pop(s, [])
                    t_site = time.perf_counter()
                    try:
                        sent = site.step(stage.name, messages)
                        slowest = max(slowest, time.perf_counter() - t_site)
                        del messages
                        record(sent, s)
                    except SiteRejected as exc:
                        alive.discard(s)
                        out.dropped[s] = exc.reason
                        continue
                    except Exception as exc:  # one broken site never costs the others their round
                        alive.discard(s)
                        out.dropped[s] = f"{type(exc).__name__} at stage {stage.name!r}: {exc}"
                        continue
                    route(sent, s)
                    del sent
                    if stage.name == last_site_stage:  # done: keep the first released sum, let the party go
                        res = parties.pop(s).result()
                        if released is None and res is not None:
                            released = res
                elapsed = time.perf_counter() - t0 - (folding - folded_before)
            else:
                t_agg = time.perf_counter()
                messages = inbox.pop(AGGREGATOR, [])
                sent = aggregator.step(stage.name, messages)
                del messages
                record(sent, AGGREGATOR)
                route(sent, AGGREGATOR)
                del sent
                elapsed = time.perf_counter() - t_agg + folding
                folding = 0.0
            out.stage_seconds[stage.name] = out.stage_seconds.get(stage.name, 0.0) + elapsed
            critical = slowest if stage.actor == "sites" else elapsed
            out.stage_critical_seconds[stage.name] = out.stage_critical_seconds.get(stage.name, 0.0) + critical
    except RoundAborted as exc:
        out.aborted = str(exc)
        out.dropped.update(aggregator.rejected)
        return out
    # the aggregator's reason for refusing a site's message is the cause; what the site met afterwards
    # (e.g. "expected one 'sum' message ..., got 0") is only its symptom
    out.dropped.update(aggregator.rejected)
    # key holders decrypt/unmask at their last step: the released sum is the first one's, else the aggregator's
    out.result = released if released is not None else aggregator.result()
    if out.result is None:
        out.aborted = "the protocol released no result"
    return out
