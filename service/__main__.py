"""`python -m service <command>`: the service's command line (the server itself is `uvicorn service.main:app`)."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if argv[:1] == ["rules"]:
        from service.rules.cli import main as rules

        return rules(argv[1:])
    print("usage: python -m service rules check FILE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
