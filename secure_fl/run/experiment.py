"""Experiment specs: task × protocols × sites × rounds × seeds (× sweep), from ``experiments/*.toml``.

Layout::

    name = "quickstart"
    summary = "..."
    protocols = ["plain-fedavg", "pooled", "local-only"]   # catalogue names, paths, or references
    seeds = [0, 1, 2]
    rounds = 20
    [task]            name = "heart-disease", then the task's own keys
    [federation]      fraction, dropout, min_sites
    [training]        local_epochs, local_steps, batch_size, lr, optimizer, momentum, weight_decay
    [sweep]           "privacy.target_epsilon" = [1, 2, 4, 8]   (dotted keys into protocol specs)

``pooled`` (centralised training on the union of the sites' data) and ``local-only`` (each site
alone) are the two reference points every comparison needs; they are not protocols.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from ..catalogue import find_spec_file, search_dirs, shipped_dir, spec_names
from ..errors import SpecError
from ..protocol.spec import ProtocolSpec, parse_protocol
from ..speccheck import check_keys, get, get_table, in_range
from ..tasks.paths import resolve_task_paths
from ..training.config import TrainingConfig

__all__ = [
    "REFERENCES",
    "FederationConfig",
    "Experiment",
    "Variant",
    "load_experiment",
    "parse_experiment",
    "EXPERIMENTS_DIR",
    "with_overrides",
    "select_variants",
    "check_against_task",
]

REFERENCES = ("pooled", "local-only")
#: the example experiments shipped with this installation (package data, or the checkout's ``experiments/``)
EXPERIMENTS_DIR = shipped_dir("experiments")


@dataclass(frozen=True)
class FederationConfig:
    fraction: float = 1.0
    dropout: float = 0.0
    min_sites: int = 1

    @classmethod
    def from_table(cls, t: Mapping[str, Any], where: str) -> "FederationConfig":
        check_keys(t, ["fraction", "dropout", "min_sites"], where)
        return cls(
            fraction=get(t, "fraction", float, where, 1.0, in_range(0, 1, lo_open=True)),
            dropout=get(t, "dropout", float, where, 0.0, in_range(0, 1, hi_open=True)),
            min_sites=get(t, "min_sites", int, where, 1, in_range(1)),
        )


@dataclass
class Variant:
    """One column of a comparison: a protocol spec (or a reference point) with its overrides."""

    label: str
    spec: ProtocolSpec | None  # None for the references
    reference: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class Experiment:
    name: str
    summary: str
    task_name: str
    task_params: dict[str, Any]
    variants: list[Variant]
    seeds: list[int]
    rounds: int
    federation: FederationConfig
    training: TrainingConfig
    source: str
    raw: dict[str, Any]
    base_dir: Path = field(default_factory=Path.cwd)

    def resolved(self) -> dict[str, Any]:
        """The effective, validated config (after overrides) as plain data, for ``resolved.json``."""
        return {
            "name": self.name,
            "summary": self.summary,
            "source": self.source,
            "base_dir": str(self.base_dir),
            "task": {"name": self.task_name, **self.task_params},
            "seeds": list(self.seeds),
            "rounds": self.rounds,
            "federation": dataclasses.asdict(self.federation),
            "training": dataclasses.asdict(self.training),
            "variants": [
                {
                    "label": v.label,
                    "reference": v.reference,
                    "overrides": dict(v.overrides),
                    "protocol": v.spec.name if v.spec else None,
                    "spec_hash": v.spec.spec_hash if v.spec else None,
                }
                for v in self.variants
            ],
            "raw": self.raw,
        }


def _set_dotted(data: dict[str, Any], dotted: str, value: Any, where: str) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        if not isinstance(child, dict):
            raise SpecError(f"{where}: {dotted!r} goes through {p!r}, which is not a table")
        node = child
    node[parts[-1]] = value


def _resolve_protocol(name: str, where: str, base_dir: Path) -> tuple[dict[str, Any], str]:
    path: Path | None = Path(name)
    if path is not None and path.suffix == ".toml":
        path = path if path.is_absolute() else (base_dir / path)
    else:
        path = find_spec_file("protocols", name)  # the user's protocols/ first, then the shipped catalogue
    if path is None or not path.is_file():
        from ..protocol.spec import list_protocols

        raise SpecError(
            f"{where}: unknown protocol {name!r}; the catalogue has {list_protocols()} plus references {list(REFERENCES)}"  # noqa: E501 (a table row or a translated phrase reads best whole)
        )
    try:
        return tomllib.loads(path.read_text()), str(path.name)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML ({exc})") from exc


def parse_experiment(data: Mapping[str, Any], source: str = "<memory>", base_dir: Path | None = None) -> Experiment:
    where = source
    base_dir = base_dir or Path.cwd()
    check_keys(
        data, ["name", "summary", "protocols", "seeds", "rounds", "task", "federation", "training", "sweep"], where
    )
    name = get(data, "name", str, where)
    if not name or "/" in name or name.startswith("."):
        raise SpecError(f"{where}.name: must be a plain folder name, found {name!r}")
    protocols = get(data, "protocols", list, where)
    if not protocols:
        raise SpecError(f"{where}.protocols: list at least one protocol")
    seeds = get(data, "seeds", list, where, [0])
    for i, s in enumerate(seeds):
        if not isinstance(s, int) or isinstance(s, bool):
            raise SpecError(f"{where}.seeds[{i}]: expected an integer, found {s!r}")
        if s < 0:
            raise SpecError(f"{where}.seeds[{i}]: must be >= 0, found {s}")
    if not seeds:
        raise SpecError(f"{where}.seeds: list at least one seed")
    task = get_table(data, "task", where)
    task_name = get(task, "name", str, f"{where} [task]")
    # data and code paths in [task] start at the experiment file's folder, like protocol files (tasks/paths.py)
    task_name, task = resolve_task_paths(task_name, task, base_dir)
    sweep = get_table(data, "sweep", where, {})
    if len(sweep) > 1:
        raise SpecError(f"{where} [sweep]: sweep one key at a time, found {sorted(sweep)}")
    for key, vals in sweep.items():
        if not isinstance(vals, list) or not vals:
            raise SpecError(f"{where} [sweep].{key}: expected a non-empty list of values, found {vals!r}")
        for j, v in enumerate(vals):
            if isinstance(v, float) and not math.isfinite(v):
                raise SpecError(f"{where} [sweep].{key}[{j}]: expected a finite number, found {v!r}")
        if "." not in key:
            raise SpecError(
                f"{where} [sweep].{key}: expected a dotted key into a protocol table, e.g. 'privacy.target_epsilon'"
            )
    swept_tables: set[str] = set()
    variants: list[Variant] = []
    for i, p in enumerate(protocols):
        if not isinstance(p, str):
            raise SpecError(f"{where}.protocols[{i}]: expected a protocol name, found {p!r}")
        if p in REFERENCES:
            variants.append(Variant(p, None, reference=p))
            continue
        raw, fname = _resolve_protocol(p, f"{where}.protocols[{i}]", base_dir)
        # a sweep applies to the protocols that have the table it patches (e.g. [privacy])
        swept = [(k, v) for k, vals in sweep.items() for v in vals if k.split(".")[0] in raw]
        swept_tables.update(k.split(".")[0] for k, _ in swept)
        if not swept:
            variants.append(Variant(str(raw.get("name", p)), parse_protocol(raw, fname)))
        for key, value in swept:
            patched = copy.deepcopy(raw)
            _set_dotted(patched, key, value, f"{where} [sweep]")
            spec = parse_protocol(patched, f"{fname} with {key} = {value!r}")
            variants.append(Variant(f"{spec.name}[{key.split('.')[-1]}={value}]", spec, overrides={key: value}))
    for key in sweep:
        if key.split(".")[0] not in swept_tables:
            tables = sorted(
                {t for v in variants if v.spec is not None for t, x in v.spec.raw.items() if isinstance(x, dict)}
            )
            raise SpecError(
                f"{where} [sweep].{key}: no listed protocol has a table {key.split('.')[0]!r}, so the sweep would "
                f"change nothing; the protocols' tables are {tables}"
            )
    for v in variants:
        _check_site_budget_values(v, where)
    labels = [v.label for v in variants]
    if len(set(labels)) != len(labels):
        raise SpecError(f"{where}.protocols: listed twice: {sorted({x for x in labels if labels.count(x) > 1})}")
    return Experiment(
        name=name,
        summary=get(data, "summary", str, where, ""),
        task_name=task_name,
        task_params={k: v for k, v in task.items() if k != "name"},
        variants=variants,
        seeds=list(seeds),
        rounds=get(data, "rounds", int, where, 10, in_range(1)),
        federation=FederationConfig.from_table(get_table(data, "federation", where, {}), f"{where} [federation]"),
        training=TrainingConfig.from_table(get_table(data, "training", where, {}), f"{where} [training]"),
        source=source,
        raw=dict(data),
        base_dir=base_dir,
    )


def _check_site_budget_values(v: Variant, where: str) -> None:
    privacy = getattr(v.spec, "privacy", None) if v.spec is not None else None
    for site, value in (getattr(privacy, "site_budgets", None) or {}).items():
        if not math.isfinite(value):
            raise SpecError(
                f"{where}: protocol {v.label!r} [privacy].site_budgets.{site}: "
                f"expected a finite number > 0, found {value!r}"
            )


def with_overrides(exp: Experiment, rounds: int | None = None, seeds: Sequence[int] | None = None) -> Experiment:
    """``exp`` with ``--rounds``/``--seeds`` applied and validated exactly like the spec file's own values."""
    data = copy.deepcopy(exp.raw)
    if rounds is not None:
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise SpecError(f"--rounds: must be an integer >= 1, found {rounds!r}")
        data["rounds"] = rounds
    if seeds is not None:
        seeds = list(seeds)
        if not seeds:
            raise SpecError("--seeds: list at least one seed")
        bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int) or s < 0]
        if bad:
            raise SpecError(f"--seeds: every seed must be an integer >= 0, found {bad}")
        data["seeds"] = seeds
    return parse_experiment(data, exp.source, exp.base_dir)


