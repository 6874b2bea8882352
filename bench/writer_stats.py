"""The writer's time per batch with statistics on, against a real PostgreSQL: what a batch costs on
the writer's critical path (its transaction, COPY to commit), in the steady state the referee's
telemetry scenario reaches (batches of 8 000 rows from 500 devices whose stats rows are cached).

    .venv/bin/python bench/writer_stats.py [--batches 40] [--rows 8000] [--off]

It prints the batches' wall time (the critical path) and the CPU time this process spent on
each (the service's share of the box: what the fold costs even where it overlaps the COPY).

It makes its own database (as the tests do: TEST_PG_ADMIN_URL, default the PostgreSQL on
127.0.0.1:5432) and drops it. `--off` runs the same batches with statistics off: the difference
is the statistics' share of the critical path. For a before/after comparison of the service's code, run it with
PYTHONPATH=<other checkout> (it prints which checkout's `service` it imported).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

# The checkout's root, for tests.support: after PYTHONPATH's entries (another checkout's service
# wins) and before site-packages (which may hold a `tests` package of its own).
sys.path.insert(1 + len([p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
                str(Path(__file__).resolve().parents[1]))  # fmt: skip

from migrated import migrated_database  # bench/migrated.py
from sqlalchemy.ext.asyncio import create_async_engine

import service
from service.mqtt.message import InboundMessage
from service.notify.outbox import Outbox
from service.records import TelemetryRecord
from service.stats.ewma import Params
from service.stats.store import Stats
from service.storage.writer import BatchWriter, Pending

DEVICES, BATCH, WARM = 500, 8000, 5
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def batch(n: int, r: random.Random, rows: int) -> list[Pending]:
    now = time.time()
    out = []
    for i in range(rows):
        k = n * rows + i
        device = f"W{k % DEVICES:04d}"
        ts = T0 + timedelta(milliseconds=k)
        rec = TelemetryRecord(device, ts, 20 + r.gauss(0, 0.5), 50 + r.gauss(0, 1), 3.3, 120_000, None, now)
        out.append(Pending(InboundMessage(f"autocore/{device}/telemetry", b"{}", 1, False, now), [rec], "telemetry"))
    return out


async def run(url: str, batches: int, rows: int, stats_on: bool) -> list[float]:
    engine = create_async_engine(url)
    stats = Stats(Outbox(), Params()) if stats_on else None
    writer = BatchWriter(engine, batch_size=rows, linger=0, stats=stats)
    r = random.Random(1)
    times, cpu = [], []
    try:
        for n in range(batches + WARM):
            for p in batch(n, r, rows):
                writer.add(p)
            t, c = time.perf_counter(), time.process_time()
            await writer.flush_once()
            if n >= WARM:
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
    finally:
        await writer.close()
        await engine.dispose()
    return times, cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--rows", type=int, default=BATCH, help="rows per batch (the telemetry scenario's batches "
                   "reach 8 000 at its peak, about 2 500 on average)")
    p.add_argument("--off", action="store_true", help="statistics off")
    args = p.parse_args()
    print(f"# service from {Path(service.__file__).parent.parent}; statistics {'off' if args.off else 'on'}")
    with migrated_database("autocore_writer_stats") as url:
        async_url = url.replace("postgresql://", "postgresql+asyncpg://", 1)
        times, cpu = asyncio.run(run(async_url, args.batches, args.rows, not args.off))
    ms = sorted(t * 1000 for t in times)
    print(f"{len(ms)} batches of {args.rows} rows ({DEVICES} devices): median {statistics.median(ms):.2f} ms, "
          f"mean {statistics.fmean(ms):.2f} ms, p90 {ms[int(len(ms) * 0.9)]:.2f} ms per batch; "
          f"this process's CPU: median {statistics.median(cpu) * 1000:.2f} ms per batch")  # fmt: skip


if __name__ == "__main__":
    main()
