"""state tables rewritten in place: half of each page kept free for HOT updates (issues 12, 13, 17)

`telemetry_stats`, `rule_state` and `relays` hold one row per device (rule key, relay) that is
updated again and again, a stats row at every batch with its device's telemetry. None of their
indexes covers a column those updates change, so each update can be HOT (the new version on the
same page, no index entry) as long as the page has room for it; at the default fillfactor of 100
it seldom has, and every update wrote a new index entry and a new page until autovacuum came by
(the referee's telemetry scenario left 38 MB of `telemetry_stats` for 500 rows, half its updates
HOT). At 50 all of them are (docs/statistics.md). Existing pages are not rewritten: a row moves
to a page with room at its next update that does not fit where it is.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 22:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("telemetry_stats", "rule_state", "relays")


def upgrade() -> None:
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} SET (fillfactor = 50)")


def downgrade() -> None:
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} RESET (fillfactor)")
