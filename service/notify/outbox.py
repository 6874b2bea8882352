"""Outbox rows, written inside the caller's transaction.

Every emitter (alerts opened or resolved, critical-relay events, later anomaly and rule alerts)
builds a CTE named `ev` with the columns below and appends `tail()`: one notification row per
event and channel target, in the same statement. The body is rendered once, here, and stored as
text: every retry sends the same bytes (same signature), with the same event id (Idempotency-Key).

    ev(event_id uuid, alert_id bigint, device_id text, kind text, key text, severity text,
       state text, at timestamptz, message text, details jsonb, opened_at timestamptz,
       resolved_at timestamptz)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from service.config import Settings

MQTT = "mqtt"
WEBHOOK = "webhook"
CHANNELS = (MQTT, WEBHOOK)


def iso(column: str) -> str:
    # Fixed format, UTC, whatever the session's TimeZone: the body must not depend on the connection.
    return f"""to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""


BODY = f"""jsonb_build_object(
    'id', ev.event_id, 'alert_id', ev.alert_id, 'device_id', ev.device_id, 'kind', ev.kind,
    'key', ev.key, 'severity', ev.severity, 'state', ev.state, 'at', {iso("ev.at")},
    'opened_at', {iso("ev.opened_at")}, 'resolved_at', {iso("ev.resolved_at")},
    'message', ev.message, 'details', ev.details)::text"""


def tail(channel_param: int, name: str = "n", events: str = "ev") -> str:
    """The `, n AS (INSERT INTO notifications ...)` CTE; the channels are parameters
    $channel_param (text[] of channels) and $channel_param+1 (text[] of targets). `name` and
    `events` rename it and the CTE it reads, for a statement that has an `n` or `ev` of its own."""
    a, b = channel_param, channel_param + 1
    return f""", {name} AS (
    INSERT INTO notifications (event_id, channel, target, device_id, kind, state, alert_id, body)
    SELECT ev.event_id, c.channel,
           CASE WHEN c.channel = '{MQTT}' THEN c.target || '/' || ev.device_id || '/' || ev.kind ELSE c.target END,
           ev.device_id, ev.kind, ev.state, ev.alert_id, {BODY}
    FROM {events} AS ev CROSS JOIN unnest(${a}::text[], ${b}::text[]) AS c(channel, target)
    RETURNING 1
)"""


@dataclass
class Outbox:
    """Where notifications go: (channel, target) pairs. MQTT's target is the topic root
    (`<root>/<device_id>/<kind>`), a webhook's its URL."""

    channels: list[tuple[str, str]] = field(default_factory=list)
    # Notification rows written since the last `take_written()`: the after-commit hook wakes the
    # sender only when there is something to send. (A rolled-back write leaves a spurious wake-up.)
    written: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> Outbox:
        channels: list[tuple[str, str]] = []
        if settings.alert_mqtt_enabled and settings.mqtt_monitor_enabled:
            channels.append((MQTT, settings.alert_topic))
        channels.extend((WEBHOOK, url) for url in settings.webhook_urls)
        return cls(channels)

    def params(self) -> list[list[str]]:
        return [[c for c, _ in self.channels], [t for _, t in self.channels]]

    def take_written(self) -> int:
        n, self.written = self.written, 0
        return n


@dataclass(frozen=True, slots=True)
class Event:
    """A notification that is not an alert's lifecycle (state "event"), e.g. a critical relay change."""

    device_id: str
    kind: str
    key: str
    severity: str
    at: datetime
    message: str
    details: dict[str, Any]


EMIT_EVENTS = (
    """
WITH ev AS (
    SELECT gen_random_uuid() AS event_id, NULL::bigint AS alert_id, u.device_id, u.kind, u.key, u.severity,
           'event'::text AS state, u.at, u.message, u.details, NULL::timestamptz AS opened_at,
           NULL::timestamptz AS resolved_at
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[], $7::jsonb[])
         AS u(device_id, kind, key, severity, at, message, details)
)"""
    + tail(8)
    + "\nSELECT count(*) FROM n"
)


async def emit_events(conn: asyncpg.Connection, outbox: Outbox, events: Sequence[Event]) -> int:
    """Outbox rows for these events, in the caller's transaction; returns the rows written."""
    if not events or not outbox.channels:
        return 0
    cols = [[getattr(e, f) for e in events] for f in ("device_id", "kind", "key", "severity", "at", "message")]
    cols.append([json.dumps(e.details) for e in events])
    n = int(await conn.fetchval(EMIT_EVENTS, *cols, *outbox.params()))
    outbox.written += n
    return n
