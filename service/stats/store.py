"""Statistics of the rows a batch inserted, in the batch's own transaction (docs/statistics.md).

One `telemetry_stats` row per device: its metric names (`metrics`, text[]) and their states, K
float8 each in that order, packed in one bytea (`state`, little-endian; service/stats/ewma.py has
the fields). A message touches one row, not one per metric, and a row costs one value to send and
one to read (parameter arrays cost asyncpg about 0.17 µs a value: 16 floats per metric sent as
arrays cost more than the statistics themselves).

One statement per batch with telemetry in the steady state, two when a device is new to the process:

1. LOCK (only for a batch with a device this process holds no state of): the stored rows of all the
   batch's devices, locked. It runs after every other statement of the batch, so a writer that
   holds stats rows waits for nothing but other stats writers (and the anomaly alerts, which only
   they touch).
2. WRITE: the new rows of the devices (UPDATE; the names only when they grew, else NULL: kept) and
   of new devices (INSERT, in device order). A row another writer created since step 1 (both saw
   the device for the first time) is not overwritten: it is missing from what the statement
   returns, and the batch is written again (StatsRaced), this time finding the row to lock.

Both take the transaction-level advisory lock STATS_LOCK (per schema) before any stats row: the
writers of statistics take turns, from their first stats statement to their commit. They would
anyway: with a shared subscription every batch has most devices, and their rows' locks would
serialise the writers just the same. The advisory lock makes the row locks needless in WRITE
(half its work in PostgreSQL: no lock written per row, measured 4.9 against 7.6 ms for 500 rows)
and leaves no lock order to keep, so no deadlock between replicas.

Without step 1 the states come from the process's cache: each row as this process last wrote it,
with the row version's `xmin` (the id of the transaction that wrote it) returned by that write.
WRITE updates only the rows whose `xmin` is still the cached one: a row is unchanged exactly when
its version is the one we wrote, whatever happened since (a rolled-back batch's id is never a live
row's xmin, so a cache entry of a batch that did not commit is simply stale). The statement's
snapshot may predate a writer that committed while we waited for the advisory lock; its
UPDATE then finds that writer's version (READ COMMITTED re-checks an updated row against its
newest version), whose xmin is not ours. A row that another writer (a replica, a replay) changed
is read as it is now (CURRENT, under the advisory lock), its devices' samples are folded again
from it and written by a second WRITE in the same transaction. A cached row that is gone
(deleted) has the batch written again (StatsRaced), through step 1.

In between, the batch's states are one NumPy matrix (a row per metric, decoded from the bytea
rows in one piece) and its samples are folded into it by service/stats/fold.py: arrays over all
the batch's metrics at once rather than a Python call per sample.

Then, only for a batch whose samples opened, continued or ended an anomaly, the alert statements of
service/watch/alerts.py (with their outbox rows).

Only inserted rows come here (the writer knows them: COPY stores all of a batch or fails, and the
ON CONFLICT statement returns what it stored), so a redelivered message changes nothing.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import chain
from operator import itemgetter
from typing import Any

import asyncpg
import numpy as np
import numpy.typing as npt

from service import metrics
from service.notify.outbox import Outbox
from service.stats.ewma import (
    ANOMALOUS,
    ANOMALOUS_FLAG,
    FRESH,
    LAST_Z,
    OPENED,
    REF_DEVIATION,
    REF_MEAN,
    RESOLVED,
    K,
    Params,
    observe,
)
from service.stats.fold import fold
from service.storage.statements import TELEMETRY_FIXED
from service.watch.alerts import AlertSpec, change_alerts

ANOMALY = "anomaly"
KNOWN = ("temperature", "humidity", "voltage", "memory_free")
SEPARATOR = "\x1f"  # between metric names in the WRITE parameter (never inside one: see _numbers)

# A transaction-level advisory lock of two int4 keys (a space apart from the service's int8 job
# locks): "au" and 3, and the schema (services in two schemas of one database do not wait for each
# other).
STATS_LOCK = "pg_advisory_xact_lock(1635057667, hashtext(current_schema()))"

# The advisory lock first (`g` is joined, so no row is read before it is held), then the rows,
# locked as well: the statement's snapshot may predate the writer we waited for, and FOR UPDATE
# returns a row's newest version.
LOCK = f"""
WITH g AS MATERIALIZED (SELECT {STATS_LOCK})
SELECT device_id, metrics, state FROM telemetry_stats, g WHERE device_id = ANY($1::text[])
ORDER BY device_id FOR UPDATE OF telemetry_stats
"""

# $5: per device the xmin of the cached row (NULL: locked by LOCK, or created). Rows: each row
# written (device_id, its new xmin). A device missing from them was changed by another writer
# (its xmin is not $5's), or is gone, or was created by another writer.
WRITE = f"""
WITH g AS MATERIALIZED (SELECT {STATS_LOCK}), u AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bool[], $5::int8[])
                  AS u(device_id, metrics, state, created, seen)
), up AS (
    UPDATE telemetry_stats s
    SET metrics = coalesce(string_to_array(u.metrics, chr(31)), s.metrics), state = u.state, updated_at = now()
    FROM u, g
    WHERE NOT u.created AND s.device_id = u.device_id AND (u.seen IS NULL OR s.xmin::text::int8 = u.seen)
    RETURNING s.device_id, s.xmin::text::int8 AS x
), ins AS (
    INSERT INTO telemetry_stats (device_id, metrics, state)
    SELECT device_id, string_to_array(metrics, chr(31)), state FROM u, g WHERE u.created ORDER BY device_id
    ON CONFLICT (device_id) DO NOTHING
    RETURNING device_id, xmin::text::int8 AS x
)
SELECT device_id, x FROM up UNION ALL SELECT device_id, x FROM ins
"""

# The rows of cached devices WRITE did not write, as they are now: read under the advisory lock,
# in a statement of its own (a snapshot after the other writer's commit), locked against a delete.
CURRENT = """
SELECT device_id, xmin::text::int8 AS x, metrics, state FROM telemetry_stats WHERE device_id = ANY($1::text[])
ORDER BY device_id FOR UPDATE
"""

# Devices whose rows the cache holds at most (each 128 bytes a metric): past it, it starts afresh.
CACHE_DEVICES = 50_000

# Little-endian float8s (array unpacks them faster than struct; the writer uses NumPy).
# Batches of at most this many rows are folded sample by sample (Stats._fold_scalar).
SMALL_BATCH = 32  # where the two cost the same (bench/stats_micro.py with batches of 24 and 48)
_SWAP = sys.byteorder != "little"


def unpack(state: bytes) -> list[float]:
    a = array("d")
    a.frombytes(state)
    if _SWAP:
        a.byteswap()
    return a.tolist()


def pack(state: list[float]) -> bytes:
    a = array("d", state)
    if _SWAP:
        a.byteswap()
    return a.tobytes()


class StatsRaced(Exception):
    """Another writer created a stats row this batch creates too: the batch is written again."""


class Stats:
    def __init__(self, outbox: Outbox, params: Params | None = None, *, max_metrics: int = 16) -> None:
        self._outbox = outbox
        self.params = params or Params()
        self._alpha = self.params.alpha
        self._max_metrics = max_metrics
        # device -> (metrics, state, xmin) as this process last wrote the row (see the module's docstring)
        self._cache: dict[str, tuple[list[str], bytes, int]] = {}

    async def apply(
        self, conn: asyncpg.Connection, rows: Sequence[Sequence[Any]], ahead: Folded | None = None
    ) -> None:
        """Fold inserted telemetry rows (device_id, ts, temperature, humidity, voltage, memory_free,
        extra JSON text, ...) into the stored statistics, inside the caller's transaction.
        `ahead`: these rows' fold_ahead(), if the caller ran it."""
        if not rows:
            return
        if ahead is not None and ahead.rows is rows:
            batch, opened, ended = ahead.batch, ahead.opened, ahead.ended
        else:
            devices = sorted(set(map(_device, rows)))
            cached = self._cached(devices)
            batch = cached if cached is not None else Batch(devices, await conn.fetch(LOCK, devices))
            opened, ended = self.fold(batch, rows)
        changed = await self._write(conn, batch)
        if changed:
            # Another writer moved these rows on since we cached them: fold their samples again
            # from the rows as they are now (read and locked by CURRENT).
            again = {r[0] for r in changed}
            opened = [a for a in opened if a.device_id not in again]
            ended = [e for e in ended if e[0] not in again]
            batch = Batch(sorted(again), sorted((r[0], r[2], r[3]) for r in changed))
            more = self.fold(batch, [r for r in rows if r[0] in again])
            opened += more[0]
            ended = sorted([*ended, *more[1]])
            await self._write(conn, batch)
        # Opened (or bumped) first, then ended: an anomaly that began and ended within the batch
        # is opened and resolved (both notified), as it would be over two batches.
        await change_alerts(conn, self._outbox, opened, ended)

    def fold_ahead(self, rows: Sequence[Sequence[Any]], fixed: bytes | None = None) -> Folded | None:
        """apply()'s fold, before the rows are stored: the writer runs it while PostgreSQL takes
        the batch's COPY (which stores every row or none), not after it. Only when every device's
        row is cached (the steady state): otherwise the fold needs the rows LOCK reads. Nothing
        but the returned batch changes; WRITE still checks each cached row's version. `fixed`:
        the rows' fixed parts as the COPY packed them (statements.telemetry_copy_pieces), if
        there is one for every row: their samples are read from it."""
        cached = self._cached(sorted(set(map(_device, rows))))
        if cached is None:
            return None
        return Folded(rows, cached, *self.fold(cached, rows, fixed))

    def _cached(self, devices: list[str]) -> Batch | None:
        cache = self._cache
        if not all(d in cache for d in devices):
            return None
        return Batch(devices, [(d, *cache[d][:2]) for d in devices], seen=[cache[d][2] for d in devices])

    def fold(
        self, batch: Batch, rows: Sequence[Sequence[Any]], fixed: bytes | None = None
    ) -> tuple[list[AlertSpec], list[tuple[str, str, str]]]:
        """The Python side of apply(): fold the rows into the batch's states; returns the alerts to
        open (or bump) and to resolve. `fixed`: see fold_ahead()."""
        if len(rows) <= SMALL_BATCH:
            return self._fold_scalar(batch, rows)
        return self._fold_vector(batch, rows, fixed)

    def _fold_vector(
        self, batch: Batch, rows: Sequence[Sequence[Any]], fixed: bytes | None = None
    ) -> tuple[list[AlertSpec], list[tuple[str, str, str]]]:
        """fold() with NumPy: arrays over all the batch's samples at once (service/stats/fold.py)."""
        n = len(rows)
        slot = batch.slot
        slots = np.fromiter(map(slot.__getitem__, map(_device, rows)), np.intp, n)
        extras = True
        if fixed is not None and len(fixed) == n * _FIXED.itemsize:
            # The COPY's own packing: rows of the common shape (every reading, no extra fields).
            packed = np.frombuffer(fixed, _FIXED)
            ts = packed["ts"].astype(np.float64) + _PG_EPOCH_US
            values = np.empty((n, len(KNOWN)), np.float64)
            for m, metric in enumerate(KNOWN):
                values[:, m] = packed[metric]
            extras = False
        else:
            ts = np.rint(np.fromiter(map(_timestamp, map(_ts, rows)), np.float64, n) * 1e6)
            # None becomes NaN; NaN and infinities are never folded in (one would poison the average).
            try:
                values = np.fromiter(chain.from_iterable(map(_known, rows)), np.float64, n * len(KNOWN))
            except TypeError:  # a None among them
                values = np.array(list(map(_known, rows)), dtype=np.float64)
            values = values.reshape(n, len(KNOWN))
        finite = np.isfinite(values)
        order = np.argsort(ts, kind="stable")  # a metric's samples in (device) time order
        extra = self._discover(batch, rows, slots, ts, finite, order, extras)
        base = batch.layout()
        columns = batch.columns[slots] + base[slots, None]
        taken = finite[order].ravel()
        series = columns[order].ravel()[taken]
        t = np.repeat(ts[order], len(KNOWN))[taken]
        x = values[order].ravel()[taken]
        if extra:
            e_slot, e_index, e_ts, e_x = zip(*extra, strict=True)
            series = np.concatenate((series, base[np.array(e_slot, np.intp)] + np.array(e_index, np.intp)))
            t = np.concatenate((t, np.array(e_ts, np.float64)))
            x = np.concatenate((x, np.array(e_x, np.float64)))
        state = batch.decode()
        codes, zs = fold(state, series, t, x, self.params, self._alpha)
        batch.encode(state)
        outliers = np.flatnonzero((codes == OPENED) | (codes == ANOMALOUS))
        resolved = np.flatnonzero(codes == RESOLVED)
        if not len(outliers) and not len(resolved):
            return [], []
        owner = np.repeat(np.arange(len(batch.devices)), batch.lengths())
        newest: dict[int, int] = {}  # metric (state row) -> its newest outlier (sample)
        for i in outliers.tolist():
            newest[int(series[i])] = i
        opened = []
        for row, i in newest.items():
            d = int(owner[row])
            metric = batch.names[d][row - int(base[d])]
            mean, dev = float(state[row, REF_MEAN]), float(state[row, REF_DEVIATION])
            opened.append(_spec(batch.devices[d], metric, float(x[i]), float(zs[i]), mean, dev))
        ended = set()
        for row in set(series[resolved].tolist()):
            if not state[row, ANOMALOUS_FLAG]:  # not opened again later in the batch
                d = int(owner[row])
                ended.add((batch.devices[d], ANOMALY, batch.names[d][row - int(base[d])]))
        return opened, sorted(ended)

    def _fold_scalar(
        self, batch: Batch, rows: Sequence[Sequence[Any]]
    ) -> tuple[list[AlertSpec], list[tuple[str, str, str]]]:
        """fold() for a few rows, sample by sample through observe(): the same samples in the same
        order (a metric's by time, arrival order on ties; new metrics named in that order), so the
        same figures and alerts, without the NumPy calls whose fixed cost (about 100 µs a batch)
        is most of a small batch's (a low message rate commits a message or two at a time)."""
        params, alpha, cap = self.params, self._alpha, self._max_metrics
        slot = batch.slot
        stamps = [float(round(_timestamp(r[1]) * 1e6)) for r in rows]  # as fold()'s np.rint(ts * 1e6)
        states: dict[int, list[float]] = {}
        known: list[tuple[int, int, float, float]] = []
        extra: list[tuple[int, int, float, float]] = []
        for i in sorted(range(len(rows)), key=stamps.__getitem__):
            row = rows[i]
            d = slot[row[0]]
            t = stamps[i]
            index = batch.index(d)
            names = batch.names[d]
            v = states.get(d)
            if v is None:
                v = states[d] = unpack(batch.states[d])
            for m, metric in enumerate(KNOWN):
                x = row[2 + m]
                if x is None or not math.isfinite(x):
                    continue
                o = index.get(metric)
                if o is None:
                    o = index[metric] = len(names)
                    names.append(metric)
                    v.extend(FRESH)
                known.append((d, o, t, float(x)))
            if row[6]:
                before = len(names)
                extra.extend((d, o, t, value) for o, value in _extra_samples(row[6], index, names, cap))
                v.extend(FRESH * (len(names) - before))
        newest: dict[tuple[int, int], tuple[float, float]] = {}  # metric -> its newest outlier (x, z)
        ended: set[tuple[int, int]] = set()
        for d, o, t, x in known + extra:
            v = states[d]
            code = observe(v, o * K, t, x, params, alpha)
            if code in (OPENED, ANOMALOUS):
                newest[d, o] = (x, v[o * K + LAST_Z])
            elif code == RESOLVED:
                ended.add((d, o))
        for d, v in states.items():
            batch.states[d] = pack(v)
        opened = []
        for (d, o), (x, z) in newest.items():
            v = states[d]
            opened.append(_spec(batch.devices[d], batch.names[d][o], x, z, v[o * K + REF_MEAN],
                                v[o * K + REF_DEVIATION]))  # fmt: skip
        resolved = {(batch.devices[d], ANOMALY, batch.names[d][o]) for d, o in ended
                    if not states[d][o * K + ANOMALOUS_FLAG]}  # fmt: skip
        return opened, sorted(resolved)

    def _discover(
        self,
        batch: Batch,
        rows: Sequence[Sequence[Any]],
        slots: npt.NDArray[np.intp],
        ts: npt.NDArray[np.float64],
        finite: npt.NDArray[np.bool_],
        order: npt.NDArray[np.intp],
        extras: bool = True,
    ) -> list[tuple[int, int, float, float]]:
        """Metrics new to their device, added in the order they come (by time), and the samples
        of extra payload fields (device slot, metric index, ts, value). Only rows of a device
        that is new, lacks a known metric or sends extra fields are looked at one by one.
        `extras` False: no row has extra fields."""
        new_known = finite & (batch.columns[slots] < 0)
        if extras:
            has_extra = np.fromiter(map(bool, map(_extra, rows)), np.bool_, len(rows))
        else:
            has_extra = np.zeros(len(rows), np.bool_)
        look = new_known.any(axis=1) | has_extra
        if not look.any():
            return []
        out: list[tuple[int, int, float, float]] = []
        cap = self._max_metrics
        for i in order[look[order]].tolist():
            d = int(slots[i])
            index = batch.index(d)  # first: it copies the stored names
            names = batch.names[d]
            for m in np.flatnonzero(new_known[i]).tolist():
                metric = KNOWN[m]
                if metric not in index:
                    index[metric] = len(names)
                    names.append(metric)
                    batch.columns[d, m] = index[metric]
            if has_extra[i]:
                t = float(ts[i])
                out.extend((d, o, t, value) for o, value in _extra_samples(rows[i][6], index, names, cap))
        return out

    async def _write(self, conn: asyncpg.Connection, batch: Batch) -> list[asyncpg.Record]:
        """WRITE the batch's rows; returns the cached rows another writer changed (as stored now:
        device_id, xmin, metrics, state)."""
        result = await conn.fetch(WRITE, batch.devices, batch.changed_names(), batch.states, batch.created, batch.seen)
        cache = self._cache
        if len(cache) >= CACHE_DEVICES:
            cache.clear()
        slot = batch.slot
        for d, x in result:
            i = slot[d]
            cache[d] = (batch.names[i], batch.states[i], x)
        if len(result) == len(batch.devices):
            return []
        written = {r[0] for r in result}
        moved = [d for d, seen in zip(batch.devices, batch.seen, strict=True) if d not in written and seen is not None]
        changed = await conn.fetch(CURRENT, moved) if moved else []
        for r in changed:
            cache.pop(r[0], None)
        if len(result) + len(changed) != len(batch.devices):
            # Rows created meanwhile by another writer, or cached rows that are gone: not written.
            for d in batch.devices:
                cache.pop(d, None)
            n = len(batch.devices) - len(result) - len(changed)
            raise StatsRaced(f"{n} stats rows were created or removed meanwhile by another writer")
        return changed


