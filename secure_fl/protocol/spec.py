"""Protocol specs: a protocol is a TOML file in ``protocols/`` that a reviewer can read.

A name is looked up in the current folder's ``protocols/`` first, then in the catalogue shipped
with the package (:mod:`secure_fl.catalogue`).

Layout::

    name = "plain-fedavg"
    summary = "one line"
    [secure_sum]            # how the sum is protected: kind = plain | ckks | secagg | secagg-plus
    [aggregation]           # server step: server = fedavg | fedadam, server_lr, weighting
    [privacy]               # optional: DP layer (parsed by secure_fl.protocol.dp)
    [threat_model]          # adversary, aggregator_sees, assumptions, guarantees, not_protected

``threat_model.aggregator_sees`` must agree with what the secure sum and privacy layers
actually show the aggregator; a spec that claims more protection than it has is refused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from ..catalogue import find_spec_file, search_dirs, shipped_dir, spec_names
from ..errors import SpecError
from ..speccheck import check_keys, get, get_table, in_range, one_of
from .base import SecureSum, ViewKind
from .registry import secure_sum_class

__all__ = [
    "AggregationSpec",
    "ThreatModel",
    "ProtocolSpec",
    "load_protocol",
    "parse_protocol",
    "PROTOCOLS_DIR",
    "list_protocols",
]

#: the catalogue shipped with this installation (package data, or the checkout's ``protocols/``)
PROTOCOLS_DIR = shipped_dir("protocols")


@dataclass(frozen=True)
class AggregationSpec:
    server: str = "fedavg"
    server_lr: float = 1.0
    weighting: str = "examples"
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    @classmethod
    def from_table(cls, t: Mapping[str, Any], where: str) -> "AggregationSpec":
        check_keys(t, ["server", "server_lr", "weighting", "beta1", "beta2", "tau"], where)
        return cls(
            server=get(t, "server", str, where, "fedavg", one_of("fedavg", "fedadam")),
            server_lr=get(t, "server_lr", float, where, 1.0, in_range(0, lo_open=True)),
            weighting=get(t, "weighting", str, where, "examples", one_of("examples", "uniform")),
            beta1=get(t, "beta1", float, where, 0.9, in_range(0, 1, hi_open=True)),
            beta2=get(t, "beta2", float, where, 0.99, in_range(0, 1, hi_open=True)),
            tau=get(t, "tau", float, where, 1e-3, in_range(0, lo_open=True)),
        )


@dataclass(frozen=True)
class ThreatModel:
    adversary: str
    aggregator_sees: str
    assumptions: tuple[str, ...]
    guarantees: tuple[str, ...]
    not_protected: tuple[str, ...]

    @classmethod
    def from_table(cls, t: Mapping[str, Any], where: str) -> "ThreatModel":
        check_keys(t, ["adversary", "aggregator_sees", "assumptions", "guarantees", "not_protected"], where)
        kinds = [k.value for k in ViewKind]

        def strings(key: str) -> tuple[str, ...]:
            items = get(t, key, list, where, [])
            for i, item in enumerate(items):
                if not isinstance(item, str):
                    raise SpecError(f"{where}.{key}[{i}]: expected a string, found {item!r}")
            return tuple(items)

        return cls(
            adversary=get(t, "adversary", str, where),
            aggregator_sees=get(t, "aggregator_sees", str, where, check=one_of(*kinds)),
            assumptions=strings("assumptions"),
            guarantees=strings("guarantees"),
            not_protected=strings("not_protected"),
        )


@dataclass
class ProtocolSpec:
    name: str
    summary: str
    secure_sum_table: dict[str, Any]
    aggregation: AggregationSpec
    threat_model: ThreatModel
    privacy_table: dict[str, Any] | None = None
    source: str = "<memory>"
    raw: dict[str, Any] = field(default_factory=dict)
    privacy: Any = None  # parsed DP config (secure_fl.protocol.dp), None without [privacy]

    @property
    def secure_sum_kind(self) -> str:
        return str(self.secure_sum_table["kind"])

    def build_secure_sum(self) -> SecureSum:
        where = f"{self.source} [secure_sum]"
        cls = secure_sum_class(self.secure_sum_kind, where)
        secure_sum = cls.from_params(self.secure_sum_table, where)
        view = getattr(self.privacy, "aggregator_view", None)
        if view is not None and hasattr(secure_sum, "input_kind"):
            secure_sum.input_kind = ViewKind(view)  # e.g. locally noised inputs over a plain channel
        if self.privacy is not None:
            self.privacy.constrain(secure_sum)  # e.g. distributed DP's min_sites -> the sum's min_contributors
        return secure_sum

    @property
    def spec_hash(self) -> str:
        blob = json.dumps(self.raw, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def parse_protocol(data: Mapping[str, Any], source: str = "<memory>") -> ProtocolSpec:
    where = source
    check_keys(data, ["name", "summary", "secure_sum", "aggregation", "privacy", "threat_model"], where)
    name = get(data, "name", str, where)
    summary = get(data, "summary", str, where, "")
    ss = get_table(data, "secure_sum", where)
    get(ss, "kind", str, f"{where} [secure_sum]")
    spec = ProtocolSpec(
        name=name,
        summary=summary,
        secure_sum_table=ss,
        aggregation=AggregationSpec.from_table(get_table(data, "aggregation", where, {}), f"{where} [aggregation]"),
        threat_model=ThreatModel.from_table(get_table(data, "threat_model", where), f"{where} [threat_model]"),
        privacy_table=get_table(data, "privacy", where, None),
        source=source,
        raw=dict(data),
    )
    secure_sum = spec.build_secure_sum()  # validates [secure_sum]
    if spec.privacy_table is not None:
        from .dp import parse_privacy  # the DP layer validates [privacy] against the secure sum

        spec.privacy = parse_privacy(spec.privacy_table, f"{where} [privacy]", secure_sum)
    _check_claims(spec, secure_sum)
    return spec


def _check_claims(spec: ProtocolSpec, secure_sum: SecureSum) -> None:
    """The threat model may not claim the aggregator sees less than it does."""
    claimed = spec.threat_model.aggregator_sees
    actual = secure_sum.view_kind.value
    if spec.privacy is not None and actual == ViewKind.PLAIN.value:
        actual = getattr(spec.privacy, "aggregator_view", actual)
    if claimed != actual:
        raise SpecError(
            f"{spec.source} [threat_model].aggregator_sees: the spec says {claimed!r} but its "
            f"layers show the aggregator {actual!r} (secure_sum.kind = {spec.secure_sum_kind!r})"
        )


def load_protocol(name_or_path: str | Path) -> ProtocolSpec:
    """Load a protocol by name (``protocols/NAME.toml``, see :mod:`secure_fl.catalogue`), or a TOML file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        found = find_spec_file("protocols", str(name_or_path))
        if found is None:
            raise SpecError(f"unknown protocol {str(name_or_path)!r}; the catalogue has {list_protocols()} "
                            f"(searched {[str(d) for d in search_dirs('protocols')]})")
        path = found
    if not path.exists():
        raise SpecError(f"protocol spec file not found: {path}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML ({exc})") from exc
    return parse_protocol(data, source=_short(path))


def list_protocols() -> list[str]:
    """Names of the protocols found: the current folder's ``protocols/`` and the shipped catalogue."""
    return spec_names("protocols")


def _short(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
