#!/usr/bin/env python3
"""History benchmark (not a test): long charts from rollups vs raw rows, sweep cost, retention stall.

    .venv/bin/python bench/history_bench.py [--rows 10000000] [--devices 40]

Makes a throw-away database on TEST_PG_ADMIN_URL's server (default postgresql://postgres@127.0.0.1:5432/
postgres), fills `telemetry` by SQL with --rows rows over the last 30 days (--devices devices, evenly
spaced samples), then measures:
  1. the first rollup sweep over all of it (catch-up after the migration);
  2. GET /devices/{id}/telemetry?bucket=1h over 30 days for one device (the query the endpoint runs),
     raw aggregation vs rollups (median of --repeat), also with a not-yet-swept tail;
  3. an incremental sweep after 30 s worth of a 500-device fleet at 1 msg/s (15 000 rows);
  4. ingestion (COPY batches of 2 000 rows into the partitioned parent, as the writer does) while
     retention drops five daily partitions: rows/s before/while, and the slowest batch.
The database is dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
from alembic import command
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from service.config import Settings
from service.history import partitions, retention, rollups
from service.storage import queries
from service.storage import statements as sql
from service.storage.migrate import alembic_config

ADMIN = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


async def admin(statement: str) -> None:
    conn = await asyncpg.connect(ADMIN)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


async def timed(fn, repeat: int) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    runs, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = await fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs), result


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--devices", type=int, default=40)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    name = f"autocore_hbench_{uuid.uuid4().hex[:8]}"
    url = f"{ADMIN.rpartition('/')[0]}/{name}"
    async_url = url.replace("postgresql://", "postgresql+asyncpg://", 1)
    await admin(f'CREATE DATABASE "{name}"')
    try:
        await asyncio.to_thread(command.upgrade, alembic_config(async_url), "head")
        engine = create_async_engine(async_url)
        conn = await asyncpg.connect(url)
        now = datetime.now(UTC).replace(microsecond=0)
        first_day = partitions.TELEMETRY.start(now - timedelta(days=30))
        async with engine.connect() as c:
            for fam, starts in ((partitions.TELEMETRY, [first_day + timedelta(days=d) for d in range(31)]),
                                (partitions.ROLLUP_MINUTE, [partitions.ROLLUP_MINUTE.start(first_day)]),
                                (partitions.ROLLUP_HOUR, [partitions.ROLLUP_HOUR.start(first_day)])):  # fmt: skip
                async with c.begin():
                    have = {q.lo for q in await partitions.partitions(c, fam)}
                for lo in starts:
                    if lo not in have:
                        await partitions.create(c, fam, lo)
        per_device = args.rows // args.devices
        step = timedelta(days=30) / per_device
        t = time.perf_counter()
        await conn.execute(
            """
            INSERT INTO telemetry (device_id, ts, temperature, humidity, voltage, memory_free, received_at)
            SELECT 'dev' || d, $1::timestamptz + s * $2::interval, 20 + 5 * sin(s / 100.0) + d, 40 + (s % 17), 3.3,
                   40000 + (s % 1000), $1::timestamptz + s * $2::interval + interval '1 second'
            FROM generate_series(0, $3 - 1) AS s, generate_series(0, $4 - 1) AS d
            ORDER BY s
            """,
            now - timedelta(days=30), step, per_device, args.devices,
        )  # fmt: skip
        await conn.execute("VACUUM ANALYZE telemetry")
        rows = await conn.fetchval("SELECT count(*) FROM telemetry")
        print(f"filled {rows} rows ({args.devices} devices, one sample per {step.total_seconds():.1f} s each, "
              f"30 days) in {time.perf_counter() - t:.0f} s")  # fmt: skip

        async with engine.connect() as c:
            t = time.perf_counter()
            swept = await rollups.sweep(c, settle=0.0)
            print(f"1. first sweep over all rows: {time.perf_counter() - t:.1f} s "
                  f"({swept.minutes if swept else 0} minute, {swept.hours if swept else 0} hour buckets)")  # fmt: skip
        await conn.execute("ANALYZE")
        async with engine.connect() as c:
            # As the maintenance job does for the days that are over (the last partial BRIN range).
            await partitions.summarize(c)

        device, start, end = "dev7", now - timedelta(days=30), now
        async with AsyncSession(engine) as session:

            def chart(use: bool):  # type: ignore[no-untyped-def]
                return lambda: queries.telemetry_buckets(
                    session, device, timedelta(hours=1), start, end, 1000, use_rollups=use
                )

            raw_s, raw = await timed(chart(False), args.repeat)
            roll_s, rolled = await timed(chart(True), args.repeat)
            assert len(raw) == len(rolled), (len(raw), len(rolled))  # type: ignore[arg-type]
            print(f"2. 30-day chart, bucket=1h, one device ({per_device} raw rows, {len(raw)} buckets): "  # type: ignore[arg-type]
                  f"raw {ms(raw_s)}, rollups {ms(roll_s)} (median of {args.repeat})")  # fmt: skip
            # A tail not swept yet: 30 s of this device's samples received now.
            await conn.execute(
                "INSERT INTO telemetry (device_id, ts, temperature, received_at) "
                "SELECT $1, $2::timestamptz - s * interval '1 second', 99, now() FROM generate_series(1, 30) s",
                device, now,
            )  # fmt: skip
            tail_s, _ = await timed(chart(True), args.repeat)
            print(f"   with 30 rows received after the last sweep: rollups + raw tail {ms(tail_s)}")
            day_raw, _ = await timed(
                lambda: queries.telemetry_buckets(session, device, timedelta(minutes=1), now - timedelta(days=1),
                                                  now, 1000, use_rollups=False), args.repeat)  # fmt: skip
            day_roll, _ = await timed(
                lambda: queries.telemetry_buckets(session, device, timedelta(minutes=1), now - timedelta(days=1),
                                                  now, 1000, use_rollups=True), args.repeat)  # fmt: skip
            print(f"   1-day chart, bucket=1m (1000 buckets): raw {ms(day_raw)}, rollups {ms(day_roll)}")

        # 3. An incremental sweep: 30 s of a 500-device fleet at one message a second.
        await conn.execute(
            "INSERT INTO telemetry (device_id, ts, temperature, received_at) "
            "SELECT 'fleet' || d, $1::timestamptz - s * interval '1 second', 20, now() "
            "FROM generate_series(0, 499) d, generate_series(1, 30) s",
            now,
        )
        async with engine.connect() as c:
            t = time.perf_counter()
            swept = await rollups.sweep(c, settle=0.0)
            print(f"3. incremental sweep after 15 030 new rows: {ms(time.perf_counter() - t)} "
                  f"({swept.minutes if swept else 0} minute buckets)")  # fmt: skip

        # 4. Ingestion while retention drops partitions.
        latencies: list[tuple[float, float]] = []
        stop = asyncio.Event()

        async def ingest() -> None:
            w = await asyncpg.connect(url)
            k = 0
            try:
                while not stop.is_set():
                    batch = [(f"ing{i % 500}", now + timedelta(milliseconds=k * 2000 + i), 20.0, 40.0, 3.3, 1000,
                              None, now) for i in range(2000)]  # fmt: skip
                    t0 = time.perf_counter()
                    async with w.transaction():
                        await w.copy_records_to_table("telemetry", records=batch, columns=sql.TELEMETRY_COLUMNS)
                    latencies.append((t0, time.perf_counter() - t0))
                    k += 1
            finally:
                await w.close()

        task = asyncio.create_task(ingest())
        await asyncio.sleep(3)
        settings = Settings(_env_file=None, database_url=async_url, telemetry_retention_days=25)  # type: ignore[call-arg]
        async with engine.connect() as c:
            t_drop = time.perf_counter()
            report = await retention.run(c, settings)
            t_done = time.perf_counter()
        await asyncio.sleep(3)
        stop.set()
        await task
        before = [d for t0, d in latencies if t0 < t_drop]
        during = [d for t0, d in latencies if t_drop <= t0 + d and t0 <= t_done]
        window = max(t_done - t_drop, 1e-9)
        print(f"4. retention dropped {len(report.dropped)} partitions (about {args.rows * 5 // 30} rows) in "
              f"{ms(t_done - t_drop)}; ingestion: {2000 * len(before) / sum(before):.0f} rows/s before, "
              f"{2000 * len(during) / window:.0f} rows/s while dropping; slowest batch before "
              f"{ms(max(before))}, while dropping {ms(max(during) if during else 0)}")  # fmt: skip

        # 5. Ingestion with the rollup sweep running (every 2 s, as fast as a test would set it) or not.
        async def rate(seconds: float, sweeping: bool, base: int) -> float:
            done = asyncio.Event()
            rows = 0

            async def writer() -> None:
                nonlocal rows
                w = await asyncpg.connect(url)
                k = 0
                try:
                    while not done.is_set():
                        stamp = datetime.now(UTC)
                        batch = [(f"r{i % 500}", now + timedelta(microseconds=(base + k) * 2000 + i), 20.0,
                                  40.0, 3.3, 1000, None, stamp) for i in range(2000)]  # fmt: skip
                        async with w.transaction():
                            await w.copy_records_to_table("telemetry", records=batch, columns=sql.TELEMETRY_COLUMNS)
                        rows += len(batch)
                        k += 1
                finally:
                    await w.close()

            async def sweeper() -> None:
                async with engine.connect() as c:
                    while not done.is_set():
                        await rollups.sweep(c, settle=0.0)
                        await asyncio.sleep(2)

            tasks = [asyncio.create_task(writer())] + ([asyncio.create_task(sweeper())] if sweeping else [])
            await asyncio.sleep(seconds)
            done.set()
            await asyncio.gather(*tasks)
            return rows / seconds

        async with engine.connect() as c:
            await rollups.sweep(c, settle=0.0)
        off1 = await rate(20, False, 1_000_000)
        on1 = await rate(20, True, 2_000_000)
        off2 = await rate(20, False, 3_000_000)
        on2 = await rate(20, True, 4_000_000)
        print(f"5. COPY ingestion (batches of 2 000, one connection), 20 s each: sweep off {off1:.0f} / {off2:.0f} "
              f"rows/s, sweep every 2 s {on1:.0f} / {on2:.0f} rows/s "
              f"({(on1 + on2) / (off1 + off2) - 1:+.1%})")  # fmt: skip
        await conn.close()
        await engine.dispose()
    finally:
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    asyncio.run(main())
