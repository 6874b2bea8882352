"""Read queries of the fleet watch's API (alerts, the notification outbox)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from service.config import redact_url

_ALERT_COLUMNS = (
    "id, device_id, kind, key, severity, message, details, opened_at, last_seen_at, count, resolved_at, "
    "acknowledged_at, acknowledged_by"
)
_NOTIFICATION_COLUMNS = (
    "id, event_id::text AS event_id, channel, target, device_id, kind, state, alert_id, status, attempts, "
    "created_at, next_attempt_at, sent_at, last_error"
)


async def _rows(session: AsyncSession, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    result = await session.execute(text(sql), params)
    return [dict(r) for r in result.mappings()]


def _alert(row: dict[str, Any]) -> dict[str, Any]:
    if isinstance(row.get("details"), str):
        row["details"] = json.loads(row["details"])
    return row


async def alert_page(
    session: AsyncSession,
    *,
    status: str,
    device_id: str | None,
    kind: str | None,
    severity: str | None,
    since: datetime | None,
    limit: int,
    offset: int,
) -> tuple[list[dict[str, Any]], int]:
    where = ["true"]
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    if status == "open":
        where.append("resolved_at IS NULL")
    elif status == "resolved":
        where.append("resolved_at IS NOT NULL")
    for name, value in (("device_id", device_id), ("kind", kind), ("severity", severity)):
        if value is not None:
            where.append(f"{name} = :{name}")
            params[name] = value
    if since is not None:
        where.append("opened_at >= :since")
        params["since"] = since
    cond = " AND ".join(where)
    rows = await _rows(
        session,
        f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE {cond} "
        "ORDER BY opened_at DESC, id DESC LIMIT :limit OFFSET :offset",
        params,
    )
    total = (await _rows(session, f"SELECT count(*) AS n FROM alerts WHERE {cond}", params))[0]["n"]
    return [_alert(r) for r in rows], int(total)


async def alert(session: AsyncSession, alert_id: int) -> dict[str, Any] | None:
    rows = await _rows(session, f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE id = :id", {"id": alert_id})
    return _alert(rows[0]) if rows else None


async def acknowledge(session: AsyncSession, alert_id: int, by: str) -> dict[str, Any] | None:
    rows = await _rows(
        session,
        "UPDATE alerts SET acknowledged_at = coalesce(acknowledged_at, now()), "
        "acknowledged_by = coalesce(acknowledged_by, :by) WHERE id = :id "
        f"RETURNING {_ALERT_COLUMNS}",
        {"id": alert_id, "by": by},
    )
    await session.commit()
    return _alert(rows[0]) if rows else None


async def open_alerts_of(session: AsyncSession, device_id: str) -> list[dict[str, Any]]:
    rows = await _rows(
        session,
        f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE device_id = :d AND resolved_at IS NULL ORDER BY opened_at",
        {"d": device_id},
    )
    return [_alert(r) for r in rows]


async def open_alert_counts(session: AsyncSession) -> dict[str, int]:
    rows = await _rows(session, "SELECT kind, count(*) AS n FROM alerts WHERE resolved_at IS NULL GROUP BY kind", {})
    return {r["kind"]: int(r["n"]) for r in rows}


async def pending_notification_counts(session: AsyncSession) -> dict[str, int]:
    rows = await _rows(
        session, "SELECT channel, count(*) AS n FROM notifications WHERE status = 'pending' GROUP BY channel", {}
    )
    return {r["channel"]: int(r["n"]) for r in rows}


async def notification_page(
    session: AsyncSession, *, status: str | None, channel: str | None, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    where = ["true"]
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    if status is not None:
        where.append("status = :status")
        params["status"] = status
    if channel is not None:
        where.append("channel = :channel")
        params["channel"] = channel
    cond = " AND ".join(where)
    rows = await _rows(
        session,
        f"SELECT {_NOTIFICATION_COLUMNS} FROM notifications WHERE {cond} ORDER BY id DESC LIMIT :limit OFFSET :offset",
        params,
    )
    total = (await _rows(session, f"SELECT count(*) AS n FROM notifications WHERE {cond}", params))[0]["n"]
    for r in rows:
        if r["channel"] == "webhook":
            r["target"] = redact_url(r["target"])
    return rows, int(total)
