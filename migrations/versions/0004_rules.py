"""rule state and firings (issue 13)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 23:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rule_state",
        sa.Column("rule", sa.Text(collation="C"), nullable=False),
        sa.Column("device_id", sa.Text(collation="C"), nullable=False),
        sa.Column("relay", sa.Integer(), nullable=False),
        sa.Column("value", sa.Boolean(), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("fired_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("rule", "device_id", "relay", name=op.f("pk_rule_state")),
    )
    op.create_table(
        "rule_firings",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("rule", sa.Text(collation="C"), nullable=False),
        sa.Column("device_id", sa.Text(collation="C"), nullable=False),
        sa.Column("relay", sa.Integer(), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("severity", sa.Text(), nullable=False),
        sa.Column("actions", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("context", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rule_firings")),
    )
    op.create_index(
        op.f("ix_rule_firings_rule_device_id_relay_since"),
        "rule_firings",
        ["rule", "device_id", "relay", "since"],
        unique=True,
    )
    op.create_index(op.f("ix_rule_firings_rule_id"), "rule_firings", ["rule", "id"], unique=False)
    op.create_index(op.f("ix_rule_firings_status_id"), "rule_firings", ["status", "id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_rule_firings_status_id"), table_name="rule_firings")
    op.drop_index(op.f("ix_rule_firings_rule_id"), table_name="rule_firings")
    op.drop_index(op.f("ix_rule_firings_rule_device_id_relay_since"), table_name="rule_firings")
    op.drop_table("rule_firings")
    op.drop_table("rule_state")
