"""Read queries for the HTTP API (SQL kept here, next to the tables it reads).

Each takes the request's session; parameters are always bound, and the only SQL put together from
text is fixed fragments chosen by the code (never by a request).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from service.history import rollups
from service.storage import statements

METRICS = rollups.METRICS
_DEVICE_COLUMNS = statements.device_columns("")
DEVICE_SORTS = {"device_id": "device_id", "last_seen": "last_seen", "-last_seen": "last_seen DESC"}


async def _rows(session: AsyncSession, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    result = await session.execute(text(sql), params)
    return [dict(r) for r in result.mappings()]


async def device_page(
    session: AsyncSession,
    *,
    online: bool | None,
    seen_since: datetime | None,
    q: str | None,
    sort: str,
    limit: int,
    offset: int,
    known: bool | None = None,
) -> tuple[list[dict[str, Any]], int]:
    where: list[str] = ["true"]
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    if known is not None:
        where.append("known = :known")
        params["known"] = known
    if online is not None:
        where.append("is_online IS NOT DISTINCT FROM :online")
        params["online"] = online
    if seen_since is not None:
        where.append("last_seen >= :since")
        params["since"] = seen_since
    if q:
        where.append("strpos(lower(device_id), lower(:q)) > 0")
        params["q"] = q
    cond = " AND ".join(where)
    order = DEVICE_SORTS[sort]
    rows = await _rows(
        session,
        f"SELECT {_DEVICE_COLUMNS}, count(*) OVER () AS total FROM devices WHERE {cond} "
        f"ORDER BY {order}, device_id LIMIT :limit OFFSET :offset",
        params,
    )
    if rows:
        total = int(rows[0]["total"])
    else:
        total = int((await _rows(session, f"SELECT count(*) AS n FROM devices WHERE {cond}", params))[0]["n"])
    for r in rows:
        r.pop("total", None)
    return rows, total


async def device(session: AsyncSession, device_id: str) -> dict[str, Any] | None:
    rows = await _rows(session, f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE device_id = :d", {"d": device_id})
    return rows[0] if rows else None


async def latest_telemetry(session: AsyncSession, device_id: str) -> dict[str, Any] | None:
    rows = await _rows(
        session,
        "SELECT ts, temperature, humidity, voltage, memory_free, extra, received_at "
        "FROM telemetry WHERE device_id = :d ORDER BY ts DESC LIMIT 1",
        {"d": device_id},
    )
    return rows[0] if rows else None


async def relays(session: AsyncSession, device_id: str) -> list[dict[str, Any]]:
    return await _rows(
        session,
        "SELECT relay_index, state, triggered_by, ts FROM relays WHERE device_id = :d ORDER BY relay_index",
        {"d": device_id},
    )


async def relay_exists(session: AsyncSession, device_id: str, relay: int) -> bool:
    rows = await _rows(
        session, "SELECT 1 AS one FROM relays WHERE device_id = :d AND relay_index = :r", {"d": device_id, "r": relay}
    )
    return bool(rows)


def _window(params: dict[str, Any], start: datetime | None, end: datetime | None) -> str:
    cond = ""
    if start is not None:
        cond += " AND ts >= :start"
        params["start"] = start
    if end is not None:
        cond += " AND ts < :end"
        params["end"] = end
    return cond


async def telemetry(
    session: AsyncSession, device_id: str, start: datetime | None, end: datetime | None, limit: int
) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"d": device_id, "limit": limit}
    cond = _window(params, start, end)
    return await _rows(
        session,
        "SELECT ts, temperature, humidity, voltage, memory_free, extra, received_at "
        f"FROM telemetry WHERE device_id = :d{cond} ORDER BY ts LIMIT :limit",
        params,
    )


def _raw_bucket_columns() -> str:
    # avg as sum / count (not avg()): the same arithmetic as over the rollups' sums and counts.
    return ", ".join(
        f"(sum({m})::float8 / nullif(count({m}), 0)) AS {m}_avg, min({m})::float8 AS {m}_min, "
        f"max({m})::float8 AS {m}_max, count({m}) AS {m}_count"
        for m in METRICS
    )


async def telemetry_buckets(
    session: AsyncSession,
    device_id: str,
    width: timedelta,
    start: datetime | None,
    end: datetime | None,
    limit: int,
    *,
    use_rollups: bool = True,
) -> list[dict[str, Any]]:
    """Per bucket of `width` (date_bin, origin 2000-01-01Z): row count and per metric avg/min/max/count.

    From the rollups when `width` is a whole number of minutes (or hours) and they have been swept,
    else from the raw rows; the figures are the same either way (see telemetry_buckets_rolled_up).
    """
    level = rollups.HOUR if width % rollups.HOUR == timedelta(0) else rollups.MINUTE
    if use_rollups and width % level == timedelta(0):
        result = await session.execute(text("SELECT received_through, raw_complete_from FROM telemetry_rollup_state"))
        row = result.first()
        if row is not None and rollups.aware(row[0]) > rollups.NEVER:
            swept = rollups.State(rollups.aware(row[0]), rollups.aware(row[1]))
            rolled = await telemetry_buckets_rolled_up(session, device_id, width, level, swept, start, end, limit)
            if rolled is not None:
                return rolled
    params: dict[str, Any] = {"d": device_id, "limit": limit, "width": width, "origin": rollups.ORIGIN}
    cond = _window(params, start, end)
    return await _rows(
        session,
        f"SELECT date_bin(:width, ts, :origin) AS start, count(*) AS n, {_raw_bucket_columns()} "
        f"FROM telemetry WHERE device_id = :d{cond} GROUP BY 1 ORDER BY 1 LIMIT :limit",
        params,
    )


def _raw_partials(source: str, where: str) -> str:
    partials = ", ".join(
        f"count(t.{m}) AS {m}_count, sum(t.{m})::float8 AS {m}_sum, min(t.{m}) AS {m}_min, max(t.{m}) AS {m}_max"
        for m in METRICS
    )
    return (
        f"SELECT date_bin(:width, t.ts, :origin) AS start, count(*) AS n, {partials} "
        f"FROM {source} WHERE {where} GROUP BY 1"
    )


async def telemetry_buckets_rolled_up(
    session: AsyncSession,
    device_id: str,
    width: timedelta,
    level: timedelta,
    swept: rollups.State,
    start: datetime | None,
    end: datetime | None,
    limit: int,
) -> list[dict[str, Any]] | None:
    """Buckets from the rollups of `level` (which divides `width`), exact against the raw rows.

    Level buckets entirely inside [start, end) come from the rollup table, except the "dirty" ones
    holding a row received after the last sweep (late samples, the not-yet-swept tail): those, and
    the partial level buckets at the ends of the window, are aggregated from the raw rows. The
    partial figures (counts, sums, min, max) then combine per requested bucket.
    None when the window holds no whole level bucket (the caller reads the raw rows).
    """
    a = rollups.ceil(start, level) if start is not None else None
    b = rollups.floor(end, level) if end is not None else None
    if a is not None and b is not None and a >= b:
        return None
    table = rollups.LEVELS[level]
    params: dict[str, Any] = {
        "d": device_id, "limit": limit, "width": width, "level": level, "origin": rollups.ORIGIN,
        "wm": swept.received_through, "complete": swept.raw_complete_from,
    }  # fmt: skip
    inside = ""
    if a is not None:
        inside += " AND {c} >= :a"
        params["a"] = a
    if b is not None:
        inside += " AND {c} < :b"
        params["b"] = b
    parts = [
        "SELECT date_bin(:width, m.bucket, :origin) AS start, sum(m.n) AS n, "
        + ", ".join(
            f"sum(m.{m}_count) AS {m}_count, sum(m.{m}_sum) AS {m}_sum, min(m.{m}_min) AS {m}_min, "
            f"max(m.{m}_max) AS {m}_max"
            for m in METRICS
        )
        + f" FROM {table} m WHERE m.device_id = :d{inside.format(c='m.bucket')}"
        " AND m.bucket NOT IN (SELECT bucket FROM dirty) GROUP BY 1",
        # Each dirty bucket by an index range scan of its own (LATERAL, aggregated inside so the
        # planner cannot flatten it into a scan of the device's whole window).
        "SELECT date_bin(:width, k.bucket, :origin) AS start, sum(a.n) AS n, "
        + ", ".join(
            f"sum(a.{m}_count) AS {m}_count, sum(a.{m}_sum) AS {m}_sum, min(a.{m}_min) AS {m}_min, "
            f"max(a.{m}_max) AS {m}_max"
            for m in METRICS
        )
        + " FROM dirty k CROSS JOIN LATERAL (SELECT count(*) AS n, "
        + ", ".join(
            f"count(t.{m}) AS {m}_count, sum(t.{m})::float8 AS {m}_sum, min(t.{m}) AS {m}_min, max(t.{m}) AS {m}_max"
            for m in METRICS
        )
        + " FROM telemetry t WHERE t.device_id = :d AND t.ts >= k.bucket AND t.ts < k.bucket + :level) a"
        " GROUP BY 1",
    ]
    if a is not None and start is not None and start < a:
        params["s"] = start
        parts.append(_raw_partials("telemetry t", "t.device_id = :d AND t.ts >= :s AND t.ts < :a"))
    if b is not None and end is not None and b < end:
        params["e"] = end
        parts.append(_raw_partials("telemetry t", "t.device_id = :d AND t.ts >= :b AND t.ts < :e"))
    union = " UNION ALL ".join(parts)
    combined = ", ".join(
        f"(sum({m}_sum) / nullif(sum({m}_count), 0)) AS {m}_avg, min({m}_min)::float8 AS {m}_min, "
        f"max({m}_max)::float8 AS {m}_max, sum({m}_count)::bigint AS {m}_count"
        for m in METRICS
    )
    # Rows received after the watermark: found through the BRIN index on received_at alone (the
    # `|| ''` keeps the planner from also walking the device's whole window in the primary key,
    # which costs as much as the raw aggregation). Buckets before raw_complete_from are never swept
    # again (their raw rows are gone): the rollup stands.
    sql = (
        "WITH dirty AS MATERIALIZED ("
        " SELECT DISTINCT date_bin(:level, ts, :origin) AS bucket FROM telemetry"
        f" WHERE (device_id || '') = :d AND received_at > :wm AND ts >= :complete{inside.format(c='ts')}"
        f"), parts AS ({union}) "
        f"SELECT start, sum(n)::bigint AS n, {combined} FROM parts GROUP BY start ORDER BY start LIMIT :limit"
    )
    # The plan's estimates (rows per dirty bucket unknown) would switch JIT on: seconds of
    # compiling for a query that runs in milliseconds.
    await session.execute(text("SET LOCAL jit = off"))
    return await _rows(session, sql, params)


async def relay_history(
    session: AsyncSession, device_id: str, relay: int, start: datetime | None, end: datetime | None, limit: int
) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"d": device_id, "r": relay, "limit": limit}
    cond = _window(params, start, end)
    return await _rows(
        session,
        "SELECT ts, state, triggered_by, received_at FROM relay_state_history "
        f"WHERE device_id = :d AND relay_index = :r{cond} ORDER BY ts LIMIT :limit",
        params,
    )


async def connectivity(
    session: AsyncSession, device_id: str, start: datetime | None, end: datetime | None, limit: int
) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"d": device_id, "limit": limit}
    cond = _window(params, start, end)
    return await _rows(
        session,
        f"SELECT ts, is_online, cause FROM connectivity_events WHERE device_id = :d{cond} ORDER BY ts LIMIT :limit",
        params,
    )


_DL_COLUMNS = (
    "id, received_at, last_received_at, deliveries, topic, payload, qos, stage, error_class, "
    "error_message, replays, last_replay_at, last_replay_error, resolved_at"
)


def _dead_letter_filter(
    params: dict[str, Any],
    stage: str | None,
    topic: str | None,
    since: datetime | None,
    until: datetime | None,
    resolved: bool | None,
) -> str:
    where = ["true"]
    if stage is not None:
        where.append("stage = :stage")
        params["stage"] = stage
    if topic is not None:
        # MQTT-style: a trailing '#' matches the rest of the topic, otherwise the exact topic.
        if topic.endswith("#"):
            where.append("starts_with(topic, :topic)")
            params["topic"] = topic[:-1]
        else:
            where.append("topic = :topic")
            params["topic"] = topic
    if since is not None:
        where.append("received_at >= :since")
        params["since"] = since
    if until is not None:
        where.append("received_at < :until")
        params["until"] = until
    if resolved is not None:
        where.append("resolved_at IS NOT NULL" if resolved else "resolved_at IS NULL")
    return " AND ".join(where)


async def dead_letter_page(
    session: AsyncSession,
    *,
    stage: str | None,
    topic: str | None,
    since: datetime | None,
    until: datetime | None,
    resolved: bool | None,
    limit: int,
    offset: int,
) -> tuple[list[dict[str, Any]], int]:
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    cond = _dead_letter_filter(params, stage, topic, since, until, resolved)
    rows = await _rows(
        session, f"SELECT {_DL_COLUMNS} FROM dead_letters WHERE {cond} ORDER BY id LIMIT :limit OFFSET :offset", params
    )
    total = (await _rows(session, f"SELECT count(*) AS n FROM dead_letters WHERE {cond}", params))[0]["n"]
    return rows, int(total)


async def dead_letter(session: AsyncSession, dead_letter_id: int) -> dict[str, Any] | None:
    rows = await _rows(session, f"SELECT {_DL_COLUMNS} FROM dead_letters WHERE id = :id", {"id": dead_letter_id})
    return rows[0] if rows else None


async def dead_letter_ids(
    session: AsyncSession,
    *,
    stage: str | None,
    topic: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
) -> Sequence[int]:
    params: dict[str, Any] = {"limit": limit}
    cond = _dead_letter_filter(params, stage, topic, since, until, resolved=False)
    rows = await _rows(session, f"SELECT id FROM dead_letters WHERE {cond} ORDER BY id LIMIT :limit", params)
    return [int(r["id"]) for r in rows]


async def devices_online(session: AsyncSession) -> int:
    return int((await _rows(session, "SELECT count(*) AS n FROM devices WHERE is_online", {}))[0]["n"])


async def devices_known(session: AsyncSession) -> bool:
    return bool(await _rows(session, "SELECT 1 AS one FROM devices LIMIT 1", {}))
