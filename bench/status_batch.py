#!/usr/bin/env python3
"""Cost of a status batch in the watch (device lock, ordering rule, connectivity events) on a database
of its own: N devices, each with one stamped status per batch, every one a change (the worst case),
and the time per statement. Run it from a checkout to measure that checkout's service/ (e.g. main
before a change, then the branch). The end-to-end figure is bench.py's mixed scenario.

    .venv/bin/python bench/status_batch.py [-n 500] [--rounds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from alembic import command

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.records import StatusRecord
from service.storage.migrate import alembic_config
from service.watch.liveness import Watch

_spent: dict[str, float] = {}


def _timed(name: str) -> Any:
    async def call(self: asyncpg.Connection, query: str, *args: Any, **kw: Any) -> Any:
        started = time.perf_counter()
        try:
            return await getattr(asyncpg.Connection, name)(self, query, *args, **kw)
        finally:
            key = " ".join(query.split())[:72]
            _spent[key] = _spent.get(key, 0.0) + time.perf_counter() - started

    return call


class _Timed(asyncpg.Connection):
    fetch = _timed("fetch")
    fetchrow = _timed("fetchrow")
    execute = _timed("execute")


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--devices", type=int, default=500)
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument(
        "--admin-url", default=os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    args = p.parse_args()
    name = f"autocore_status_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{args.admin_url.rpartition('/')[0]}/{name}"
    try:
        await asyncio.to_thread(
            command.upgrade, alembic_config(url.replace("postgresql://", "postgresql+asyncpg://", 1)), "head"
        )
        conn = await asyncpg.connect(url, connection_class=_Timed)
        watch = Watch()
        t0 = datetime(2026, 1, 1, tzinfo=UTC)
        base = time.time()
        ids = [f"ESP32_{i:04d}" for i in range(args.devices)]
        times: list[float] = []
        for r in range(args.rounds):
            batch = [StatusRecord(d, t0 + timedelta(seconds=r), r % 2 == 0, None, None, None, True, False, base + r)
                     for d in ids]  # fmt: skip
            started = time.perf_counter()
            async with conn.transaction():
                await watch.devices(conn, batch, {}, [])
            times.append(time.perf_counter() - started)
        print(f"{args.devices} stamped statuses per batch (each a change), {args.rounds} rounds:")
        print(f"  median {statistics.median(times[5:]) * 1000:.2f} ms per batch; per statement (mean per batch):")
        for key, spent in sorted(_spent.items(), key=lambda kv: -kv[1]):
            print(f"    {spent / args.rounds * 1000:7.2f} ms  {key}")
        await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
