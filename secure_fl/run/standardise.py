"""The pre-round step of federated standardisation: the sites' bounded moments through the run's
own secure sum, before round 0 (the math and what it reveals: secure_fl/tasks/federated_stats.py).

A fresh instance of the variant's secure sum (its own keys, as :meth:`SecureSum.setup` provisions
them) carries one vector per site; the released mean becomes the statistics every site applies and
``model.json`` saves. What the aggregator saw is kept in ``standardisation.json`` beside the
statistics (views by stage and kind); a resumed run reads them back instead of summing again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..engine.local import drive_round
from ..errors import SecureFLError
from ..protocol.spec import ProtocolSpec
from ..tasks.base import Task
from ..tasks.federated_stats import restandardise

__all__ = ["FILE", "standardise_through_protocol"]

FILE = "standardisation.json"


def standardise_through_protocol(task: Task, spec: ProtocolSpec, run_dir: Path) -> Task:
    """``task`` with the pooled statistics released by ``spec``'s secure sum.

    The task itself when it asks for no federated standardisation, or when its numeric columns have no
    public range and the protocol shows the aggregator plain updates anyway (then the statistics it was
    built with, from the plainly added moment sums, stand; ``check_against_task`` refuses the rest)."""
    fed = getattr(task, "federated", None)
    if fed is None:
        return task
    path = run_dir / FILE
    if path.exists():  # resumed: the statistics the run started with
        return restandardise(task, json.loads(path.read_text())["pooled"])
    proto = spec.build_secure_sum()
    proto.setup([s.name for s in task.sites], fed.dim)
    outcome = drive_round(proto, 0, fed.inputs, fed.dim)
    if outcome.result is None or outcome.aborted:
        why = outcome.aborted or "no result"
        raise SecureFLError(f"federated standardisation through {spec.name!r} released nothing ({why}; dropped: "
                            f"{sorted(outcome.dropped)}); no round was run")
    pooled = fed.pooled(outcome.result.mean, outcome.result.weight)
    kinds: dict[str, int] = {}
    for v in outcome.views:
        key = f"{v.stage}:{v.kind}"
        kinds[key] = kinds.get(key, 0) + 1
    record: dict[str, Any] = {"protocol": spec.name, "contributors": list(outcome.result.contributors),
                              "pooled": pooled, "views": kinds,
                              "bytes_up_per_site": {s: int(b) for s, b in outcome.bytes_up.items()}}
    path.write_text(json.dumps(record, indent=2) + "\n")
    return restandardise(task, pooled)
