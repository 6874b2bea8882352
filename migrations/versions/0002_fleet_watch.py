"""fleet watch: liveness columns, connectivity causes, alerts, notification outbox

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 22:50:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
KEY = sa.Text(collation="C")


def upgrade() -> None:
    op.add_column("devices", sa.Column("known", sa.Boolean(), server_default=sa.true(), nullable=False))
    # When is_online last changed (service clock): a message received after it revives an offline device.
    op.add_column("devices", sa.Column("state_changed_at", TS, nullable=True))
    # Why is_online last changed (status, retained, will, timeout, message).
    op.add_column("devices", sa.Column("connectivity_cause", KEY, nullable=True))
    op.execute(
        "UPDATE devices SET state_changed_at = last_seen, connectivity_cause = 'status' WHERE is_online IS NOT NULL"
    )
    # The inactivity sweep reads only devices that can still time out (online, or never said).
    op.create_index(
        "ix_devices_awake_last_seen",
        "devices",
        ["last_seen"],
        unique=False,
        postgresql_where=sa.text("is_online IS NOT FALSE"),
    )
    op.create_index("ix_devices_unknown", "devices", ["device_id"], postgresql_where=sa.text("NOT known"))
    op.add_column("connectivity_events", sa.Column("cause", KEY, server_default="status", nullable=False))

    op.create_table(
        "alerts",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("device_id", KEY, nullable=False),
        sa.Column("kind", KEY, nullable=False),
        sa.Column("key", KEY, server_default="", nullable=False),
        sa.Column("severity", KEY, nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("details", postgresql.JSONB(astext_type=sa.Text()), server_default="{}", nullable=False),
        sa.Column("opened_at", TS, server_default=sa.text("now()"), nullable=False),
        sa.Column("last_seen_at", TS, server_default=sa.text("now()"), nullable=False),
        sa.Column("count", sa.Integer(), server_default="1", nullable=False),
        sa.Column("resolved_at", TS, nullable=True),
        sa.Column("acknowledged_at", TS, nullable=True),
        sa.Column("acknowledged_by", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
        sa.CheckConstraint("severity IN ('info', 'warning', 'critical')", name=op.f("ck_alerts_severity")),
    )
    # At most one open alert per condition: the same condition again updates it (ON CONFLICT).
    op.create_index(
        "ix_alerts_open", "alerts", ["device_id", "kind", "key"], unique=True,
        postgresql_where=sa.text("resolved_at IS NULL"),
    )  # fmt: skip
    op.create_index("ix_alerts_opened_at", "alerts", ["opened_at"])
    op.create_index("ix_alerts_device_id_opened_at", "alerts", ["device_id", "opened_at"])

    op.create_table(
        "notifications",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        # The event's id: the same for every channel and every retry (the webhook's Idempotency-Key).
        sa.Column("event_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("channel", KEY, nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("device_id", KEY, nullable=False),
        sa.Column("kind", KEY, nullable=False),
        sa.Column("state", KEY, nullable=False),
        sa.Column("alert_id", sa.BigInteger(), nullable=True),
        # The exact bytes sent (JSON): the same body, hence the same signature, on every retry.
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("status", KEY, server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("created_at", TS, server_default=sa.text("now()"), nullable=False),
        sa.Column("next_attempt_at", TS, server_default=sa.text("now()"), nullable=False),
        sa.Column("sent_at", TS, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notifications")),
        sa.CheckConstraint("status IN ('pending', 'sent', 'failed')", name=op.f("ck_notifications_status")),
    )
    op.create_index(
        "ix_notifications_due", "notifications", ["next_attempt_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )  # fmt: skip
    op.create_index("ix_notifications_event_id_channel_target", "notifications", ["event_id", "channel", "target"],
                    unique=True)  # fmt: skip
    op.create_index("ix_notifications_status_id", "notifications", ["status", "id"])


def downgrade() -> None:
    op.drop_table("notifications")
    op.drop_table("alerts")
    op.drop_column("connectivity_events", "cause")
    op.drop_index("ix_devices_unknown", table_name="devices")
    op.drop_index("ix_devices_awake_last_seen", table_name="devices")
    op.drop_column("devices", "connectivity_cause")
    op.drop_column("devices", "state_changed_at")
    op.drop_column("devices", "known")
