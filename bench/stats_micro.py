"""CPU per message of Stats.apply's Python side, in-process: batches of 2 000 telemetry rows from
500 devices (4 known metrics each, Gaussian noise with a few spikes), folded into rows that exist
(the steady state). The database is a stand-in that hands back what was written last, so what is
timed is the Python (and asyncpg-free) part only; the end-to-end figure is bench.py's.

    .venv/bin/python bench/stats_micro.py [--batch 2000] [--spikes 0.001] [--ahead] [--replay]

`--spikes 0`: Gaussian noise alone. `--referee`: the readings of the referee's generator
(../shared/bench/loadgen.py, or $BENCH_HARNESS): saw-tooth ramps, an anomaly at every wrap.
`--ahead`: as the writer folds a batch it COPYs (Stats.fold_ahead, samples from the COPY's packing).
`--replay`: the timed batches are the warm-up's again (every sample older than its metric's newest:
what the referee's runs after the first send, its timestamps being the same every run).
`--compare-fold FILE`: another version of service/stats/fold.py (say `git show REV:service/stats/fold.py
> /tmp/fold_before.py`): each batch is folded by both in turn, from the same states, and the
median and best CPU ms per batch of each are printed (the stored bytes must come out the same).

For a before/after comparison, run it on both checkouts (it uses only Stats.apply).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import os
import random
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from service.notify.outbox import WEBHOOK, Outbox
from service.records import TelemetryRecord
from service.stats import store
from service.stats.store import Stats
from service.storage import statements as sql

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
            out.append((d, self.version))  # WRITE returns (device_id, the new xmin)
        return out

    async def execute(self, query: str, *args: Any) -> str:
        return ""


def batches(n: int, seed: int = 1, spikes: float = 0.001, referee: bool = False) -> list[Sequence[TelemetryRecord]]:
    r = random.Random(seed)
    if referee:
        sys.path.insert(0, os.environ.get("BENCH_HARNESS", str(Path(__file__).resolve().parents[2] / "shared/bench")))
        from loadgen import values  # type: ignore[import-not-found]
    clock = [0] * DEVICES
    out = []
    for _ in range(n):
        rows = []
        for _ in range(BATCH):
            d = r.randrange(DEVICES)
            clock[d] += 1
            spike = 50.0 if r.random() < spikes else 0.0
            if referee:
                t, h, v, m = values((clock[d] - 1) * DEVICES + d, DEVICES)
            else:
                t, h = 20.0 + r.gauss(0, 0.5) + spike, 50.0 + r.gauss(0, 2.0)
                v, m = 12.0 + r.gauss(0, 0.1), 1000 + r.randrange(100)
            rows.append(TelemetryRecord(f"dev-{d:05d}", T0 + timedelta(seconds=clock[d]), t, h, v, m, None, 0.0))
        out.append(rows)
    return out


def timed_batches(data: list[Sequence[TelemetryRecord]], replay: bool) -> list[Sequence[TelemetryRecord]]:
    """The batches after the warm-up, or (`replay`) the warm-up's again."""
    return [data[i % WARM] for i in range(ROUNDS)] if replay else data[WARM:]


def packed(rows: Sequence[TelemetryRecord]) -> bytes:
    """The rows' fixed parts as the writer's COPY packs them (what fold_ahead reads its samples from)."""
    fixed: list[bytes] = []
    for _ in sql.telemetry_copy_pieces(rows, fixed=fixed):
        pass
    return b"".join(fixed)


async def main() -> None:
    global BATCH
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--spikes", type=float, default=0.001, help="share of samples that are spikes")
    parser.add_argument("--referee", action="store_true", help="the referee generator's readings")
    parser.add_argument("--ahead", action="store_true", help="fold_ahead() with the COPY's packing")
    parser.add_argument("--replay", action="store_true", help="time the warm-up's batches again")
    parser.add_argument("--compare-fold", type=Path, help="another fold.py, folded in turn with this one")
    args = parser.parse_args()
    BATCH = args.batch
    data = batches(WARM + ROUNDS, spikes=args.spikes, referee=args.referee)
    if args.compare_fold:
        await compare_folds(data, args.compare_fold, args.replay)
        return
    stats = Stats(Outbox([(WEBHOOK, "http://127.0.0.1:9/hook")]))
    table = Table()
    for rows in data[:WARM]:  # every device's row exists and is judged (past min_samples)
        await stats.apply(table, rows)  # type: ignore[arg-type]
    timed = timed_batches(data, args.replay)
    fixed = [packed(rows) if args.ahead else b"" for rows in timed]
    gc.collect()
    started = time.process_time()
    for rows, parts in zip(timed, fixed, strict=True):
        ahead = stats.fold_ahead(rows, parts) if args.ahead else None
        await stats.apply(table, rows, ahead)  # type: ignore[arg-type]
    spent = time.process_time() - started
    print(f"Stats.apply (Python side): {spent / (ROUNDS * BATCH) * 1e6:.2f} us/message "
          f"({BATCH} rows, {DEVICES} devices per batch, {ROUNDS} batches, "
          f"{'the referee readings' if args.referee else f'spikes {args.spikes}'}"
          f"{', folded ahead' if args.ahead else ''}{', replayed' if args.replay else ''})")  # fmt: skip


async def compare_folds(data: list[Sequence[TelemetryRecord]], other: Path, replay: bool) -> None:
    """Fold each timed batch with this checkout's fold() and with `other`'s, in turn (folded ahead,
    as the writer does), and print the median and best CPU ms per batch of each."""
    spec = importlib.util.spec_from_file_location("other_fold", other)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sides = {"this": store.fold, str(other): module.fold}
    state = {name: (Stats(Outbox([(WEBHOOK, "http://127.0.0.1:9/hook")])), Table()) for name in sides}
    for name, (stats, table) in state.items():
        store.fold = sides[name]  # type: ignore[attr-defined]
        for rows in data[:WARM]:
            await stats.apply(table, rows)  # type: ignore[arg-type]
    times: dict[str, list[float]] = {name: [] for name in sides}
    gc.collect()
    for rows in timed_batches(data, replay):
        fixed = packed(rows)
        for name, (stats, table) in state.items():
            store.fold = sides[name]  # type: ignore[attr-defined]
            started = time.process_time()
            await stats.apply(table, rows, stats.fold_ahead(rows, fixed))  # type: ignore[arg-type]
            times[name].append(time.process_time() - started)
    tables = [table.rows for _stats, table in state.values()]
    assert tables[0] == tables[1], "the two folds stored different rows"
    for name, spent in times.items():
        print(f"{name}: median {statistics.median(spent) * 1e3:.2f} ms, best {min(spent) * 1e3:.2f} ms "
              f"per batch of {BATCH} rows ({'replayed' if replay else 'new'} samples)")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
