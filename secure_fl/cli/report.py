"""``secure-fl guarantee PROTOCOL`` and ``secure-fl report RUN_DIR``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import tomllib

from ..errors import SpecError

__all__ = ["add_parser", "cmd_guarantee", "cmd_report"]


def _value(text: str) -> Any:
    """A --set value as TOML reads it (numbers, booleans, quoted strings), else the bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _overrides(items: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"--set {item!r}: expected KEY=VALUE with a dotted spec key, e.g. "
                            "secure_sum.min_contributors=4")
        out[key.strip()] = _value(value.strip())
    return out


def cmd_guarantee(args: argparse.Namespace) -> int:
    from ..report.guarantee import Plan, guarantee_for
    from ..report.statement import to_json, to_text

    plan = Plan(sites=args.sites, rounds=args.rounds, examples_per_site=args.examples, batch_size=args.batch_size,
                local_epochs=args.local_epochs)
    g = guarantee_for(args.protocol, plan, epsilon=args.epsilon, delta=args.delta, overrides=_overrides(args.set))
    if args.json:
        print(json.dumps(to_json(g, args.lang), indent=2, ensure_ascii=False, default=str))
    else:
        print(to_text(g, args.lang))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ..report.html import write_report

    path = write_report(Path(args.run_dir), lang=args.lang, pdf=args.pdf)
    print(path)
    if args.pdf:
        print(path.with_suffix(".pdf"))
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("guarantee", help="what a protocol guarantees, per party, at a configuration (plain language)")
    p.add_argument("protocol", help="catalogue name (protocols/NAME.toml) or a protocol TOML path")
    p.add_argument("--sites", type=int, default=4, help="number of sites (default 4)")
    p.add_argument("--rounds", type=int, default=20, help="planned rounds the ε is composed over (default 20)")
    p.add_argument("--examples", type=int, default=200, help="training examples per site (default 200)")
    p.add_argument("--batch-size", type=int, default=16, help="expected DP-SGD batch size (default 16)")
    p.add_argument("--local-epochs", type=int, default=1, help="local epochs per round (default 1)")
    p.add_argument("--epsilon", type=float, help="target ε (sets [privacy].target_epsilon)")
    p.add_argument("--delta", type=float, help="δ (sets [privacy].delta)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a spec value, e.g. secure_sum.min_contributors=4 (repeatable)")
    p.add_argument("--lang", choices=["en", "ja"], default="en", help="language of the statement (default en)")
    p.add_argument("--json", action="store_true", help="structured fields and sentences as JSON")
    p.set_defaults(func=cmd_guarantee)
    p = sub.add_parser("report", help="write report.html for a run folder or a compare folder")
    p.add_argument("run_dir", help="a run folder (with rounds.jsonl) or a compare folder holding several")
    p.add_argument("--lang", choices=["en", "ja"], default="en", help="language of the guarantee statements")
    p.add_argument("--pdf", action="store_true", help="also print report.pdf with headless Chromium")
    p.set_defaults(func=cmd_report)


if __name__ == "__main__":  # pragma: no cover
    from . import main

    sys.exit(main(sys.argv[1:]))