def select_variants(exp: Experiment, labels: Sequence[str] | None) -> list[Variant]:
    """The variants named by ``--protocol`` (all when ``labels`` is empty); an unknown label is refused."""
    if not labels:
        return list(exp.variants)
    known = [v.label for v in exp.variants]
    unknown = [p for p in labels if p not in known]
    if unknown:
        raise SpecError(f"--protocol {unknown}: not in {exp.source} (it lists {known})")
    return [v for v in exp.variants if v.label in labels]


def check_against_task(exp: Experiment, task: Any, variants: Sequence[Variant] | None = None) -> None:
    """Cross-field checks that need the sites: ``min_sites`` reachable, ``site_budgets`` naming real sites."""
    names = [s.name for s in task.sites]
    fed = exp.federation
    where = f"{exp.source} [federation]"
    if fed.min_sites > len(names):
        raise SpecError(
            f"{where}.min_sites: {fed.min_sites} exceeds the {len(names)} sites of task {exp.task_name!r}; "
            "every round would abort"
        )
    picked = max(1, int(round(fed.fraction * len(names))))
    if fed.min_sites > picked:
        raise SpecError(
            f"{where}.min_sites: {fed.min_sites} exceeds the {picked} site(s) picked per round "
            f"(fraction {fed.fraction:g} of {len(names)}); every round would abort"
        )
    pre = getattr(task, "info", {}).get("preprocessing")
    federated = isinstance(pre, Mapping) and pre.get("standardise") == "federated"
    for v in variants if variants is not None else exp.variants:
        privacy = getattr(v.spec, "privacy", None) if v.spec is not None else None
        if federated and v.spec is not None:  # run/standardise.py sums the moments through v's secure sum
            _check_federated_standardisation(exp, task, v, privacy)
        unknown = sorted(set(getattr(privacy, "site_budgets", None) or {}) - set(names))
        if unknown:
            raise SpecError(
                f"protocol {v.label!r} [privacy].site_budgets: unknown site(s) {unknown}; "
                f"task {exp.task_name!r} has sites {names}"
            )


