"""rule firings: the status is derived from their outbox rows when read, not kept up to date (issue 13)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 13:45:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index(op.f("ix_rule_firings_status_id"), table_name="rule_firings")
    op.drop_column("rule_firings", "status")


def downgrade() -> None:
    op.add_column("rule_firings", sa.Column("status", sa.Text(), server_default="pending", nullable=False))
    # What the sender used to settle: done when every outbox row is over and none failed (or there is none).
    op.execute("""
        UPDATE rule_firings f SET status = coalesce(
            (SELECT CASE WHEN bool_or(n.status = 'pending') THEN 'pending'
                         WHEN bool_or(n.status = 'failed') THEN 'failed' ELSE 'done' END
             FROM notifications n WHERE n.firing_id = f.id), 'done')
    """)
    op.create_index(op.f("ix_rule_firings_status_id"), "rule_firings", ["status", "id"], unique=False)
