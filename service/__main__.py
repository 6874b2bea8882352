"""`python -m service <command>`: maintenance commands (the server itself is `uvicorn service.main:app`).

* `python -m service rules check FILE`: check a rules file without starting anything (docs/rules.md).
* `python -m service retention [--dry-run]`: one partition-upkeep and retention pass (docs/retention.md).
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if argv[:1] == ["rules"]:
        from service.rules.cli import main as rules

        return rules(argv[1:])
    if argv[:1] == ["retention"]:
        from service.history.cli import main as history

        return history(argv)
    print("usage: python -m service rules check FILE | python -m service retention [--dry-run]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
