"""Response models of the HTTP API (separate from payload models and tables). Times are UTC."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class DevicePublic(BaseModel):
    device_id: str
    is_online: bool | None
    first_seen: datetime
    last_seen: datetime
    status_ts: datetime | None
    ip_address: str | None
    firmware_version: str | None
    uptime: int | None


class TelemetryPublic(BaseModel):
    ts: datetime
    temperature: float | None
    humidity: float | None
    voltage: float | None
    memory_free: int | None
    extra: dict[str, float] | None
    received_at: datetime


class RelayPublic(BaseModel):
    relay_index: int
    state: bool
    triggered_by: str | None
    ts: datetime


class DeviceDetail(DevicePublic):
    latest_telemetry: TelemetryPublic | None
    relays: list[RelayPublic]


class RelayChange(BaseModel):
    ts: datetime
    state: bool
    triggered_by: str | None
    received_at: datetime


class ConnectivityChange(BaseModel):
    ts: datetime
    is_online: bool


class Aggregate(BaseModel):
    avg: float | None
    min: float | None
    max: float | None
    count: int


class TelemetryBucket(BaseModel):
    start: datetime
    count: int
    metrics: dict[str, Aggregate]


class TelemetryBuckets(BaseModel):
    bucket: str
    items: list[TelemetryBucket]


class RoutePublic(BaseModel):
    name: str
    pattern: str
    mqtt_filter: str
    qos: int
    model: str
    fields: dict[str, Any]
    messages: int


class DeadLetterPublic(BaseModel):
    id: int
    received_at: datetime
    last_received_at: datetime
    deliveries: int
    topic: str
    stage: str
    error_class: str
    error_message: str
    qos: int
    payload_text: str | None  # the payload as UTF-8, when it is valid UTF-8
    payload_base64: str  # always: the exact bytes
    replays: int
    last_replay_at: datetime | None
    last_replay_error: str | None
    resolved_at: datetime | None


class ReplayOutcome(BaseModel):
    id: int
    resolved: bool
    stage: str | None = None
    error: str | None = None


class BulkReplayOutcome(BaseModel):
    attempted: int
    resolved: int
    failed: int
    outcomes: list[ReplayOutcome]
