"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-23 00:41:37.997950
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "connectivity_events",
        sa.Column("device_id", sa.Text(collation="C"), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("is_online", sa.Boolean(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "ts", name=op.f("pk_connectivity_events")),
    )
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deliveries", sa.Integer(), server_default="1", nullable=False),
        sa.Column("topic", sa.Text(collation="C"), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("qos", sa.SmallInteger(), nullable=False),
        sa.Column("stage", sa.Text(collation="C"), nullable=False),
        sa.Column("error_class", sa.Text(), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=False),
        sa.Column("digest", sa.LargeBinary(), nullable=False),
        sa.Column("replays", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_replay_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_replay_error", sa.Text(), nullable=True),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letters")),
    )
    op.create_index(op.f("ix_dead_letters_received_at"), "dead_letters", ["received_at"], unique=False)
    op.create_index(op.f("ix_dead_letters_stage_received_at"), "dead_letters", ["stage", "received_at"], unique=False)
    op.create_index(
        op.f("ix_dead_letters_topic_digest_stage"), "dead_letters", ["topic", "digest", "stage"], unique=True
    )
    op.create_table(
        "devices",
        sa.Column("device_id", sa.Text(collation="C"), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("is_online", sa.Boolean(), nullable=True),
        sa.Column("status_ts", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ip_address", postgresql.INET(), nullable=True),
        sa.Column("firmware_version", sa.Text(), nullable=True),
        sa.Column("uptime", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("device_id", name=op.f("pk_devices")),
    )
    op.create_index(op.f("ix_devices_last_seen"), "devices", ["last_seen"], unique=False)
    op.create_table(
        "display_interactions",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("device_id", sa.Text(collation="C"), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("interaction_type", sa.Text(), nullable=False),
        sa.Column("screen", sa.Text(), nullable=True),
        sa.Column("element", sa.Text(), nullable=True),
        sa.Column("value", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("data", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("digest", sa.LargeBinary(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_display_interactions")),
    )
    op.create_index(
        op.f("ix_display_interactions_device_id_ts_digest"),
        "display_interactions",
        ["device_id", "ts", "digest"],
        unique=True,
    )
    op.create_index(op.f("ix_display_interactions_ts"), "display_interactions", ["ts"], unique=False)
    op.create_table(
        "relay_state_history",
        sa.Column("device_id", sa.Text(collation="C"), nullable=False),
        sa.Column("relay_index", sa.Integer(), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.Boolean(), nullable=False),
        sa.Column("triggered_by", sa.Text(), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "relay_index", "ts", name=op.f("pk_relay_state_history")),
    )
    op.create_table(
        "relays",
        sa.Column("device_id", sa.Text(collation="C"), nullable=False),
        sa.Column("relay_index", sa.Integer(), nullable=False),
        sa.Column("state", sa.Boolean(), nullable=False),
        sa.Column("triggered_by", sa.Text(), nullable=True),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "relay_index", name=op.f("pk_relays")),
    )
    op.create_table(
        "system_messages",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("device_id", sa.Text(collation="C"), nullable=False),
        sa.Column("kind", sa.Text(collation="C"), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("digest", sa.LargeBinary(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_system_messages")),
    )
    op.create_index(
        op.f("ix_system_messages_device_id_kind_digest"),
        "system_messages",
        ["device_id", "kind", "digest"],
        unique=True,
    )
    op.create_index(op.f("ix_system_messages_device_id_ts"), "system_messages", ["device_id", "ts"], unique=False)
    op.create_table(
        "telemetry",
        sa.Column("device_id", sa.Text(collation="C"), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("temperature", sa.Double(), nullable=True),
        sa.Column("humidity", sa.Double(), nullable=True),
        sa.Column("voltage", sa.Double(), nullable=True),
        sa.Column("memory_free", sa.BigInteger(), nullable=True),
        sa.Column("extra", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "ts", name=op.f("pk_telemetry")),
    )


def downgrade() -> None:
    op.drop_table("telemetry")
    op.drop_index(op.f("ix_system_messages_device_id_ts"), table_name="system_messages")
    op.drop_index(op.f("ix_system_messages_device_id_kind_digest"), table_name="system_messages")
    op.drop_table("system_messages")
    op.drop_table("relays")
    op.drop_table("relay_state_history")
    op.drop_index(op.f("ix_display_interactions_ts"), table_name="display_interactions")
    op.drop_index(op.f("ix_display_interactions_device_id_ts_digest"), table_name="display_interactions")
    op.drop_table("display_interactions")
    op.drop_index(op.f("ix_devices_last_seen"), table_name="devices")
    op.drop_table("devices")
    op.drop_index(op.f("ix_dead_letters_topic_digest_stage"), table_name="dead_letters")
    op.drop_index(op.f("ix_dead_letters_stage_received_at"), table_name="dead_letters")
    op.drop_index(op.f("ix_dead_letters_received_at"), table_name="dead_letters")
    op.drop_table("dead_letters")
    op.drop_table("connectivity_events")
