#!/usr/bin/env python3
"""Cost of the inactivity sweep (service/watch/sweep.py) for a large fleet.

    .venv/bin/python bench/sweep.py [-n 100000] [--admin-url URL]

Creates a database of its own (dropped at the end) on the admin URL's server, migrates it, registers
N devices, and times the sweep the service runs every DEVICE_SWEEP_INTERVAL_SECONDS:

* steady state: every device spoke recently, nothing times out (the cost paid every period);
* 1 % of the fleet silent: those time out (rows updated, events and alerts written);
* the whole fleet silent at once (the worst case; done in pages of 10 000).

It prints the median time per sweep and the plan of the steady-state statement.
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
from sqlalchemy.ext.asyncio import create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.notify.outbox import MQTT, Outbox
from service.storage.migrate import alembic_config
from service.watch import sweep as sweep_module
from service.watch.sweep import Sweeper

WINDOW = 180.0


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--devices", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument(
        "--admin-url", default=os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    args = p.parse_args()
    name = f"autocore_sweep_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{args.admin_url.rpartition('/')[0]}/{name}"
    try:
        await asyncio.to_thread(
            command.upgrade, alembic_config(url.replace("postgresql://", "postgresql+asyncpg://", 1)), "head"
        )
        await run(url, args.devices, args.repeat)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def run(url: str, n: int, repeat: int) -> None:
    conn = await asyncpg.connect(url)
    engine = create_async_engine(url.replace("postgresql://", "postgresql+asyncpg://", 1), pool_size=2)
    outbox = Outbox([(MQTT, "autocore/alerts")])
    sweeper = Sweeper(engine, outbox, offline_after=WINDOW, interval=1, connection=lambda: None,
                      writer_healthy=lambda: True)  # fmt: skip
    now = time.time()

    async def fleet(silent: int) -> None:
        await conn.execute("TRUNCATE devices, connectivity_events, connectivity_history, alerts, notifications")
        # Recent devices spoke within the last minute; silent ones an hour ago.
        await conn.execute(
            "INSERT INTO devices (device_id, first_seen, last_seen, is_online, status_ts, state_changed_at, "
            "connectivity_cause) SELECT 'DEV_' || lpad(i::text, 7, '0'), now(), "
            "to_timestamp($2 - CASE WHEN i < $3 THEN 3600 ELSE (i % 60) END), true, now(), now(), 'status' "
            "FROM generate_series(0, $1 - 1) AS i",
            n, now, silent,
        )  # fmt: skip
        await conn.execute("VACUUM ANALYZE devices")

    print(f"devices: {n}, window {WINDOW:.0f}s")
    await fleet(0)
    plan = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sweep_module.SWEEP, now - WINDOW, 10_000, now)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        assert await sweeper.sweep_once(now) == 0
        times.append(time.perf_counter() - t)
    print(
        f"steady state (nothing times out): median {statistics.median(times) * 1000:.2f} ms per sweep "
        f"(min {min(times) * 1000:.2f}, max {max(times) * 1000:.2f}; {repeat} sweeps, connection checkout included)"
    )
    print("plan:\n  " + "\n  ".join(r[0] for r in plan))
    for share in (0.01, 1.0):
        silent = int(n * share)
        await fleet(silent)
        t = time.perf_counter()
        done = await sweeper.sweep_once(now)
        elapsed = time.perf_counter() - t
        assert done == silent, (done, silent)
        alerts = await conn.fetchval("SELECT count(*) FROM alerts")
        notes = await conn.fetchval("SELECT count(*) FROM notifications")
        print(
            f"{share:.0%} silent: {done} timed out in {elapsed * 1000:.0f} ms "
            f"({elapsed / done * 1e6:.0f} µs per device; {alerts} alerts, {notes} outbox rows written)"
        )
        t = time.perf_counter()
        assert await sweeper.sweep_once(now) == 0
        print(
            f"  the sweep after it (offline devices are not in the partial index): "
            f"{(time.perf_counter() - t) * 1000:.2f} ms"
        )
    await engine.dispose()
    await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
