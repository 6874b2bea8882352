"""`python -m service retention [--dry-run]`: one partition-upkeep and retention pass, by hand."""

from __future__ import annotations

import argparse
import asyncio

from service.config import load_settings
from service.history import jobs, partitions, retention
from service.storage.db import create_engine


async def _retention(dry_run: bool) -> int:
    settings = load_settings()
    engine = create_engine(settings)
    try:
        async with jobs.exclusive(engine, jobs.MAINTENANCE_LOCK) as conn:
            if conn is None:
                print("another process is running retention right now; try again later")
                return 1
            if not dry_run:
                for name in await partitions.ensure(conn):
                    print(f"created partition {name}")
            report = await retention.run(conn, settings, dry_run=dry_run)
    finally:
        await engine.dispose()
    for line in report.lines:
        print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("retention", help="create partitions ahead and apply the retention settings")
    run.add_argument("--dry-run", action="store_true", help="print what would be dropped or deleted, change nothing")
    args = parser.parse_args(argv)
    return asyncio.run(_retention(args.dry_run))
