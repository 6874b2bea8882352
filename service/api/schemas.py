"""Response models of the HTTP API (separate from payload models and tables). Times are UTC."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field

T = TypeVar("T")


class Problem(BaseModel):
    """Why a request was refused (4xx) or could not be served (503)."""

    detail: str


class Page(BaseModel, Generic[T]):
    """One page: `total` counts every match, `items` hold at most `limit` of them from `offset` on."""

    items: list[T]
    total: int
    limit: int
    offset: int


class DevicePublic(BaseModel):
    device_id: str
    is_online: bool | None = Field(description="from the newest status message; null if none came yet")
    first_seen: datetime = Field(description="first message from the device (service clock)")
    last_seen: datetime = Field(description="newest message from the device (service clock)")
    status_ts: datetime | None = Field(description="the newest status message's own timestamp (device clock)")
    ip_address: str | None
    firmware_version: str | None
    uptime: int | None


class TelemetryPublic(BaseModel):
    ts: datetime = Field(description="the reading's timestamp (device clock)")
    temperature: float | None
    humidity: float | None
    voltage: float | None
    memory_free: int | None
    extra: dict[str, float] | None = Field(description="other numeric fields of the message")
    received_at: datetime = Field(description="service clock")


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
    count: int = Field(description="rows of the bucket that have this metric")


class TelemetryBucket(BaseModel):
    start: datetime = Field(description="start of the bucket (inclusive)")
    count: int = Field(description="rows in the bucket")
    metrics: dict[str, Aggregate] = Field(description="temperature, humidity, voltage, memory_free")


class TelemetryBuckets(BaseModel):
    bucket: str
    items: list[TelemetryBucket]


class RoutePublic(BaseModel):
    name: str
    pattern: str
    mqtt_filter: str
    qos: int
    model: str = Field(description="the payload model")
    fields: dict[str, Any] = Field(description="the payload model's fields (JSON Schema)")
    messages: int = Field(
        description="messages received on this route and committed (stored or dead-lettered) since start"
    )
    middleware: list[str] = Field(
        default_factory=list, description="the route's middleware chain, outermost first (its group's before its own)"
    )


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
    resolved: bool = Field(description="the message is stored now, and the dead letter resolved")
    stage: str | None = Field(None, description="where the replay failed")
    error: str | None = Field(None, description="why it failed")


class BulkReplayOutcome(BaseModel):
    attempted: int
    resolved: int
    failed: int
    outcomes: list[ReplayOutcome]
