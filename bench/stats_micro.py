"""CPU per message of Stats.apply's Python side, in-process: batches of 2 000 telemetry rows from
500 devices (4 known metrics each, Gaussian noise with a few spikes), folded into rows that exist
(the steady state). The database is a stand-in that hands back what was written last, so what is
timed is the Python (and asyncpg-free) part only; the end-to-end figure is bench.py's.

    .venv/bin/python bench/stats_micro.py

For a before/after comparison, run it on both checkouts (it uses only Stats.apply).
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from service.notify.outbox import WEBHOOK, Outbox
from service.records import TelemetryRecord
from service.stats import store
from service.stats.store import Stats

BATCH, DEVICES, ROUNDS, WARM = 2000, 500, 60, 20
T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Table:
    """What the statistics statements see of telemetry_stats: LOCK and WRITE (each written row
    gets a new version, as its xmin; alerts: nothing to return)."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[str, list[str], bytes]] = {}
        self.version = 0

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        if query == store.LOCK:
            return [self.rows[d] for d in args[0] if d in self.rows]
        if query != store.WRITE:
            return []
        out = []
        for d, n, s in zip(*args[:3], strict=True):
            old = self.rows.get(d)
            kept = n.split("\x1f") if n is not None else old[1] if old else []
            self.rows[d] = (d, kept, s)
            self.version += 1
            out.append((d, self.version, None, None))
        return out

    async def execute(self, query: str, *args: Any) -> str:
        return ""


def batches(n: int, seed: int = 1) -> list[Sequence[TelemetryRecord]]:
    r = random.Random(seed)
    clock = [0] * DEVICES
    out = []
    for _ in range(n):
        rows = []
        for _ in range(BATCH):
            d = r.randrange(DEVICES)
            clock[d] += 1
            spike = 50.0 if r.random() < 0.001 else 0.0
            rows.append(
                TelemetryRecord(
                    f"dev-{d:05d}",
                    T0 + timedelta(seconds=clock[d]),
                    20.0 + r.gauss(0, 0.5) + spike,
                    50.0 + r.gauss(0, 2.0),
                    12.0 + r.gauss(0, 0.1),
                    1000 + r.randrange(100),
                    None,
                    0.0,
                )
            )
        out.append(rows)
    return out


async def main() -> None:
    stats = Stats(Outbox([(WEBHOOK, "http://127.0.0.1:9/hook")]))
    table = Table()
    data = batches(WARM + ROUNDS)
    for rows in data[:WARM]:  # every device's row exists and is judged (past min_samples)
        await stats.apply(table, rows)  # type: ignore[arg-type]
    gc.collect()
    started = time.process_time()
    for rows in data[WARM:]:
        await stats.apply(table, rows)  # type: ignore[arg-type]
    spent = time.process_time() - started
    print(f"Stats.apply (Python side): {spent / (ROUNDS * BATCH) * 1e6:.2f} us/message "
          f"({BATCH} rows, {DEVICES} devices per batch, {ROUNDS} batches)")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
