"""Alerts: open, update and resolve inside the caller's transaction, batch-wise, with their outbox rows.

At most one open alert per (device_id, kind, key) (a partial unique index): opening one that is open
already bumps its `count` and `last_seen_at` and notifies nothing; only a new alert and a resolution
notify. Anything that detects conditions (liveness here, anomalies and rules later) uses this:

    await open_alert(conn, outbox, device_id, "anomaly", "temperature", "warning", "too hot", {...})
    await resolve_alerts(conn, outbox, [(device_id, "anomaly", "temperature")])
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import asyncpg

from service import metrics
from service.notify.outbox import Outbox, tail

Severity = Literal["info", "warning", "critical"]
SEVERITIES = ("info", "warning", "critical")

OFFLINE = "offline"
UNKNOWN_DEVICE = "unknown_device"


@dataclass(frozen=True, slots=True)
class AlertSpec:
    device_id: str
    kind: str
    key: str = ""
    severity: Severity = "warning"
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)


_OPEN = (
    """
WITH u AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[])
        AS u(device_id, kind, key, severity, message, details)
), up AS (
    INSERT INTO alerts AS a (device_id, kind, key, severity, message, details)
    SELECT * FROM u
    ON CONFLICT (device_id, kind, key) WHERE resolved_at IS NULL
    DO UPDATE SET count = a.count + 1, last_seen_at = now(), severity = EXCLUDED.severity,
                  message = EXCLUDED.message, details = EXCLUDED.details
    RETURNING a.*, (a.xmax = 0) AS created
), ev AS (
    SELECT gen_random_uuid() AS event_id, id AS alert_id, device_id, kind, key, severity,
           'opened'::text AS state, opened_at AS at, message, details, opened_at, resolved_at
    FROM up WHERE created
)"""
    + tail(7)
    + "\nSELECT kind, created FROM up"
)

_RESOLVE = (
    """
WITH u AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) AS u(device_id, kind, key)
), r AS (
    UPDATE alerts a SET resolved_at = now(), last_seen_at = now()
    FROM u
    WHERE a.resolved_at IS NULL AND a.device_id = u.device_id AND a.kind = u.kind AND a.key = u.key
    RETURNING a.*
), ev AS (
    SELECT gen_random_uuid() AS event_id, id AS alert_id, device_id, kind, key, severity,
           'resolved'::text AS state, resolved_at AS at, message, details, opened_at, resolved_at
    FROM r
)"""
    + tail(4)
    + "\nSELECT kind FROM r"
)


async def open_alerts(conn: asyncpg.Connection, outbox: Outbox, specs: Sequence[AlertSpec]) -> int:
    """Open (or bump) these alerts; returns how many were newly opened (and notified)."""
    if not specs:
        return 0
    # One row per condition (a statement may not upsert a row twice), in a fixed order (two
    # writers upserting the same alerts lock them in the same order: no deadlock).
    unique = {(s.device_id, s.kind, s.key): s for s in specs}
    ordered = [unique[k] for k in sorted(unique)]
    for s in ordered:
        if s.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {s.severity!r}")
    rows = await conn.fetch(
        _OPEN,
        [s.device_id for s in ordered],
        [s.kind for s in ordered],
        [s.key for s in ordered],
        [s.severity for s in ordered],
        [s.message for s in ordered],
        [json.dumps(s.details) for s in ordered],
        *outbox.params(),
    )
    opened = Counter(r["kind"] for r in rows if r["created"])
    for kind, n in opened.items():
        metrics.ALERTS_OPENED.labels(kind).inc(n)
    total = sum(opened.values())
    outbox.written += total * len(outbox.channels)
    return total


async def open_alert(
    conn: asyncpg.Connection,
    outbox: Outbox,
    device_id: str,
    kind: str,
    key: str,
    severity: Severity,
    message: str,
    details: dict[str, Any] | None = None,
) -> bool:
    """One alert; True if it was newly opened."""
    return await open_alerts(conn, outbox, [AlertSpec(device_id, kind, key, severity, message, details or {})]) > 0


async def resolve_alerts(conn: asyncpg.Connection, outbox: Outbox, keys: Sequence[tuple[str, str, str]]) -> int:
    """Resolve the open alerts among (device_id, kind, key); returns how many were open (and notified)."""
    if not keys:
        return 0
    ordered = sorted(set(keys))
    rows = await conn.fetch(
        _RESOLVE, [k[0] for k in ordered], [k[1] for k in ordered], [k[2] for k in ordered], *outbox.params()
    )
    outbox.written += len(rows) * len(outbox.channels)
    return len(rows)
