"""One-minute and one-hour rollups of telemetry, kept by a sweep from the raw rows.

Nothing happens per message or per batch: every ROLLUP_INTERVAL_SECONDS one replica (advisory
lock, see jobs.py) aggregates the rows received since its watermark (`received_at`, through the
BRIN index) per device and minute, and merges them into the minute rollups (counts and sums add,
min and max take the extremes) and, summed by hour, into the hour rollups, in one statement. Each
raw row is counted by exactly one sweep, the one whose window holds its
received_at: a late sample lands in its (old) bucket, a redelivered one is stored once by the
writer's ON CONFLICT and so counted once. So a rollup is what a GROUP BY over the raw rows says.

The watermark trails the clock by ROLLUP_SETTLE_SECONDS: a row is stamped `received_at` when the
service receives the message, and committed a little later (the writer's batch, its backlog). A
row committed more than that after it was received would be missed (as it was when a touched minute
was recomputed from its raw rows: its minute is complete by then, so no later row touches it).
A bucket whose raw rows retention has dropped (before `raw_complete_from`) is never swept again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

log = logging.getLogger(__name__)

METRICS = ("temperature", "humidity", "voltage", "memory_free")
# date_bin's origin everywhere (the API's buckets too), so minutes and hours nest in any bucket.
ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
LEVELS = {MINUTE: "telemetry_rollup_1m", HOUR: "telemetry_rollup_1h"}

_COLUMNS = ["n"] + [f"{m}_{p}" for m in METRICS for p in ("count", "sum", "min", "max")]
_SET = ", ".join(f"{c} = EXCLUDED.{c}" for c in _COLUMNS)
# Changed rows only: a bucket recomputed to the same figures costs no new row version.
_CHANGED = " OR ".join(f"r.{c} IS DISTINCT FROM EXCLUDED.{c}" for c in _COLUMNS)


def combined_aggregates(prefix: str = "m.") -> str:
    return ", ".join(
        f"sum({prefix}{m}_count), sum({prefix}{m}_sum), min({prefix}{m}_min), max({prefix}{m}_max)" for m in METRICS
    )


def _raw_partials(prefix: str = "") -> str:
    return ", ".join(
        f"count({prefix}{m}) AS {m}_count, sum({prefix}{m}) AS {m}_sum, min({prefix}{m}) AS {m}_min, "
        f"max({prefix}{m}) AS {m}_max"
        for m in METRICS
    )


_UPSERT = f"ON CONFLICT (device_id, bucket) DO UPDATE SET {_SET} WHERE {_CHANGED}"

# The rows received since the last sweep, per device and minute, merged into the minute rollups
# and, summed by hour, into the hour rollups: a raw row is read once, by the sweep whose window
# holds its received_at (recomputing each touched minute from all its raw rows read a filling
# minute again at every sweep: at a 2 s interval, each row about 15 times). Counts and sums add
# up, min and max take the extremes (least and greatest ignore NULLs; a sum is NULL only while its
# count is 0).
_MERGE = ", ".join(
    ["n = r.n + EXCLUDED.n"]
    + [
        f"{m}_count = r.{m}_count + EXCLUDED.{m}_count, "
        f"{m}_sum = coalesce(r.{m}_sum + EXCLUDED.{m}_sum, r.{m}_sum, EXCLUDED.{m}_sum), "
        f"{m}_min = least(r.{m}_min, EXCLUDED.{m}_min), {m}_max = greatest(r.{m}_max, EXCLUDED.{m}_max)"
        for m in METRICS
    ]
)
_MINUTES = f"""
WITH d AS MATERIALIZED (
    SELECT device_id, date_bin('1 minute', ts, :origin) AS bucket, count(*) AS n, {_raw_partials()}
    FROM telemetry
    WHERE received_at > :lo AND received_at <= :hi AND ts >= :complete
    GROUP BY 1, 2
), m AS (
    INSERT INTO telemetry_rollup_1m AS r (device_id, bucket, {", ".join(_COLUMNS)})
    SELECT device_id, bucket, {", ".join(_COLUMNS)} FROM d
    ON CONFLICT (device_id, bucket) DO UPDATE SET {_MERGE}
    RETURNING 1
), h AS (
    INSERT INTO telemetry_rollup_1h AS r (device_id, bucket, {", ".join(_COLUMNS)})
    SELECT device_id, date_bin('1 hour', bucket, :origin), sum(n), {combined_aggregates("")}
    FROM d
    GROUP BY 1, 2
    ON CONFLICT (device_id, bucket) DO UPDATE SET {_MERGE}
    RETURNING 1
)
SELECT (SELECT count(*) FROM m), (SELECT count(*) FROM h)
"""

# The first sweep (nothing rolled up yet, as after the migration): one pass over everything.
_ALL_MINUTES = f"""
INSERT INTO telemetry_rollup_1m AS r (device_id, bucket, {", ".join(_COLUMNS)})
SELECT device_id, date_bin('1 minute', ts, :origin), count(*), {_raw_partials()}
FROM telemetry
WHERE ts >= :complete
GROUP BY 1, 2
{_UPSERT}
"""

_ALL_HOURS = f"""
INSERT INTO telemetry_rollup_1h AS r (device_id, bucket, {", ".join(_COLUMNS)})
SELECT device_id, date_bin('1 hour', bucket, :origin), sum(n), {combined_aggregates("")}
FROM telemetry_rollup_1m
WHERE bucket >= :complete
GROUP BY 1, 2
{_UPSERT}
"""


@dataclass(frozen=True)
class Sweep:
    received_through: datetime
    minutes: int
    hours: int


@dataclass(frozen=True)
class State:
    received_through: datetime
    raw_complete_from: datetime


async def state(conn: AsyncConnection, *, lock: bool = False) -> State | None:
    result = await conn.execute(
        text(
            "SELECT received_through, raw_complete_from FROM telemetry_rollup_state WHERE id = 1"
            + (" FOR UPDATE" if lock else "")
        )
    )
    row = result.first()
    return State(aware(row[0]), aware(row[1])) if row else None


def aware(value: datetime) -> datetime:
    # asyncpg reads '-infinity' as a naive datetime.min (and writes an aware one back as '-infinity').
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


NEVER = datetime.min.replace(tzinfo=UTC)


def floor(t: datetime, level: timedelta) -> datetime:
    return ORIGIN + ((t - ORIGIN) // level) * level


def ceil(t: datetime, level: timedelta) -> datetime:
    low = floor(t, level)
    return low if low == t else low + level


async def sweep(conn: AsyncConnection, settle: float, now: datetime | None = None) -> Sweep | None:
    """Roll up what was received since the last sweep, in one transaction; None if nothing to do."""
    hi = (now or datetime.now(UTC)) - timedelta(seconds=settle)
    async with conn.begin():
        current = await state(conn, lock=True)
        if current is None or hi <= current.received_through:
            return None
        params = {"origin": ORIGIN, "lo": current.received_through, "hi": hi, "complete": current.raw_complete_from}
        if current.received_through == NEVER:
            minutes = (await conn.execute(text(_ALL_MINUTES), params)).rowcount or 0
            hours = (await conn.execute(text(_ALL_HOURS), params)).rowcount or 0
        else:
            # Small, index-driven statements: JIT compiling (which their estimates can trigger)
            # would cost more than running them. The window's groups (devices by minutes) are few:
            # hashed, never sorted, whatever the estimate (one of a table just truncated or filled
            # picks a sort of every row, spilling to disk: twice the time, measured).
            await conn.execute(text("SET LOCAL jit = off"))
            await conn.execute(text("SET LOCAL enable_sort = off"))
            # The window's partials, merged into their minutes and into their hours alike (an
            # hour is the sum of its minutes, so of the partials merged into them): the raw rows
            # are read once and the minutes not at all (recomputing the touched hours from their
            # minutes read up to 60 rows per device and hour at every sweep).
            minutes, hours = (await conn.execute(text(_MINUTES), params)).one()
        await conn.execute(
            text("UPDATE telemetry_rollup_state SET received_through = :hi, swept_at = now() WHERE id = 1"),
            {"hi": hi},
        )
    if minutes or hours:
        log.debug("rollups: %d minute and %d hour buckets rewritten through %s", minutes, hours, hi.isoformat())
    return Sweep(hi, minutes, hours)
