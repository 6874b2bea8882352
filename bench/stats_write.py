"""PostgreSQL's side of the statistics: the stats WRITE of 500 cached devices, alone, repeated on
one connection against a real PostgreSQL (the statement service/stats/store.py sends once a batch
in the steady state).

    .venv/bin/python bench/stats_write.py [--rounds 200] [--fillfactor N]

It prints the median and p10 wall time of a WRITE, and how many of the updates were HOT and the
table's size. `--fillfactor` sets the table's (migration 0009 makes it 50; 100 is PostgreSQL's
default). It makes its own database (as the tests do: TEST_PG_ADMIN_URL, default the PostgreSQL
on 127.0.0.1:5432) and drops it. For the statement of another checkout, run it with
PYTHONPATH=<other checkout>.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(1 + len([p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
                str(Path(__file__).resolve().parents[1]))  # fmt: skip

import asyncpg
from migrated import migrated_database  # bench/migrated.py

import service
from service.stats.ewma import K
from service.stats.store import WRITE

DEVICES = 500
METRICS = ["temperature", "humidity", "voltage", "memory_free"]


async def run(url: str, rounds: int, fillfactor: int | None) -> tuple[list[float], asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        if fillfactor is not None:
            await conn.execute(f"ALTER TABLE telemetry_stats SET (fillfactor = {int(fillfactor)})")
        devices = [f"W{i:04d}" for i in range(DEVICES)]
        size = 8 * K * len(METRICS)
        await conn.executemany("INSERT INTO telemetry_stats (device_id, metrics, state) VALUES ($1, $2, $3)",
                               [(d, METRICS, os.urandom(size)) for d in devices])  # fmt: skip
        seen = {r[0]: r[1] for r in await conn.fetch("SELECT device_id, xmin::text::int8 FROM telemetry_stats")}
        times = []
        for _ in range(rounds):
            states = [os.urandom(size) for _ in devices]
            t = time.perf_counter()
            async with conn.transaction():
                rows = await conn.fetch(WRITE, devices, [None] * DEVICES, states, [False] * DEVICES,
                                        [seen[d] for d in devices])  # fmt: skip
            times.append(time.perf_counter() - t)
            # (device_id, xmin) per row written; the code before session 25 also returned (metrics, state), NULL.
            written = [r for r in rows if len(r) == 2 or r[3] is None]
            assert len(written) == DEVICES, len(rows)
            seen.update((r[0], r[1]) for r in rows)
        await asyncio.sleep(1.0)  # the table statistics are sent at most once a second
        await conn.execute("SELECT pg_stat_force_next_flush()")
        table = await conn.fetchrow("SELECT n_tup_upd, n_tup_hot_upd, pg_relation_size(relid) AS bytes "
                                    "FROM pg_stat_user_tables WHERE relname = 'telemetry_stats'")  # fmt: skip
    finally:
        await conn.close()
    return times, table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--fillfactor", type=int)
    args = p.parse_args()
    print(f"# service from {Path(service.__file__).parent.parent}")
    with migrated_database("autocore_stats_write") as url:
        times, table = asyncio.run(run(url, args.rounds, args.fillfactor))
    ms = sorted(t * 1000 for t in times)
    print(f"{len(ms)} WRITEs of {DEVICES} rows: median {statistics.median(ms):.2f} ms, p10 {ms[len(ms) // 10]:.2f} ms; "
          f"updates {table['n_tup_upd']}, HOT {table['n_tup_hot_upd']}, table {table['bytes'] // 1024} kB")  # fmt: skip


if __name__ == "__main__":
    main()
