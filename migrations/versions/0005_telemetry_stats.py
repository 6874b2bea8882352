"""telemetry statistics and anomaly state per device and metric (issue 12)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 04:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "telemetry_stats",
        sa.Column("device_id", sa.Text(collation="C"), nullable=False),
        sa.Column("metric", sa.Text(collation="C"), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("min", sa.Double(), nullable=True),
        sa.Column("max", sa.Double(), nullable=True),
        sa.Column("last_value", sa.Double(), nullable=True),
        sa.Column("last_ts", sa.DateTime(timezone=True), nullable=True),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("mean", sa.Double(), nullable=False),
        sa.Column("var", sa.Double(), nullable=False),
        sa.Column("anomalous", sa.Boolean(), nullable=False),
        sa.Column("normal_run", sa.Integer(), nullable=False),
        sa.Column("outlier_run", sa.Integer(), nullable=False),
        sa.Column("run_mean", sa.Double(), nullable=False),
        sa.Column("run_m2", sa.Double(), nullable=False),
        sa.Column("last_z", sa.Double(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "metric", name=op.f("pk_telemetry_stats")),
    )


def downgrade() -> None:
    op.drop_table("telemetry_stats")
