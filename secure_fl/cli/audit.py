"""``secure-fl audit RUN_DIR|EXPERIMENT --attack inversion|membership|epsilon``.

Attacks work only on what the threat model gives the attacker: the payloads the aggregator
carried (taken from the carrier's tap) and the released models. Results go to ``audit.json`` in
the run folder (or ``--out``), figures beside it. See :mod:`secure_fl.audit.runner`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["add_parser", "cmd_audit"]


def cmd_audit(args: argparse.Namespace) -> int:
    from ..audit.runner import run_audit

    path = run_audit(
        args.target, args.attack, out=Path(args.out) if args.out else None, protocols=args.protocol or None,
        batch=args.batch, iterations=args.iterations, budget_seconds=args.budget_seconds, rounds=args.rounds,
        canaries=args.canaries, guesses=args.guesses, audit_rounds=args.audit_rounds, threads=args.threads,
        shadows=args.shadows, online=not args.offline,
    )
    record = json.loads(path.read_text())[args.attack]
    for r in record.get("results", []):
        keys = ("protocol", "target", "psnr_mean", "ssim_mean", "baseline_psnr_mean", "auc",
                "tpr_at_0.1%fpr", "tpr_at_1%fpr", "epsilon_lower_bound", "epsilon_accountant")
        shown = {k: r[k] for k in keys if k in r}
        print(json.dumps(shown))
    print(f"wrote {path}" + (f" and {record['figure']}" if record.get("figure") else ""))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("audit", help="attack what the aggregator carried and the released model")
    p.add_argument("target", help="a run folder (runs/EXP/VARIANT/seedK) or an experiment name / TOML path")
    p.add_argument("--attack", required=True, choices=["inversion", "membership", "epsilon"])
    p.add_argument("--out", help="output folder (default: the run folder, or runs/audit/EXPERIMENT)")
    p.add_argument("--protocol", action="append", help="only this variant of the experiment (repeatable)")
    p.add_argument("--batch", type=int, default=2, help="inversion: images in the attacked site's one SGD step")
    p.add_argument("--iterations", type=int, default=300, help="inversion: Adam iterations per attack")
    p.add_argument("--budget-seconds", type=float, default=None,
                   help="inversion: stop each attack after this long; membership: stop starting new shadows")
    p.add_argument("--rounds", type=int, default=None, help="membership on an experiment: rounds to train")
    p.add_argument("--shadows", type=int, default=8,
                   help="membership: LiRA shadow models trained with the same protocol (0: loss-threshold baseline "
                        "only; --budget-seconds stops starting new ones, at least 4 are trained)")
    p.add_argument("--offline", action="store_true", help="membership: offline LiRA (only shadows without the example)")
    p.add_argument("--canaries", type=int, default=200, help="epsilon: canaries m")
    p.add_argument("--guesses", type=int, default=20, help="epsilon: k guesses 'in' and k guesses 'out'")
    p.add_argument("--audit-rounds", type=int, default=5, help="epsilon: federated rounds of the canary run")
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=cmd_audit)
