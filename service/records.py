"""What handlers hand to the writer: one plain record per row-to-be.

Records are the boundary between the typed message world and SQL; the writer turns a batch of
them into a few multi-row statements. They are NamedTuples, fields in column order, so a batch
transposes into per-column arrays with one `zip(*records)`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple


class StatusRecord(NamedTuple):
    device_id: str
    ts: datetime  # the device's timestamp, or the receive time when it sent none (see `stamped`)
    is_online: bool
    ip_address: str | None
    firmware_version: str | None
    uptime: int | None
    # How the liveness rule orders it (docs/fleet-watch.md): by the device's clock when stamped,
    # by the receive order otherwise; a retained message is history, not news.
    stamped: bool = True
    retained: bool = False
    received_at: float = 0.0  # epoch seconds, service clock
    redelivered: bool = False  # MQTT DUP: first received earlier, so never "received last" (a will)


class TelemetryRecord(NamedTuple):
    device_id: str
    ts: datetime
    temperature: float | None
    humidity: float | None
    voltage: float | None
    memory_free: int | None
    extra: str | None  # JSON text
    received_at: float  # epoch seconds (cheaper to send than a datetime; to_timestamp() in SQL)


class RelayRecord(NamedTuple):
    device_id: str
    relay_index: int
    ts: datetime
    state: bool
    triggered_by: str | None
    received_at: float  # epoch seconds (cheaper to send than a datetime; to_timestamp() in SQL)


class DisplayRecord(NamedTuple):
    device_id: str
    ts: datetime
    interaction_type: str
    screen: str | None
    element: str | None
    value: str | None  # JSON text
    data: str | None  # JSON text
    digest: bytes
    received_at: float  # epoch seconds (cheaper to send than a datetime; to_timestamp() in SQL)


class SystemRecord(NamedTuple):
    device_id: str
    kind: str
    ts: datetime
    payload: str  # JSON text
    digest: bytes
    received_at: float  # epoch seconds (cheaper to send than a datetime; to_timestamp() in SQL)


class DeadLetterRecord(NamedTuple):
    received_at: float  # epoch seconds (cheaper to send than a datetime; to_timestamp() in SQL)
    topic: str
    payload: bytes
    qos: int
    stage: str
    error_class: str
    error_message: str
    digest: bytes


class RuleRecord(NamedTuple):
    """Rules whose value changed for a device (or one of its relays) with this message (service/rules/stage.py)."""

    device_id: str
    relay: int  # -1 on routes without a relay
    ts: datetime  # the device's time
    changes: tuple[tuple[Any, bool], ...]  # (rules.loader.CompiledRule, new value)
    context: dict[str, Any] | None  # what the actions' templates may use; only when a rule turned true
    origin: str  # the rules instance whose cache sent it (other replicas are told of the change)


Record = StatusRecord | TelemetryRecord | RelayRecord | DisplayRecord | SystemRecord | DeadLetterRecord | RuleRecord
