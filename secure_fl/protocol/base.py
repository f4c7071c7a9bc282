"""Secure-sum protocols as explicit stages (docs/architecture.md, "The one flow", step 3).

A protocol gives key holders (and, if its spec says so, the aggregator) the weighted sum
``Σ_i values_i`` and ``Σ_i weight_i`` of the sites' inputs. Each party is a small state
machine: ``step(stage, inbox) -> outbox``. No party knows how messages travel: the local
engine and the Flower engine both drive the same objects.

Routing contract, shared by every engine:

* Stages run in the order of :attr:`SecureSum.stages`; every party checks it through
  :class:`StagedParty` (one handler per stage, declared with :func:`handles`), which refuses an
  unknown, repeated or out-of-order stage with :class:`~secure_fl.errors.StageError`. At a stage whose ``actor`` is
  ``"sites"``, every live site steps once; at an ``"aggregator"`` stage, the aggregator does.
* A message is delivered into its receiver's inbox for the receiver's *next* step.
  Every message passes through the aggregator (sites have no direct channel), so the engine
  records each one as an aggregator *view* with its :class:`ViewKind`.
* Streaming: a carrier may hand each site's outbox to the aggregator as soon as the site has
  stepped, with :meth:`AggregatorParty.receive` (the sender already checked by the carrier), instead
  of collecting the whole stage first. What ``receive`` returns is delivered with the aggregator's
  next :meth:`~AggregatorParty.step` as usual; what it consumed is gone, so a protocol that folds
  inputs into a running sum holds one sum, not every site's message. A carrier delivers a site's
  outbox of one step once; every protocol gives the same result whether its messages come through
  ``receive`` or all in the inbox of ``step``.
* A site that drops out simply stops stepping; protocols must tolerate missing messages.
* A site's step may raise :class:`~secure_fl.errors.SiteRejected` (or any error): the engine
  drops that site for the round and records why. The aggregator reports refused inputs in
  :attr:`AggregatorParty.rejected` and raises :class:`~secure_fl.errors.RoundAborted` only
  when nothing correct can be released.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np

from ..errors import ProtocolError, StageError

__all__ = [
    "AGGREGATOR",
    "ViewKind",
    "Message",
    "Stage",
    "SumResult",
    "StagedParty",
    "handles",
    "SiteParty",
    "AggregatorParty",
    "SecureSum",
]

AGGREGATOR = "aggregator"


class ViewKind(str, enum.Enum):
    """What a message reveals to whoever carries or receives it."""

    PLAIN = "plain"  # the value itself
    NOISED = "noised"  # the value plus DP noise that alone meets the site's guarantee
    CIPHERTEXT = "ciphertext"  # encrypted under a key the receiver does not hold
    MASKED = "masked"  # one-time-padded (pairwise + self masks), uniform to the receiver
    PUBLIC = "public"  # key material, commitments, counts that the threat model allows
    AGGREGATE = "aggregate"  # a sum over several sites (released result)


@dataclass(frozen=True)
class Message:
    """One message on the wire. ``payload`` is exactly what would be sent: its length is the cost."""

    round: int
    stage: str
    sender: str
    receiver: str
    payload: bytes
    kind: ViewKind

    @property
    def nbytes(self) -> int:
        return len(self.payload)


@dataclass(frozen=True)
class Stage:
    name: str
    actor: Literal["sites", "aggregator"]


@dataclass
class SumResult:
    """The released weighted sum. ``mean`` is what the server step uses."""

    total: np.ndarray
    weight: float
    contributors: tuple[str, ...]

    @property
    def mean(self) -> np.ndarray:
        if self.weight <= 0:
            raise ValueError(f"cannot average: total weight is {self.weight}")
        return self.total / self.weight


Handler = Callable[[Any, Sequence[Message]], list[Message]]
_H = TypeVar("_H", bound=Handler)


def handles(stage: str) -> Callable[[_H], _H]:
    """Declare a method of a :class:`StagedParty` as the handler of ``stage``: ``handler(inbox) -> outbox``."""

    def mark(method: _H) -> _H:
        setattr(method, "_handles_stage", stage)  # noqa: B010 (mypy does not type attributes set on functions)
        return method

    return mark


class StagedParty:
    """Stage sequencing, once for every protocol (routing contract above).

    A party declares one handler per stage with :func:`handles` and, in its constructor, the stages
    it takes this round, in order (:meth:`_sequence`: its actor's stages of :attr:`SecureSum.stages`,
    which may depend on the configuration). :meth:`step` then runs the handler of the expected
    stage and refuses anything else with one error type, :class:`~secure_fl.errors.StageError`:
    an unknown stage, a repeated one, or one whose turn has not come. The state is plain data
    (names and a counter), so a party stays picklable between messages (the Flower site keeps it
    on disk).

    Mix it in before :class:`SiteParty` / :class:`AggregatorParty` so its :meth:`step` is the one used.
    """

    #: stage name -> name of the method handling it, collected from :func:`handles` over the class's MRO
    _stage_handlers: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        found: dict[str, str] = {}
        for klass in reversed(cls.__mro__):  # a subclass's handler replaces its base's
            own: dict[str, str] = {}
            for attr, value in vars(klass).items():
                stage = getattr(value, "_handles_stage", None)
                if isinstance(stage, str):
                    if stage in own:
                        raise TypeError(f"{klass.__name__}: stage {stage!r} has two handlers, {own[stage]} and {attr}")
                    own[stage] = attr
            found.update(own)
        cls._stage_handlers = found

    def _sequence(self, stages: Sequence[Stage], actor: Literal["sites", "aggregator"], party: str) -> None:
        """Fix the stages this party takes, in order: those of ``actor`` in ``stages``. ``party`` names it in errors."""
        names = tuple(s.name for s in stages if s.actor == actor)
        missing = [n for n in names if n not in self._stage_handlers]
        if missing:
            raise ProtocolError(f"{party}: no handler for stage(s) {missing} (declare them with @handles)")
        self._stage_plan = names
        self._stage_party = party
        self._stage_next = 0

    @property
    def next_stage(self) -> str | None:
        """The stage this party expects next; ``None`` once it has taken all of them."""
        plan, i = self._stage_plan, self._stage_next
        return plan[i] if i < len(plan) else None

    def _advance(self, stage: str) -> None:
        expected = self.next_stage
        if stage == expected:
            self._stage_next += 1
            return
        plan = self._stage_plan
        if stage not in plan:
            problem = "unknown"
        elif plan.index(stage) < self._stage_next:
            problem = "repeated"
        else:
            problem = "out-of-order"
        raise StageError(self._stage_party, stage, expected, problem, plan)

    def step(self, stage: str, inbox: Sequence[Message]) -> list[Message]:
        """Check that ``stage`` is the one expected next, then run its handler on ``inbox``."""
        self._advance(stage)
        handler: Callable[[Sequence[Message]], list[Message]] = getattr(self, self._stage_handlers[stage])
        return handler(inbox)


class SiteParty(ABC):
    """A site's side of one round."""

    site_id: str

    @abstractmethod
    def step(self, stage: str, inbox: Sequence[Message]) -> list[Message]:
        """Consume the messages addressed to this site since its last step; return its outbox."""

    def result(self) -> SumResult | None:
        """The released sum, when this site holds the key that opens it; ``None`` otherwise."""
        return None


