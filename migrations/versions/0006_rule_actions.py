"""rule actions through the notification outbox (issue 13)

A rule's publish and webhook actions are notification rows written with the firing: `firing_id`
links them to it (GET /rules/{name}/firings), `qos` and `retain` are a publish's MQTT options
(alerts keep the defaults, QoS 1 without retain).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 04:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("notifications", sa.Column("firing_id", sa.BigInteger(), nullable=True))
    op.add_column("notifications", sa.Column("qos", sa.SmallInteger(), server_default="1", nullable=False))
    op.add_column("notifications", sa.Column("retain", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.create_index(
        "ix_notifications_firing_id", "notifications", ["firing_id"], postgresql_where=sa.text("firing_id IS NOT NULL")
    )


def downgrade() -> None:
    op.drop_index("ix_notifications_firing_id", table_name="notifications")
    op.drop_column("notifications", "retain")
    op.drop_column("notifications", "qos")
    op.drop_column("notifications", "firing_id")
