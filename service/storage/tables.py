"""Tables (SQLAlchemy 2). The schema itself is created only by Alembic migrations."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Double,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    Text,
    false,
    func,
)
from sqlalchemy import text as sql_text
from sqlalchemy.dialects.postgresql import ARRAY, INET, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

TS = DateTime(timezone=True)
# Identifiers compare byte-wise: cheaper b-tree inserts than the database's linguistic collation
# (measured +15% telemetry insert rate), and ids have no natural language order anyway.
Key = Text(collation="C")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Device(Base):
    __tablename__ = "devices"

    device_id: Mapped[str] = mapped_column(Key, primary_key=True)
    first_seen: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    # When the service last received anything from the device (service clock, any topic).
    last_seen: Mapped[datetime] = mapped_column(TS)
    is_online: Mapped[bool | None] = mapped_column(Boolean)
    # Timestamp of the status message the columns below come from; older ones never apply.
    status_ts: Mapped[datetime | None] = mapped_column(TS)
    ip_address: Mapped[str | None] = mapped_column(INET)
    firmware_version: Mapped[str | None] = mapped_column(Text)
    uptime: Mapped[int | None] = mapped_column(BigInteger)
    # False until an operator accepts it (DEVICE_REGISTRATION=review).
    known: Mapped[bool] = mapped_column(Boolean, server_default=sql_text("true"))
    # When is_online last changed (service clock); a message received after it revives an offline device.
    state_changed_at: Mapped[datetime | None] = mapped_column(TS)
    # Why is_online last changed: status, retained, will, timeout, message.
    connectivity_cause: Mapped[str | None] = mapped_column(Key)

    __table_args__ = (
        Index(None, "last_seen"),
        # The inactivity sweep reads only devices that can still time out.
        Index("ix_devices_awake_last_seen", "last_seen", postgresql_where=sql_text("is_online IS NOT FALSE")),
        Index("ix_devices_unknown", "device_id", postgresql_where=sql_text("NOT known")),
    )


class ConnectivityEvent(Base):
    __tablename__ = "connectivity_events"

    device_id: Mapped[str] = mapped_column(Key, primary_key=True)
    ts: Mapped[datetime] = mapped_column(TS, primary_key=True)
    is_online: Mapped[bool] = mapped_column(Boolean)
    recorded_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    # status, retained, will, timeout, message (docs/fleet-watch.md)
    cause: Mapped[str] = mapped_column(Key, server_default="status")


class ConnectivityHistory(Base):
    """Every status, and every change the watch made on our clock: the events are its transitions.

    Ordered by `at` (the device's clock for a stamped status, ours otherwise), then `received_at`
    (service/watch/history.py). `stamp` is the device's timestamp when it sent one: a redelivered or
    retained copy of a stored status has the same and is not stored twice.
    """

    __tablename__ = "connectivity_history"

    device_id: Mapped[str] = mapped_column(Key, primary_key=True)
    at: Mapped[datetime] = mapped_column(TS, primary_key=True)
    received_at: Mapped[datetime] = mapped_column(TS, primary_key=True)
    # status, retained, will (decisive: each sets the state), timeout, message (relative to it)
    cause: Mapped[str] = mapped_column(Key, primary_key=True)
    is_online: Mapped[bool] = mapped_column(Boolean)
    stamp: Mapped[datetime | None] = mapped_column(TS)

    __table_args__ = (
        Index(
            "ix_connectivity_history_stamp",
            "device_id",
            "stamp",
            "is_online",
            unique=True,
            postgresql_where=sql_text("stamp IS NOT NULL"),
        ),
    )


class TelemetryRow(Base):
    __tablename__ = "telemetry"

    device_id: Mapped[str] = mapped_column(Key, primary_key=True)
    ts: Mapped[datetime] = mapped_column(TS, primary_key=True)
    temperature: Mapped[float | None] = mapped_column(Double)
    humidity: Mapped[float | None] = mapped_column(Double)
    voltage: Mapped[float | None] = mapped_column(Double)
    memory_free: Mapped[int | None] = mapped_column(BigInteger)
    extra: Mapped[dict[str, float] | None] = mapped_column(JSONB)
    received_at: Mapped[datetime] = mapped_column(TS)
    # The primary key (device_id, ts) is the only b-tree: queries are per device, and every further
    # b-tree costs the busiest table an insert per row. The BRIN on received_at lets the rollup
    # sweep find rows stored since its last pass (rows arrive in received_at order, so a block
    # range summary is tight) at next to no cost per insert.
    # Range-partitioned by ts (migration 0003, service/history/partitions.py): one partition a day
    # plus a default partition for timestamps outside the created days.
    __table_args__ = (
        Index(None, "received_at", postgresql_using="brin", postgresql_with={"autosummarize": "on"}),
        {"postgresql_partition_by": "RANGE (ts)"},
    )


class Relay(Base):
    __tablename__ = "relays"

    device_id: Mapped[str] = mapped_column(Key, primary_key=True)
    relay_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[bool] = mapped_column(Boolean)
    triggered_by: Mapped[str | None] = mapped_column(Text)
    ts: Mapped[datetime] = mapped_column(TS)
    updated_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    # Updated in place again and again: half of each page free for HOT updates (migration 0009).
    __table_args__ = ({"postgresql_with": {"fillfactor": 50}},)


class RelayStateHistory(Base):
    __tablename__ = "relay_state_history"

    device_id: Mapped[str] = mapped_column(Key, primary_key=True)
    relay_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    ts: Mapped[datetime] = mapped_column(TS, primary_key=True)
    state: Mapped[bool] = mapped_column(Boolean)
    triggered_by: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(TS)

    # Range-partitioned by ts, one partition a month (service/history/partitions.py).
    __table_args__ = ({"postgresql_partition_by": "RANGE (ts)"},)


class DisplayInteractionRow(Base):
    __tablename__ = "display_interactions"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(Key)
    ts: Mapped[datetime] = mapped_column(TS)
    interaction_type: Mapped[str] = mapped_column(Text)
    screen: Mapped[str | None] = mapped_column(Text)
    element: Mapped[str | None] = mapped_column(Text)
    value: Mapped[object | None] = mapped_column(JSONB)
    data: Mapped[dict[str, object] | None] = mapped_column(JSONB)
    # blake2b-128 of the raw payload: a redelivery carries the same bytes.
    digest: Mapped[bytes] = mapped_column(LargeBinary)
    received_at: Mapped[datetime] = mapped_column(TS)

    __table_args__ = (
        Index(None, "device_id", "ts", "digest", unique=True),
        Index(None, "ts"),
    )


class SystemMessageRow(Base):
    __tablename__ = "system_messages"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(Key)
    kind: Mapped[str] = mapped_column(Key)
    ts: Mapped[datetime] = mapped_column(TS)
    payload: Mapped[dict[str, object]] = mapped_column(JSONB)
    digest: Mapped[bytes] = mapped_column(LargeBinary)
    received_at: Mapped[datetime] = mapped_column(TS)

    __table_args__ = (
        Index(None, "device_id", "kind", "digest", unique=True),
        Index(None, "device_id", "ts"),
    )


class DeadLetter(Base):
    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    received_at: Mapped[datetime] = mapped_column(TS)
    # The same bad message again (a redelivery, or a device repeating itself) bumps these.
    last_received_at: Mapped[datetime] = mapped_column(TS)
    deliveries: Mapped[int] = mapped_column(Integer, server_default="1")
    topic: Mapped[str] = mapped_column(Key)
    payload: Mapped[bytes] = mapped_column(LargeBinary)  # exactly as received
    qos: Mapped[int] = mapped_column(SmallInteger)
    stage: Mapped[str] = mapped_column(Key)
    error_class: Mapped[str] = mapped_column(Text)
    error_message: Mapped[str] = mapped_column(Text)
    digest: Mapped[bytes] = mapped_column(LargeBinary)
    # Replays (POST /dead-letters/{id}/replay): a successful one resolves the row, which is kept.
    replays: Mapped[int] = mapped_column(Integer, server_default="0")
    last_replay_at: Mapped[datetime | None] = mapped_column(TS)
    last_replay_error: Mapped[str | None] = mapped_column(Text)
    resolved_at: Mapped[datetime | None] = mapped_column(TS)

    __table_args__ = (
        Index(None, "topic", "digest", "stage", unique=True),
        Index(None, "received_at"),
        Index(None, "stage", "received_at"),
    )


class Alert(Base):
    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(Key)
    kind: Mapped[str] = mapped_column(Key)
    key: Mapped[str] = mapped_column(Key, server_default="")
    severity: Mapped[str] = mapped_column(Key)
    message: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, object]] = mapped_column(JSONB, server_default="{}")
    opened_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    last_seen_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    count: Mapped[int] = mapped_column(Integer, server_default="1")
    resolved_at: Mapped[datetime | None] = mapped_column(TS)
    acknowledged_at: Mapped[datetime | None] = mapped_column(TS)
    acknowledged_by: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint("severity IN ('info', 'warning', 'critical')", name="severity"),
        Index(
            "ix_alerts_open", "device_id", "kind", "key", unique=True, postgresql_where=sql_text("resolved_at IS NULL")
        ),
        Index(None, "opened_at"),
        Index(None, "device_id", "opened_at"),
    )


class Notification(Base):
    """The outbox: one row per event and channel target, written in the transaction that caused it."""

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    event_id: Mapped[object] = mapped_column(UUID(as_uuid=True))
    channel: Mapped[str] = mapped_column(Key)
    target: Mapped[str] = mapped_column(Text)
    device_id: Mapped[str] = mapped_column(Key)
    kind: Mapped[str] = mapped_column(Key)
    state: Mapped[str] = mapped_column(Key)
    alert_id: Mapped[int | None] = mapped_column(BigInteger)
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Key, server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    next_attempt_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    sent_at: Mapped[datetime | None] = mapped_column(TS)
    last_error: Mapped[str | None] = mapped_column(Text)
    # A rule action's row: its firing (rule_firings.id), and a publish's MQTT options (migration 0006).
    firing_id: Mapped[int | None] = mapped_column(BigInteger)
    qos: Mapped[int] = mapped_column(SmallInteger, server_default="1")
    retain: Mapped[bool] = mapped_column(Boolean, server_default=false())

    __table_args__ = (
        CheckConstraint("status IN ('pending', 'sent', 'failed')", name="status"),
        Index("ix_notifications_due", "next_attempt_at", postgresql_where=sql_text("status = 'pending'")),
        Index("ix_notifications_firing_id", "firing_id", postgresql_where=sql_text("firing_id IS NOT NULL")),
        Index(None, "event_id", "channel", "target", unique=True),
        Index(None, "status", "id"),
    )


class RuleState(Base):
    """Edge state of one rule for one device (and relay): written with the batch (service/rules/engine.py)."""

    __tablename__ = "rule_state"

    rule: Mapped[str] = mapped_column(Key, primary_key=True)
    device_id: Mapped[str] = mapped_column(Key, primary_key=True)
    relay: Mapped[int] = mapped_column(Integer, primary_key=True)  # -1 on routes without a relay
    value: Mapped[bool] = mapped_column(Boolean)
    # Device time of the newest change; reports not newer than it never apply.
    changed_at: Mapped[datetime | None] = mapped_column(TS)
    since: Mapped[datetime | None] = mapped_column(TS)  # start of the current true episode
    fired_at: Mapped[datetime | None] = mapped_column(TS)  # device time the episode fired (once)
    updated_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    # Updated in place again and again: half of each page free for HOT updates (migration 0009).
    __table_args__ = ({"postgresql_with": {"fillfactor": 50}},)


class RuleFiring(Base):
    """A rule firing with its rendered actions. Its status is read off its outbox rows
    (notifications.firing_id; service/rules/queries.py): `pending` until the publish and webhook
    actions are carried out, then `done`, or `failed` when one gave up; `done` when it has none."""

    __tablename__ = "rule_firings"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    rule: Mapped[str] = mapped_column(Key)
    device_id: Mapped[str] = mapped_column(Key)
    relay: Mapped[int] = mapped_column(Integer)
    since: Mapped[datetime] = mapped_column(TS)  # the episode: one firing each
    ts: Mapped[datetime] = mapped_column(TS)  # device time of the report that fired it
    severity: Mapped[str] = mapped_column(Text)
    actions: Mapped[list[dict[str, object]]] = mapped_column(JSONB)
    context: Mapped[dict[str, object]] = mapped_column(JSONB)
    recorded_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())

    __table_args__ = (
        Index(None, "rule", "device_id", "relay", "since", unique=True),
        Index(None, "rule", "id"),
    )


class _Rollup:
    """Per device and bucket: the row count, and per known metric count, sum, min and max.

    Sums and counts (not means) so buckets combine exactly into wider ones. Written only by the
    rollup sweep (service/history/rollups.py), recomputed from the raw rows.
    """

    device_id: Mapped[str] = mapped_column(Key, primary_key=True)
    bucket: Mapped[datetime] = mapped_column(TS, primary_key=True)
    n: Mapped[int] = mapped_column(Integer)
    temperature_count: Mapped[int] = mapped_column(Integer)
    temperature_sum: Mapped[float | None] = mapped_column(Double)
    temperature_min: Mapped[float | None] = mapped_column(Double)
    temperature_max: Mapped[float | None] = mapped_column(Double)
    humidity_count: Mapped[int] = mapped_column(Integer)
    humidity_sum: Mapped[float | None] = mapped_column(Double)
    humidity_min: Mapped[float | None] = mapped_column(Double)
    humidity_max: Mapped[float | None] = mapped_column(Double)
    voltage_count: Mapped[int] = mapped_column(Integer)
    voltage_sum: Mapped[float | None] = mapped_column(Double)
    voltage_min: Mapped[float | None] = mapped_column(Double)
    voltage_max: Mapped[float | None] = mapped_column(Double)
    memory_free_count: Mapped[int] = mapped_column(Integer)
    # A float8 holds integer sums exactly up to 2^53: far above a bucket's worth of memory_free.
    memory_free_sum: Mapped[float | None] = mapped_column(Double)
    memory_free_min: Mapped[int | None] = mapped_column(BigInteger)
    memory_free_max: Mapped[int | None] = mapped_column(BigInteger)


class TelemetryRollupMinute(_Rollup, Base):
    __tablename__ = "telemetry_rollup_1m"
    __table_args__ = ({"postgresql_partition_by": "RANGE (bucket)"},)


class TelemetryRollupHour(_Rollup, Base):
    __tablename__ = "telemetry_rollup_1h"
    __table_args__ = ({"postgresql_partition_by": "RANGE (bucket)"},)


class RollupState(Base):
    """One row: how far the rollup sweep has read (by received_at), and from when raw rows are complete."""

    __tablename__ = "telemetry_rollup_state"

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    # Every raw row received up to this time is in the rollups ('-infinity': nothing rolled up yet).
    received_through: Mapped[datetime] = mapped_column(TS)
    # Retention dropped the raw rows before this time: older buckets are never recomputed
    # ('-infinity': nothing dropped yet).
    raw_complete_from: Mapped[datetime] = mapped_column(TS)
    swept_at: Mapped[datetime | None] = mapped_column(TS)


class TelemetryStats(Base):
    """Per device: its numeric metrics' counts, extremes, moving averages and anomaly state
    (service/stats/, docs/statistics.md), written with the batch whose rows it counts. One row per
    device (not per metric): a message updates one row."""

    __tablename__ = "telemetry_stats"

    device_id: Mapped[str] = mapped_column(Key, primary_key=True)
    metrics: Mapped[list[str]] = mapped_column(ARRAY(Text))
    # Per metric, in `metrics` order, the float8 fields of service/stats/ewma.py, little-endian.
    state: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    # Updated in place again and again: half of each page free for HOT updates (migration 0009).
    __table_args__ = ({"postgresql_with": {"fillfactor": 50}},)