@dataclass(frozen=True, slots=True)
class Folded:
    """Stats.fold_ahead()'s answer: these rows folded into this batch, and the alerts it gives."""

    rows: Sequence[Sequence[Any]]
    batch: Batch
    opened: list[AlertSpec]
    ended: list[tuple[str, str, str]]


class Batch:
    """The stats rows of a batch's devices (in device order): names, states, and where each known
    metric is in them."""

    def __init__(
        self, devices: list[str], stored: Sequence[Sequence[Any]], seen: Sequence[int | None] | None = None
    ) -> None:
        self.devices = devices
        self.slot = {d: i for i, d in enumerate(devices)}
        if len(stored) != len(devices):  # new devices: rows to create (LOCK returns device order)
            found = {r[0]: r for r in stored}
            stored = [found.get(d) or (d, [], b"") for d in devices]
            self.created = [d not in found for d in devices]
        else:
            self.created = [False] * len(devices)
        # Per device the xmin of the cached row the states come from (None: read and locked by LOCK).
        self.seen: list[int | None] = list(seen) if seen is not None else [None] * len(devices)
        # The names as stored (asyncpg's lists): copied before a device's are extended (index()).
        self.names: list[list[str]] = [r[1] for r in stored]
        self.states: list[bytes] = [r[2] for r in stored]
        self._stored_names = [len(names) for names in self.names]
        self._index: dict[int, dict[str, int]] = {}

    @functools.cached_property
    def columns(self) -> npt.NDArray[np.intp]:
        """Where each device's known metrics are among its state rows (-1: not yet); NumPy path only."""
        columns = np.full((len(self.devices), len(KNOWN)), -1, np.intp)
        usual = [names[:4] == _KNOWN_LIST for names in self.names]
        columns[np.array(usual, dtype=np.bool_)] = _KNOWN_COLUMNS
        for d in [d for d, u in enumerate(usual) if not u]:
            names = self.names[d]
            for m, metric in enumerate(KNOWN):
                if metric in names:
                    columns[d, m] = names.index(metric)
        return columns

    def index(self, d: int) -> dict[str, int]:
        index = self._index.get(d)
        if index is None:
            names = self.names[d] = list(self.names[d])
            index = self._index[d] = {m: i for i, m in enumerate(names)}
        return index

    def lengths(self) -> list[int]:
        return [len(names) for names in self.names]

    def layout(self) -> npt.NDArray[np.intp]:
        """Each device's first state row in the batch's state matrix."""
        return np.concatenate(([0], np.cumsum(self.lengths())[:-1])).astype(np.intp)

    def decode(self) -> npt.NDArray[np.float64]:
        """All states as one matrix (a row per metric, devices in order), new metrics fresh."""
        for d in self._index:  # only devices that were looked at may have grown
            grown = len(self.names[d]) - len(self.states[d]) // _ROW
            if grown:
                self.states[d] += _FRESH_ROW * grown
        flat = np.frombuffer(b"".join(self.states), dtype="<f8")
        return flat.astype(np.float64).reshape(-1, K)  # a copy: frombuffer's is read-only

    def encode(self, state: npt.NDArray[np.float64]) -> None:
        blob = state.astype("<f8", copy=False).tobytes()
        at = 0
        states = self.states
        for d, names in enumerate(self.names):
            end = at + len(names) * _ROW
            states[d] = blob[at:end]
            at = end

    def changed_names(self) -> list[str | None]:
        """The metric names of rows whose names changed (None: keep the stored ones)."""
        return [
            SEPARATOR.join(names) if created or len(names) != stored else None
            for names, stored, created in zip(self.names, self._stored_names, self.created, strict=True)
        ]