def _check_federated_standardisation(exp: Experiment, task: Any, v: Variant, privacy: Any) -> None:
    """``standardise = "federated"``: the pooled moments go through the protocol's own secure sum, unnoised."""
    assert v.spec is not None
    where = f'{exp.source} [task].standardise = "federated"'
    if privacy is not None:
        raise SpecError(
            f"{where}: protocol {v.label!r} has a DP layer and the pooled feature moments are released "
            'without noise (not counted in ε); use standardise = "site" or "none" with it'
        )
    if v.spec.threat_model.aggregator_sees != "plain" and getattr(task, "federated", None) is None:
        cols = task.info["preprocessing"]
        missing = [c["name"] for c in cols["columns"] if c["type"] == "numeric" and c.get("range") is None]
        raise SpecError(
            f"{where}: protocol {v.label!r} sums the sites' feature moments securely, which needs a public "
            f"range for every numeric column; give range = [lowest, highest] in [task.columns] for "
            f"{missing}"
        )


def load_experiment(path_or_name: str | Path) -> Experiment:
    path = Path(path_or_name)
    if not path.is_file() and not path.suffix:
        path = find_spec_file("experiments", str(path_or_name)) or path
    if not path.is_file():
        known, where = spec_names("experiments"), [str(d) for d in search_dirs("experiments")]
        raise SpecError(f"experiment spec not found: {path_or_name} (known experiments {known}, searched {where})")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML ({exc})") from exc
    return parse_experiment(data, source=str(path), base_dir=path.parent.resolve())
