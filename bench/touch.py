#!/usr/bin/env python3
"""Hot-path cost of the fleet watch on a telemetry-only batch: the device upsert (last_seen) before
and after the watch (revival of offline devices, RETURNING new and revived ones, the sweep's partial
index), on a database of its own. The end-to-end figure is bench.py's telemetry scenario.

    .venv/bin/python bench/touch.py [-n 500] [--rounds 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

import asyncpg
from alembic import command

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.storage import json_rows
from service.storage.migrate import alembic_config
from service.watch.liveness import TOUCH

# The statement main used before the watch (9c2a20e, service/storage/statements.py).
OLD_TOUCH = """
INSERT INTO devices AS d (device_id, first_seen, last_seen)
SELECT device_id, to_timestamp(seen), to_timestamp(seen) FROM unnest($1::text[], $2::float8[]) AS u(device_id, seen)
ON CONFLICT (device_id) DO UPDATE SET last_seen = EXCLUDED.last_seen
WHERE d.last_seen < EXCLUDED.last_seen
"""


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--devices", type=int, default=500)
    p.add_argument("--rounds", type=int, default=300)
    p.add_argument(
        "--admin-url", default=os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    args = p.parse_args()
    name = f"autocore_touch_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{args.admin_url.rpartition('/')[0]}/{name}"
    try:
        await asyncio.to_thread(
            command.upgrade, alembic_config(url.replace("postgresql://", "postgresql+asyncpg://", 1)), "head"
        )
        conn = await asyncpg.connect(url)
        ids = [f"ESP32_{i:04d}" for i in range(args.devices)]
        base = time.time()
        results: dict[str, list[float]] = {"before the watch": [], "with the watch": []}
        for r in range(args.rounds):
            for label, sql in (("before the watch", OLD_TOUCH), ("with the watch", TOUCH)):
                seen = [base + r + 0.5 * (label == "with the watch")] * len(ids)
                extra = [] if sql is OLD_TOUCH else [True]
                t = time.perf_counter()
                async with conn.transaction():
                    if extra:  # TOUCH takes its rows as one jsonb parameter
                        await conn.fetch(sql, json_rows.rows(list(zip(ids, seen, strict=True))), *extra)
                    else:
                        await conn.execute(sql, ids, seen)
                results[label].append(time.perf_counter() - t)
        print(f"{args.devices} devices touched per batch, {args.rounds} rounds each, alternating:")
        for label, times in results.items():
            print(f"  {label}: median {statistics.median(times) * 1000:.2f} ms per batch")
        await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
