"""What a small batch's transaction costs, against a real PostgreSQL: the telemetry rows of a paced
rate (1 to 32 a batch) by the writer's binary COPY in a transaction, by `INSERT … unnest …
ON CONFLICT` in a transaction, and by that INSERT alone (its own implicit transaction).

    .venv/bin/python bench/small_batches.py [--transactions 2000]

Per transaction: wall time, this process's CPU and the PostgreSQL backend's CPU (from /proc). It
makes its own database (as the tests do: TEST_PG_ADMIN_URL, default the PostgreSQL on
127.0.0.1:5432) and drops it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # tests.support, after this directory

import asyncpg
import psutil
from migrated import migrated_database  # bench/migrated.py

from service.storage import statements as sql
from service.storage.writer import _copy_pieces

T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def run(url: str, transactions: int) -> None:
    conn = await asyncpg.connect(url)
    backend = psutil.Process(conn.get_server_pid())
    k = 0

    def rows(n: int) -> list[tuple[Any, ...]]:
        nonlocal k
        out = []
        for _ in range(n):
            k += 1
            out.append((f"D{k % 500:03d}", T0 + timedelta(microseconds=k), 20.5, 40.0, 3.3, 1000, None, time.time()))
        return out

    async def copy(n: int) -> None:
        async with conn.transaction():
            await _copy_pieces(conn, "telemetry", sql.TELEMETRY_COLUMNS, sql.telemetry_copy_pieces(rows(n)))

    async def insert_in_transaction(n: int) -> None:
        async with conn.transaction():
            await conn.execute(sql.INSERT_TELEMETRY, *sql.columns(rows(n), 8))

    async def insert_alone(n: int) -> None:
        await conn.execute(sql.INSERT_TELEMETRY, *sql.columns(rows(n), 8))

    ways: list[tuple[str, Callable[[int], Awaitable[None]]]] = [
        ("COPY in a transaction", copy),
        ("INSERT in a transaction", insert_in_transaction),
        ("INSERT alone", insert_alone),
    ]
    print(f"{'rows':>4}  {'way':<24} {'wall µs':>8} {'client CPU µs':>14} {'backend CPU µs':>15}")
    try:
        for n in (1, 4, 16, 32):
            for name, way in ways:
                await way(n)  # the statement prepared, the partition's caches warm
                t, c, b = time.perf_counter(), time.process_time(), sum(backend.cpu_times()[:2])
                for _ in range(transactions):
                    await way(n)
                wall = (time.perf_counter() - t) / transactions * 1e6
                client = (time.process_time() - c) / transactions * 1e6
                server = (sum(backend.cpu_times()[:2]) - b) / transactions * 1e6
                print(f"{n:>4}  {name:<24} {wall:>8.0f} {client:>14.0f} {server:>15.0f}", flush=True)
    finally:
        await conn.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--transactions", type=int, default=2000, help="per size and way")
    args = p.parse_args()
    with migrated_database("autocore_small_batches") as url:
        asyncio.run(run(url, args.transactions))


if __name__ == "__main__":
    main()
