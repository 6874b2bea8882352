"""Alerts: open, update and resolve inside the caller's transaction, batch-wise, with their outbox rows.

At most one open alert per (device_id, kind, key) (a partial unique index): opening one that is open
already bumps its `count` and `last_seen_at` and notifies nothing; only a new alert and a resolution
notify. Anything that detects conditions (liveness here, anomalies and rules later) uses this:

    await open_alert(conn, outbox, device_id, "anomaly", "temperature", "warning", "too hot", {...})
    await resolve_alerts(conn, outbox, [(device_id, "anomaly", "temperature")])
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
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


# The statements' parts. `src` is a query or CTE of rows (device_id, kind, key, severity, message,
# details) to open, one per key, in key order (two writers upserting the same alerts lock them in
# the same order: no deadlock); or (device_id, kind, key) to resolve.
def _opened(src: str) -> str:
    return f"""INSERT INTO alerts AS a (device_id, kind, key, severity, message, details)
    SELECT device_id, kind, key, severity, message, details FROM {src} AS u
    ON CONFLICT (device_id, kind, key) WHERE resolved_at IS NULL
    DO UPDATE SET count = a.count + 1, last_seen_at = now(), severity = EXCLUDED.severity,
                  message = EXCLUDED.message, details = EXCLUDED.details
    RETURNING a.*, (a.xmax = 0) AS created"""


def _resolved(src: str) -> str:
    return f"""UPDATE alerts a SET resolved_at = now(), last_seen_at = now()
    FROM {src} AS u
    WHERE a.resolved_at IS NULL AND a.device_id = u.device_id AND a.kind = u.kind AND a.key = u.key
    RETURNING a.*"""


def _events(state: str, cte: str) -> str:
    at, where = ("opened_at", " WHERE created") if state == "opened" else ("resolved_at", "")
    return f"""SELECT gen_random_uuid() AS event_id, id AS alert_id, device_id, kind, key, severity,
           '{state}'::text AS state, {at} AS at, message, details, opened_at, resolved_at
    FROM {cte}{where}"""


_OPEN_ROWS = "device_id text, kind text, key text, severity text, message text, details jsonb"
_KEY_ROWS = "device_id text, kind text, key text"


def change_ctes(opens: str, resolves: str, channel_param: int) -> str:
    """`, alert_up AS (...), ...`: CTEs for another statement's WITH that open (or bump) the alerts
    of `opens` and resolve those of `resolves`, with their outbox rows (channels as parameters
    $channel_param and +1, see tail()). `alert_up` returns each alert opened or bumped (`created`:
    opened), `alert_r` each resolved. No key may be in both: a statement cannot change a row twice."""
    return (f""", alert_up AS (
    {_opened(opens)}
), alert_r AS (
    {_resolved(resolves)}
), alert_ev AS (
    {_events("opened", "alert_up")}
    UNION ALL
    {_events("resolved", "alert_r")}
)""" + tail(channel_param, "alert_n", "alert_ev"))  # fmt: skip


# The rows as one jsonb parameter each (service/storage/json_rows.py).
_OPEN = (
    f"WITH up AS (\n    {_opened(json_rows.table(1, _OPEN_ROWS))}\n), ev AS (\n    {_events('opened', 'up')}\n)"
    + tail(2)
    + "\nSELECT kind, created FROM up"
)

_RESOLVE = (
    f"WITH r AS (\n    {_resolved(json_rows.table(1, _KEY_ROWS))}\n), ev AS (\n    {_events('resolved', 'r')}\n)"
    + tail(2)
    + "\nSELECT kind FROM r"
)

_CHANGE = (
    f"WITH o AS {json_rows.table(1, _OPEN_ROWS)}, r AS {json_rows.table(2, _KEY_ROWS)}"
    + change_ctes("o", "r", 3)
    + "\nSELECT kind, created FROM alert_up UNION ALL SELECT kind, NULL FROM alert_r"
)


def _open_rows(specs: Sequence[AlertSpec]) -> list[tuple[Any, ...]]:
    """One row per condition (a statement may not upsert a row twice), in key order."""
    unique = {(s.device_id, s.kind, s.key): s for s in specs}
    ordered = [unique[k] for k in sorted(unique)]
    for s in ordered:
        if s.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {s.severity!r}")
    return [(s.device_id, s.kind, s.key, s.severity, s.message, s.details) for s in ordered]


def count_opened(outbox: Outbox, kinds: Iterable[str]) -> int:
    """Count the kinds of the alerts a statement newly opened (metrics, and the outbox rows they wrote)."""
    opened = Counter(kinds)
    for kind, n in opened.items():
        metrics.ALERTS_OPENED.labels(kind).inc(n)
    total = sum(opened.values())
    outbox.written += total * len(outbox.channels)
    return total


async def open_alerts(conn: asyncpg.Connection, outbox: Outbox, specs: Sequence[AlertSpec]) -> int:
    """Open (or bump) these alerts; returns how many were newly opened (and notified)."""
    if not specs:
        return 0
    rows = await conn.fetch(_OPEN, json_rows.rows(_open_rows(specs)), *outbox.params())
    return count_opened(outbox, (r["kind"] for r in rows if r["created"]))


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


async def change_alerts(conn: asyncpg.Connection, outbox: Outbox, opens: Sequence[AlertSpec],
                        resolves: Sequence[tuple[str, str, str]]) -> tuple[int, int]:  # fmt: skip
    """open_alerts(opens) and then resolve_alerts(resolves), in one statement when no key is in
    both (one round trip: alerts of different keys do not depend on each other's order); returns
    how many were opened and how many resolved."""
    keys = sorted(set(resolves))
    if not opens or not keys or not {(s.device_id, s.kind, s.key) for s in opens}.isdisjoint(keys):
        return await open_alerts(conn, outbox, opens), await resolve_alerts(conn, outbox, resolves)
    rows = await conn.fetch(_CHANGE, json_rows.rows(_open_rows(opens)), json_rows.rows(keys), *outbox.params())
    resolved = sum(1 for r in rows if r["created"] is None)
    outbox.written += resolved * len(outbox.channels)
    return count_opened(outbox, (r["kind"] for r in rows if r["created"])), resolved
