"""connectivity history: every status and watch change, the connectivity events are its transitions (issue 14)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 03:50:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
KEY = sa.Text(collation="C")


def upgrade() -> None:
    op.create_table(
        "connectivity_history",
        sa.Column("device_id", KEY, nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("received_at", TS, nullable=False),
        sa.Column("cause", KEY, nullable=False),
        sa.Column("is_online", sa.Boolean(), nullable=False),
        sa.Column("stamp", TS, nullable=True),
        sa.PrimaryKeyConstraint("device_id", "at", "received_at", "cause", name=op.f("pk_connectivity_history")),
    )
    op.create_index(
        "ix_connectivity_history_stamp",
        "connectivity_history",
        ["device_id", "stamp", "is_online"],
        unique=True,
        postgresql_where=sa.text("stamp IS NOT NULL"),
    )
    # The events recorded so far are the history so far: later rows are ordered against them.
    op.execute(
        "INSERT INTO connectivity_history (device_id, at, received_at, cause, is_online) "
        "SELECT device_id, ts, recorded_at, cause, is_online FROM connectivity_events"
    )


def downgrade() -> None:
    op.drop_index("ix_connectivity_history_stamp", table_name="connectivity_history")
    op.drop_table("connectivity_history")
