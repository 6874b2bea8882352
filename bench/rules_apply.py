"""The rules' share of a batch's transaction when rules fire: engine.apply() against a real
PostgreSQL, for batches like those of bench/rules_bench.py's `rules-fire-1pct` (2 500 messages of
500 devices, 1 % of them a rise whose firing opens an alert and publishes, and as many falls that
resolve one), in the steady state (every state row exists).

    .venv/bin/python bench/rules_apply.py [--batches 200] [--rises 25]

It prints the wall time per apply() (the writer's critical path) and this process's CPU per
apply() (the service's share of the box). It makes its own database (as the tests do:
TEST_PG_ADMIN_URL, default the PostgreSQL on 127.0.0.1:5432) and drops it. For a before/after
comparison of the service's code, run it with PYTHONPATH=<other checkout>.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

# The checkout's root, for tests.support (see bench/writer_stats.py).
sys.path.insert(1 + len([p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
                str(Path(__file__).resolve().parents[1]))  # fmt: skip

import asyncpg
from migrated import migrated_database  # bench/migrated.py

import service
from service.notify.outbox import MQTT, Outbox
from service.records import RuleRecord
from service.routes import build_router
from service.rules import engine
from service.rules.loader import load_text

RULES = """
rules:
  - name: fires-1pct
    on: telemetry
    if: "temperature >= 37.8"
    severity: critical
    then:
      - alert: "{device_id} at {temperature} °C"
      - publish: {topic: "autocore/{device_id}/relay/0/set", payload: {"state": false}}
"""
DEVICES, WARM = 500, 5
T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def run(url: str, batches: int, rises: int) -> tuple[list[float], list[float]]:
    rule = load_text(RULES, build_router("autocore"))["fires-1pct"]
    outbox = Outbox([(MQTT, "autocore/alerts")])
    conn = await asyncpg.connect(url)
    times, cpu = [], []
    try:
        for n in range(batches + WARM):
            # `rises` devices rise in this batch, the ones that rose in the batch before fall.
            records = []
            for k in range(rises):
                up, down = (n * rises + k) % DEVICES, ((n - 1) * rises + k) % DEVICES
                ts = T0 + timedelta(seconds=n, milliseconds=k)
                records.append(RuleRecord(f"R{up:03d}", -1, ts, ((rule, True),),
                                          {"device_id": f"R{up:03d}", "temperature": 38.0}, "bench"))  # fmt: skip
                if n:
                    records.append(RuleRecord(f"R{down:03d}", -1, ts, ((rule, False),), None, "bench"))
            t, c = time.perf_counter(), time.process_time()
            async with conn.transaction():
                await engine.apply(conn, records, outbox)
            if n >= WARM:
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
    finally:
        await conn.close()
    return times, cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--rises", type=int, default=25, help="rises per batch (and as many falls)")
    args = p.parse_args()
    print(f"# service from {Path(service.__file__).parent.parent}")
    with migrated_database("autocore_rules_apply") as url:
        times, cpu = asyncio.run(run(url, args.batches, args.rises))
    ms = sorted(t * 1000 for t in times)
    print(f"{len(ms)} applies of {args.rises} rises and falls: median {statistics.median(ms):.2f} ms, "
          f"p90 {ms[int(len(ms) * 0.9)]:.2f} ms wall; this process's CPU: median "
          f"{statistics.median(cpu) * 1000:.2f} ms per apply")  # fmt: skip


if __name__ == "__main__":
    main()
