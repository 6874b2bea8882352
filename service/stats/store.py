"""Statistics of the rows a batch inserted, in the batch's own transaction (docs/statistics.md).

Three round trips per batch with telemetry, whatever the number of devices:

1. LOCK: the stored rows of every device of the batch, locked in (device_id, metric) order (two
   writers of the same devices lock them in the same order: no deadlock). It runs after every
   other statement of the batch, so a writer that holds stats rows waits for nothing but other
   stats rows (and the anomaly alerts, which only holders of the device's stats rows touch).
2. COPY of the new figures into a temporary table (service/stats/copy.py: cheaper than arrays).
3. WRITE: from it, the rows read (UPDATE) and the rows created (INSERT, in key order).
   A row another writer created since step 1 (both saw the metric for the first time) is not
   overwritten: the statement reports it and the batch is written again (StatsRaced), this time
   finding the row to lock.

Then, only for a batch whose samples opened or ended an anomaly, the alert statements of
service/watch/alerts.py (with their outbox rows).

Only inserted rows come here (the writer knows them: COPY stores all of a batch or fails, and the
ON CONFLICT statement returns what it stored), so a redelivered message changes nothing.
"""

from __future__ import annotations

import json
import math
import weakref
from collections.abc import AsyncIterator, Sequence
from operator import itemgetter
from typing import Any

import asyncpg

from service import metrics
from service.notify.outbox import Outbox
from service.stats.copy import COLUMNS, CREATE_STAGE, STAGE, stage_data
from service.stats.ewma import ANOMALOUS, OPENED, RESOLVED, MetricState, Params, observe
from service.watch.alerts import AlertSpec, open_alerts, resolve_alerts

ANOMALY = "anomaly"
KNOWN = ("temperature", "humidity", "voltage", "memory_free")

STATE_COLUMNS = (
    "count", "min", "max", "last_value", "last_ts", "n", "mean", "var", "anomalous", "normal_run",
    "outlier_run", "run_mean", "run_m2", "last_z",
)  # fmt: skip

LOCK = f"""
SELECT device_id, metric, {", ".join(STATE_COLUMNS)} FROM telemetry_stats
WHERE device_id = ANY($1::text[]) ORDER BY device_id, metric FOR UPDATE
"""

WRITE = f"""
WITH up AS (
    UPDATE telemetry_stats s SET {", ".join(f"{c} = u.{c}" for c in STATE_COLUMNS)}, updated_at = now()
    FROM {STAGE} u WHERE NOT u.created AND s.device_id = u.device_id AND s.metric = u.metric
), ins AS (
    INSERT INTO telemetry_stats (device_id, metric, {", ".join(STATE_COLUMNS)})
    SELECT device_id, metric, {", ".join(STATE_COLUMNS)} FROM {STAGE} u WHERE u.created
    ORDER BY device_id, metric
    ON CONFLICT (device_id, metric) DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM ins
"""

_by_device_ts = itemgetter(0, 1)
_LOW, _HIGH = -math.inf, math.inf


class StatsRaced(Exception):
    """Another writer created a stats row this batch creates too: the batch is written again."""


class Stats:
    def __init__(self, outbox: Outbox, params: Params | None = None, *, max_metrics: int = 16) -> None:
        self._outbox = outbox
        self.params = params or Params()
        self._alpha = self.params.alpha
        self._max_metrics = max_metrics
        # Connections that have the temporary staging table (the writer keeps one for good).
        self._staged: weakref.WeakSet[asyncpg.Connection] = weakref.WeakSet()

    async def apply(self, conn: asyncpg.Connection, rows: Sequence[Sequence[Any]]) -> None:
        """Fold inserted telemetry rows (device_id, ts, temperature, humidity, voltage, memory_free,
        extra JSON text, ...) into the stored statistics, inside the caller's transaction."""
        if not rows:
            return
        devices = sorted({r[0] for r in rows})
        states: dict[tuple[str, str], MetricState] = {}
        per_device: dict[str, int] = {}
        for r in await conn.fetch(LOCK, devices):
            device = r[0]
            states[device, r[1]] = MetricState(*r[2:])
            per_device[device] = per_device.get(device, 0) + 1
        created: set[tuple[str, str]] = set()
        touched: set[tuple[str, str]] = set()
        opened: dict[tuple[str, str], AlertSpec] = {}
        ended: set[tuple[str, str]] = set()
        p, alpha, cap = self.params, self._alpha, self._max_metrics
        for row in sorted(rows, key=_by_device_ts):
            device, ts = row[0], row[1]
            # Not None, NaN or infinite (-inf < NaN is false): one such sample would poison the average.
            samples = [(m, v) for m, v in zip(KNOWN, row[2:6], strict=True) if v is not None and _LOW < v < _HIGH]
            if row[6]:
                samples.extend(_numbers(row[6]))
            for metric, value in samples:
                key = (device, metric)
                s = states.get(key)
                if s is None:
                    if metric not in KNOWN and per_device.get(device, 0) >= cap:
                        metrics.ERRORS.labels("stats_metric_dropped").inc()
                        continue
                    s = states[key] = MetricState()
                    created.add(key)
                    per_device[device] = per_device.get(device, 0) + 1
                touched.add(key)
                change = observe(s, ts, float(value), p, alpha)
                if change in (OPENED, ANOMALOUS):
                    opened[key] = _spec(device, metric, s)  # the newest outlier's figures
                elif change == RESOLVED:
                    ended.add(key)
        await self._write(conn, states, sorted(touched), created)
        # Opened (or bumped) first, then ended: an anomaly that began and ended within the batch
        # is opened and resolved (both notified), as it would be over two batches.
        if opened:
            await open_alerts(conn, self._outbox, list(opened.values()))
        resolve = [(k[0], ANOMALY, k[1]) for k in sorted(ended) if not states[k].anomalous]
        if resolve:
            await resolve_alerts(conn, self._outbox, resolve)

    async def _write(
        self,
        conn: asyncpg.Connection,
        states: dict[tuple[str, str], MetricState],
        keys: list[tuple[str, str]],
        created: set[tuple[str, str]],
    ) -> None:
        if conn not in self._staged:
            await conn.execute(CREATE_STAGE)
            self._staged.add(conn)
        data = stage_data(keys, states, created)
        await conn.copy_to_table(STAGE, source=_one_chunk(data), columns=COLUMNS, format="binary")
        inserted = await conn.fetchval(WRITE)
        if inserted != len(created):
            raise StatsRaced(f"{len(created) - inserted} stats rows were created meanwhile by another writer")


async def _one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _spec(device: str, metric: str, s: MetricState) -> AlertSpec:
    z = s.last_z or 0.0
    value = s.last_value
    return AlertSpec(
        device,
        ANOMALY,
        metric,
        "warning",
        f"{metric} {value:g} is {z:.1f} deviations from its average {s.ref_mean:g}",
        {"value": value, "average": s.ref_mean, "deviation": s.ref_deviation, "z": round(z, 3)},
    )


def _numbers(extra: str) -> list[tuple[str, float]]:
    try:
        fields = json.loads(extra)
    except ValueError:
        return []
    if not isinstance(fields, dict):
        return []
    return [
        (k, float(v))
        for k, v in fields.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and k not in KNOWN
    ]
