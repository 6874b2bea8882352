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
from service.storage import json_rows

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


# The rows as one jsonb parameter (service/storage/json_rows.py).
_OPEN = (
    f"""
WITH u AS (
    SELECT * FROM {json_rows.table(1, "device_id text, kind text, key text, severity text, message text, "
                                      "details jsonb")} AS u
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
    + tail(2)
    + "\nSELECT kind, created FROM up"
)

_RESOLVE = (
    f"""
WITH u AS (
    SELECT * FROM {json_rows.table(1, "device_id text, kind text, key text")} AS u
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
    + tail(2)
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
    specs_rows = [(s.device_id, s.kind, s.key, s.severity, s.message, json.dumps(s.details)) for s in ordered]
    rows = await conn.fetch(_OPEN, json_rows.rows(specs_rows), *outbox.params())
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
    rows = await conn.fetch(_RESOLVE, json_rows.rows(ordered), *outbox.params())
    outbox.written += len(rows) * len(outbox.channels)
    return len(rows)
