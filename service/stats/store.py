"""Statistics of the rows a batch inserted, in the batch's own transaction (docs/statistics.md).

Two statements per batch with telemetry, whatever the number of devices:

1. LOCK: the stored rows of every device of the batch, locked in (device_id, metric) order (two
   writers of the same devices lock them in the same order: no deadlock). It runs after every
   other statement of the batch, so a writer that holds stats rows waits for nothing but other
   stats rows (and the anomaly alerts, which only holders of the device's stats rows touch).
2. WRITE: the new figures of the rows read (UPDATE) and the rows created (INSERT, in key order).
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
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

import asyncpg

from service import metrics
from service.notify.outbox import Outbox
from service.stats.ewma import ANOMALOUS, OPENED, RESOLVED, MetricState, Params, observe
from service.watch.alerts import AlertSpec, open_alerts, resolve_alerts

ANOMALY = "anomaly"
KNOWN = ("temperature", "humidity", "voltage", "memory_free")

STATE_COLUMNS = (
    "count", "min", "max", "last_value", "last_ts", "n", "mean", "var", "anomalous", "normal_run",
    "outlier_run", "run_mean", "run_m2", "last_z",
)  # fmt: skip
_TYPES = (
    "int8", "float8", "float8", "float8", "timestamptz", "int8", "float8", "float8", "bool", "int4",
    "int4", "float8", "float8", "float8",
)  # fmt: skip

LOCK = f"""
SELECT device_id, metric, {", ".join(STATE_COLUMNS)} FROM telemetry_stats
WHERE device_id = ANY($1::text[]) ORDER BY device_id, metric FOR UPDATE
"""

_U = ", ".join(f"${i + 4}::{t}[]" for i, t in enumerate(_TYPES))
WRITE = f"""
WITH u AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::bool[], {_U})
        AS u(device_id, metric, created, {", ".join(STATE_COLUMNS)})
), up AS (
    UPDATE telemetry_stats s SET {", ".join(f"{c} = u.{c}" for c in STATE_COLUMNS)}, updated_at = now()
    FROM u WHERE NOT u.created AND s.device_id = u.device_id AND s.metric = u.metric
), ins AS (
    INSERT INTO telemetry_stats (device_id, metric, {", ".join(STATE_COLUMNS)})
    SELECT device_id, metric, {", ".join(STATE_COLUMNS)} FROM u WHERE u.created
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
        chosen = [states[k] for k in keys]
        cols: list[list[Any]] = [[k[0] for k in keys], [k[1] for k in keys], [k in created for k in keys]]
        cols.extend([getattr(s, c) for s in chosen] for c in STATE_COLUMNS)
        inserted = await conn.fetchval(WRITE, *cols)
        if inserted != len(created):
            raise StatsRaced(f"{len(created) - inserted} stats rows were created meanwhile by another writer")


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