_device = itemgetter(0)
_ts = itemgetter(1)
_known = itemgetter(2, 3, 4, 5)
_extra = itemgetter(6)
_timestamp = datetime.timestamp
_KNOWN_LIST = list(KNOWN)
_KNOWN_COLUMNS = np.arange(len(KNOWN), dtype=np.intp)
_ROW = K * 8  # bytes of a metric's state
# statements.TELEMETRY_FIXED as NumPy reads it (big-endian, unaligned): timestamps in µs since 2000.
_FIXED = np.dtype([
    ("_", ">i4"), ("ts", ">i8"), ("_t", ">i4"), ("temperature", ">f8"), ("_h", ">i4"), ("humidity", ">f8"),
    ("_v", ">i4"), ("voltage", ">f8"), ("_m", ">i4"), ("memory_free", ">i8"), ("_e", ">i4"), ("_r", ">i4"),
    ("received", ">i8"),
])  # fmt: skip
assert _FIXED.itemsize == TELEMETRY_FIXED.size
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in µs since 1970
_FRESH_ROW = np.array(FRESH, dtype="<f8").tobytes()


def _spec(device: str, metric: str, value: float, z: float, mean: float, dev: float) -> AlertSpec:
    return AlertSpec(
        device,
        ANOMALY,
        metric,
        "warning",
        f"{metric} {value:g} is {z:.1f} deviations from its average {mean:g}",
        {"value": value, "average": mean, "deviation": dev, "z": round(z, 3)},
    )


def _extra_samples(extra: str, index: dict[str, int], names: list[str], cap: int) -> list[tuple[int, float]]:
    """(metric index, value) of a row's extra numeric fields; names new to the device are added
    while it has fewer than `cap` metrics (the rest are counted and dropped)."""
    out = []
    for metric, value in _numbers(extra):
        o = index.get(metric)
        if o is None:
            if len(names) >= cap:
                metrics.ERRORS.labels("stats_metric_dropped").inc()
                continue
            o = index[metric] = len(names)
            names.append(metric)
        out.append((o, value))
    return out


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
