"""Statistics of the rows a batch inserted, in the batch's own transaction (docs/statistics.md).

One `telemetry_stats` row per device: its metric names (`metrics`, text[]) and their states, K
float8 each in that order, packed in one bytea (`state`, little-endian; service/stats/ewma.py has
the fields). A message touches one row, not one per metric, and a row costs one value to send and
one to read (parameter arrays cost asyncpg about 0.17 µs a value: 16 floats per metric sent as
arrays cost more than the statistics themselves).

Two statements per batch with telemetry, whatever the number of devices:

1. LOCK: the stored rows of the batch's devices, locked in device_id order (two writers of the same
   devices lock them in the same order: no deadlock). It runs after every other statement of the
   batch, so a writer that holds stats rows waits for nothing but other stats rows (and the anomaly
   alerts, which only holders of the device's stats row touch).
2. WRITE: the new rows of the devices read (UPDATE) and of new devices (INSERT, in device order). A
   row another writer created since step 1 (both saw the device for the first time) is not
   overwritten: the statement reports it and the batch is written again (StatsRaced), this time
   finding the row to lock.

Then, only for a batch whose samples opened, continued or ended an anomaly, the alert statements of
service/watch/alerts.py (with their outbox rows).

Only inserted rows come here (the writer knows them: COPY stores all of a batch or fails, and the
ON CONFLICT statement returns what it stored), so a redelivered message changes nothing.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from array import array
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any

import asyncpg

from service import metrics
from service.notify.outbox import Outbox
from service.stats.ewma import (
    FRESH,
    LAST_VALUE,
    LAST_Z,
    REF_DEVIATION,
    REF_MEAN,
    RESOLVED,
    K,
    Params,
    observe,
)
from service.watch.alerts import AlertSpec, open_alerts, resolve_alerts

ANOMALY = "anomaly"
KNOWN = ("temperature", "humidity", "voltage", "memory_free")
_KNOWN_AT = tuple(enumerate(KNOWN, start=2))  # (row index, metric)
SEPARATOR = "\x1f"  # between metric names in the WRITE parameter (never inside one: see _numbers)

LOCK = """
SELECT device_id, metrics, state FROM telemetry_stats WHERE device_id = ANY($1::text[]) ORDER BY device_id FOR UPDATE
"""

WRITE = """
WITH u AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bool[]) AS u(device_id, metrics, state, created)
), up AS (
    UPDATE telemetry_stats s SET metrics = string_to_array(u.metrics, chr(31)), state = u.state, updated_at = now()
    FROM u WHERE NOT u.created AND s.device_id = u.device_id
), ins AS (
    INSERT INTO telemetry_stats (device_id, metrics, state)
    SELECT device_id, string_to_array(metrics, chr(31)), state FROM u WHERE u.created ORDER BY device_id
    ON CONFLICT (device_id) DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM ins
"""

_by_device_ts = itemgetter(0, 1)
_LOW, _HIGH = -math.inf, math.inf
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_indexes: dict[tuple[str, ...], dict[str, int]] = {}
_MAX_INDEXES = 1024


# Little-endian float8s: struct packs a list faster than array() takes one, array unpacks faster.
_SWAP = sys.byteorder != "little"
_packers: dict[int, Callable[..., bytes]] = {}


def _pack(values: list[float]) -> bytes:
    n = len(values)
    pack = _packers.get(n)
    if pack is None:
        pack = _packers[n] = struct.Struct(f"<{n}d").pack
    return pack(*values)


def unpack(state: bytes) -> list[float]:
    a = array("d")
    a.frombytes(state)
    if _SWAP:
        a.byteswap()
    return a.tolist()


class StatsRaced(Exception):
    """Another writer created a stats row this batch creates too: the batch is written again."""


class _Device:
    __slots__ = ("created", "index", "names", "values")

    def __init__(self, names: list[str], values: list[float], created: bool) -> None:
        self.names = names
        # Devices share their few sets of metrics: the offsets are built once per set (copied, as a
        # device that gains a metric extends its own).
        key = tuple(names)
        index = _indexes.get(key)
        if index is None:
            if len(_indexes) >= _MAX_INDEXES:
                _indexes.clear()  # devices inventing field names: start over rather than grow
            index = _indexes[key] = {m: i * K for i, m in enumerate(names)}
        self.index = dict(index)
        self.values = values
        self.created = created


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
        book: dict[str, _Device] = {}
        for r in await conn.fetch(LOCK, sorted({r[0] for r in rows})):
            book[r[0]] = _Device(list(r[1]), unpack(r[2]), False)
        opened: dict[tuple[str, str], AlertSpec] = {}
        ended: set[tuple[str, str]] = set()
        p, alpha, cap = self.params, self._alpha, self._max_metrics
        epoch, us = _EPOCH, _US
        for row in sorted(rows, key=_by_device_ts):
            device = row[0]
            d = book.get(device)
            if d is None:
                d = book[device] = _Device([], [], True)
            ts = float((row[1] - epoch) // us)
            # Not None, NaN or infinite (-inf < NaN is false): one such sample would poison the average.
            samples = [(m, row[i]) for i, m in _KNOWN_AT if row[i] is not None and _LOW < row[i] < _HIGH]
            if row[6]:
                samples.extend(_numbers(row[6]))
            index, values = d.index, d.values
            for metric, value in samples:
                o = index.get(metric)
                if o is None:
                    if metric not in KNOWN and len(d.names) >= cap:
                        metrics.ERRORS.labels("stats_metric_dropped").inc()
                        continue
                    o = index[metric] = len(values)
                    d.names.append(metric)
                    values.extend(FRESH)
                change = observe(values, o, ts, float(value), p, alpha)
                if change and change != RESOLVED:  # OPENED or ANOMALOUS
                    opened[device, metric] = _spec(device, metric, values, o)  # the newest outlier's figures
                elif change == RESOLVED:
                    ended.add((device, metric))
        await self._write(conn, book)
        # Opened (or bumped) first, then ended: an anomaly that began and ended within the batch
        # is opened and resolved (both notified), as it would be over two batches.
        if opened:
            await open_alerts(conn, self._outbox, list(opened.values()))
        resolve = [(k[0], ANOMALY, k[1]) for k in sorted(ended) if not _anomalous(book[k[0]], k[1])]
        if resolve:
            await resolve_alerts(conn, self._outbox, resolve)

    async def _write(self, conn: asyncpg.Connection, book: dict[str, _Device]) -> None:
        devices = sorted(book)
        chosen = [book[d] for d in devices]
        created = sum(1 for d in chosen if d.created)
        inserted = await conn.fetchval(
            WRITE,
            devices,
            [SEPARATOR.join(d.names) for d in chosen],
            [_pack(d.values) for d in chosen],
            [d.created for d in chosen],
        )
        if inserted != created:
            raise StatsRaced(f"{created - inserted} stats rows were created meanwhile by another writer")


def _anomalous(d: _Device, metric: str) -> bool:
    return bool(d.values[d.index[metric] + 8])


def _spec(device: str, metric: str, v: list[float], o: int) -> AlertSpec:
    z, value, mean, dev = v[o + LAST_Z], v[o + LAST_VALUE], v[o + REF_MEAN], v[o + REF_DEVIATION]
    return AlertSpec(
        device,
        ANOMALY,
        metric,
        "warning",
        f"{metric} {value:g} is {z:.1f} deviations from its average {mean:g}",
        {"value": value, "average": mean, "deviation": dev, "z": round(z, 3)},
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
        if isinstance(v, int | float)
        and not isinstance(v, bool)
        and math.isfinite(v)
        and k
        and k not in KNOWN
        and SEPARATOR not in k
    ]
