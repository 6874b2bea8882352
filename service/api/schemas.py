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
    known: bool = Field(True, description="false until accepted (DEVICE_REGISTRATION=review)")
    connectivity_cause: str | None = Field(
        None, description="why is_online last changed: status, retained, will, timeout, message"
    )


class Freshness(BaseModel):
    """Present only when they say something (service/api/fleet_answers.py)."""

    stale: bool | None = Field(None, description="true: the database did not answer; this is the fleet cache")
    as_of: datetime | None = Field(None, description="with stale: the time of the newest commit the cache holds")
    broker_connected: bool | None = Field(
        None, description="false: the MQTT broker is not connected, devices may have sent more than this"
    )


class DevicePage(Page[DevicePublic], Freshness):
    pass


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


class AlertPublic(BaseModel):
    id: int
    device_id: str
    kind: str = Field(description="offline, unknown_device, ... (docs/fleet-watch.md)")
    key: str = Field(description="what inside the device (a relay, a metric); may be empty")
    severity: str
    message: str
    details: dict[str, Any]
    opened_at: datetime
    last_seen_at: datetime = Field(description="the condition was last seen (it was opened again while open)")
    count: int = Field(description="times the condition was seen while this alert was open")
    resolved_at: datetime | None
    acknowledged_at: datetime | None
    acknowledged_by: str | None


class MetricStats(BaseModel):
    """One metric's statistics (docs/statistics.md)."""

    metric: str
    count: int = Field(description="samples stored, in any order")
    min: float | None
    max: float | None
    last_value: float | None = Field(description="the newest sample by the device's clock")
    last_ts: datetime | None
    samples: int = Field(description="samples in the moving average (anomalous ones are left out)")
    average: float = Field(description="exponentially weighted moving average")
    variance: float = Field(description="exponentially weighted moving variance")
    deviation: float = Field(description="square root of the variance")
    anomalous: bool = Field(description="an anomaly is open (ANOMALY_CLEAR_SAMPLES normal samples in a row end it)")
    last_z: float | None = Field(description="deviations of the newest judged sample from the average")


class DeviceDetail(DevicePublic, Freshness):
    latest_telemetry: TelemetryPublic | None
    relays: list[RelayPublic]
    open_alerts: list[AlertPublic] = Field(default_factory=list)
    stats: list[MetricStats] = Field(
        default_factory=list, description="per metric (not while answering from the cache)"
    )


class RelayChange(BaseModel):
    ts: datetime
    state: bool
    triggered_by: str | None
    received_at: datetime


class ConnectivityChange(BaseModel):
    ts: datetime
    is_online: bool
    cause: str = Field("status", description="status, retained, will, timeout, message")


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


class NotificationPublic(BaseModel):
    id: int
    event_id: str = Field(description="the Idempotency-Key: the same on every retry and every channel")
    channel: str
    target: str = Field(description="MQTT topic, or webhook URL without credentials or query")
    device_id: str
    kind: str
    state: str = Field(description="opened, resolved or event")
    alert_id: int | None
    status: str = Field(description="pending, sent or failed")
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    sent_at: datetime | None
    last_error: str | None
