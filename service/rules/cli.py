"""`python -m service rules check FILE`: what start-up would say about a rules file, without starting."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from service.routes import build_router
from service.rules.loader import RulesError, load_file


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m service rules", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="load FILE as start-up would; exit 1 with the reason if it does not load")
    check.add_argument("file")
    check.add_argument("--prefix", default=os.environ.get("MQTT_TOPIC_PREFIX", "autocore"),
                       help="the routes' topic prefix (default: MQTT_TOPIC_PREFIX or autocore)")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        rules = load_file(args.file, build_router(args.prefix.strip("/")))
    except RulesError as exc:
        print(exc, file=sys.stderr)
        return 1
    per_route = ", ".join(f"{name}: {len(r.rules)}" for name, r in rules.by_route.items()) or "none"
    print(f"{args.file}: {len(rules.rules)} rules ok (by route: {per_route})")
    for rule in rules.rules:
        hold = f" for {rule.hold}" if rule.hold else ""
        kinds = ", ".join(kind for kind, _ in rule.actions)
        print(f"  {rule.name}: on {rule.route} if {rule.source.if_}{hold} -> {kinds}")
    return 0
