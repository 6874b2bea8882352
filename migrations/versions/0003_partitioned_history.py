"""partitioned telemetry and relay history, telemetry rollups

Telemetry becomes range-partitioned by ts (a partition a day), relay_state_history too (a partition
a month), each with a default partition for timestamps outside the created ones. Every row is
copied over (the tables are rewritten once: minutes per hundred million rows). Partitions are
created for the days/months that hold rows of the last 400 days and for the next week; older rows
go to the default partition, where they stay until an operator removes them. The service creates
the following partitions itself (service/history/partitions.py).

Adds the one-minute and one-hour rollups of telemetry (partitioned by month) and the sweep's state.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Must match service/history/partitions.py (names and steps), which takes over after this.
_LOOKBACK = timedelta(days=400)
_AHEAD_DAYS = 7
_ROLLUP_COLUMNS = """
    device_id text COLLATE "C" NOT NULL,
    bucket timestamptz NOT NULL,
    n integer NOT NULL,
    temperature_count integer NOT NULL, temperature_sum float8, temperature_min float8, temperature_max float8,
    humidity_count integer NOT NULL, humidity_sum float8, humidity_min float8, humidity_max float8,
    voltage_count integer NOT NULL, voltage_sum float8, voltage_min float8, voltage_max float8,
    memory_free_count integer NOT NULL, memory_free_sum float8, memory_free_min bigint, memory_free_max bigint
"""


def _day(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _month(t: datetime) -> datetime:
    return _day(t).replace(day=1)


def _next_month(t: datetime) -> datetime:
    return (t.replace(day=28) + timedelta(days=4)).replace(day=1)


def _partition(table: str, lo: datetime, monthly: bool) -> None:
    hi = _next_month(lo) if monthly else lo + timedelta(days=1)
    name = f"{table}_p{lo:%Y%m}" if monthly else f"{table}_p{lo:%Y%m%d}"
    op.execute(f"CREATE TABLE {name} PARTITION OF {table} FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')")


def _starts(table: str, monthly: bool, now: datetime) -> list[datetime]:
    """The partitions to create: those holding rows of the last 400 days, and the next week's."""
    unit = "month" if monthly else "day"
    found = op.get_bind().execute(
        sa.text(
            f"SELECT DISTINCT date_trunc('{unit}', ts, 'UTC') AS s FROM {table} WHERE ts >= :since AND ts < :until"
        ),
        {"since": now - _LOOKBACK, "until": now + timedelta(days=_AHEAD_DAYS + 1)},
    )
    starts = {_month(r.s) if monthly else _day(r.s) for r in found}
    for ahead in range(-1, _AHEAD_DAYS + 1):
        day = _day(now) + timedelta(days=ahead)
        starts.add(_month(day) if monthly else day)
    return sorted(starts)


def _to_partitioned(table: str, key: str, monthly: bool, now: datetime) -> list[datetime]:
    op.execute(f"ALTER TABLE {table} RENAME TO {table}_unpartitioned")
    op.execute(f"ALTER TABLE {table}_unpartitioned RENAME CONSTRAINT pk_{table} TO pk_{table}_unpartitioned")
    op.execute(
        f"CREATE TABLE {table} (LIKE {table}_unpartitioned INCLUDING DEFAULTS INCLUDING STORAGE INCLUDING COMPRESSION,"
        f" CONSTRAINT pk_{table} PRIMARY KEY ({key})) PARTITION BY RANGE (ts)"
    )
    op.execute(f"CREATE TABLE {table}_default PARTITION OF {table} DEFAULT")
    starts = _starts(f"{table}_unpartitioned", monthly, now)
    for lo in starts:
        _partition(table, lo, monthly)
    op.execute(f"INSERT INTO {table} SELECT * FROM {table}_unpartitioned")
    op.execute(f"DROP TABLE {table}_unpartitioned")
    return starts


def _to_plain(table: str, key: str) -> None:
    op.execute(
        f"CREATE TABLE {table}_unpartitioned (LIKE {table} INCLUDING DEFAULTS INCLUDING STORAGE INCLUDING COMPRESSION)"
    )
    op.execute(f"INSERT INTO {table}_unpartitioned SELECT * FROM {table}")
    op.execute(f"DROP TABLE {table}")  # with its partitions
    op.execute(f"ALTER TABLE {table}_unpartitioned RENAME TO {table}")
    op.execute(f"ALTER TABLE {table} ADD CONSTRAINT pk_{table} PRIMARY KEY ({key})")


def upgrade() -> None:
    now = datetime.now(UTC)
    days = _to_partitioned("telemetry", "device_id, ts", monthly=False, now=now)
    op.execute("CREATE INDEX ix_telemetry_received_at ON telemetry USING brin (received_at) WITH (autosummarize = on)")
    _to_partitioned("relay_state_history", "device_id, relay_index, ts", monthly=True, now=now)

    months = sorted({_month(d) for d in days})
    for table in ("telemetry_rollup_1m", "telemetry_rollup_1h"):
        op.execute(
            f"CREATE TABLE {table} ({_ROLLUP_COLUMNS}, CONSTRAINT pk_{table} PRIMARY KEY (device_id, bucket))"
            " PARTITION BY RANGE (bucket)"
        )
        op.execute(f"CREATE TABLE {table}_default PARTITION OF {table} DEFAULT")
        for lo in months:
            hi = _next_month(lo)
            op.execute(
                f"CREATE TABLE {table}_p{lo:%Y%m} PARTITION OF {table}"
                f" FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')"
            )
    op.create_table(
        "telemetry_rollup_state",
        sa.Column("id", sa.SmallInteger(), nullable=False),
        sa.Column("received_through", sa.DateTime(timezone=True), nullable=False),
        sa.Column("raw_complete_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("swept_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_telemetry_rollup_state")),
    )
    op.execute("INSERT INTO telemetry_rollup_state (id, received_through, raw_complete_from) "
               "VALUES (1, '-infinity', '-infinity')")  # fmt: skip


def downgrade() -> None:
    op.drop_table("telemetry_rollup_state")
    op.execute("DROP TABLE telemetry_rollup_1h")
    op.execute("DROP TABLE telemetry_rollup_1m")
    _to_plain("relay_state_history", "device_id, relay_index, ts")
    _to_plain("telemetry", "device_id, ts")