class AggregatorParty(ABC):
    """The aggregator's side of one round. It holds only public material."""

    def __init__(self) -> None:
        self.rejected: dict[str, str] = {}

    @abstractmethod
    def step(self, stage: str, inbox: Sequence[Message]) -> list[Message]:
        """Consume the messages sent to the aggregator; return messages for sites."""

    def receive(self, sender: str, messages: Sequence[Message]) -> list[Message]:
        """Take ``messages``, the whole outbox of one step of site ``sender``, as it arrives (streaming).

        Returns the messages not consumed here; the carrier hands them over in the inbox of the next
        :meth:`step`. A protocol that can fold an input into a running sum on arrival does it here and
        drops the message (see the routing contract above). Default: consumes nothing.
        """
        return list(messages)

    def result(self) -> SumResult | None:
        """The sum, when the protocol releases it to the aggregator; ``None`` otherwise."""
        return None


@dataclass
class SecureSum(ABC):
    """A secure-sum protocol: the factory of its parties for each round.

    Subclasses are built from the ``[secure_sum]`` table of a protocol spec by
    ``from_params`` and must validate every key there (see :mod:`secure_fl.protocol.spec`).
    """

    #: the kind's name in the registry and in specs (``[secure_sum].kind``); set by each subclass
    name: ClassVar[str]
    #: what the aggregator sees of one site's input; set by each subclass
    view_kind: ClassVar[ViewKind]
    #: fewest contributors a released sum may have. Enforced where the data flows: the
    #: aggregator withholds (and every key holder refuses to open) a sum over fewer sites,
    #: because a "sum" of one site is that site's input. Protocols that hide single inputs
    #: keep it >= 2; privacy layers raise it with :meth:`require_contributors`.
    min_contributors: int = field(init=False, default=1)

    @property
    def releases_to_aggregator(self) -> bool:
        """Whether this protocol releases the sum to the aggregator (default: it does)."""
        return True

    def require_contributors(self, k: int) -> None:
        """Raise :attr:`min_contributors` to at least ``k`` (e.g. the ``min_sites`` noise shares of
        distributed DP). Call before :meth:`setup`; it never lowers the minimum."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"minimum number of contributors must be an integer >= 1, found {k!r}")
        self.min_contributors = max(self.min_contributors, k)

    @property
    @abstractmethod
    def stages(self) -> tuple[Stage, ...]: ...

    @classmethod
    @abstractmethod
    def from_params(cls, params: Mapping[str, Any], where: str) -> "SecureSum":
        """Build from a spec table; raise SpecError naming ``where`` and the key otherwise."""

    def setup(self, site_ids: Sequence[str], dim: int) -> None:  # noqa: B027 (optional hook, no-op by default)
        """Once per run, before round 0 (key provisioning, ...). Default: nothing."""

    @abstractmethod
    def site(self, site_id: str, round: int, values: np.ndarray, weight: float) -> SiteParty:
        """The party of ``site_id`` holding ``values`` (already weighted) and ``weight``."""

    @abstractmethod
    def aggregator(self, round: int, site_ids: Sequence[str], dim: int) -> AggregatorParty:
        """The aggregator party for a round among ``site_ids`` with vectors of length ``dim``."""
