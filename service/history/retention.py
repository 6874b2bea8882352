"""Retention: drop whole partitions older than their table's setting; trim dead letters and alerts.

Days are counted back from now; 0 keeps forever. A partition goes once all of its range is older
than the cut-off (so up to a day, or a month, more than the setting is kept). The default
partitions are never trimmed: what sits there has a timestamp the device made up (1970, 2099), and
is kept for an operator to look at (`retention --dry-run` counts it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from service.config import Settings
from service.history import partitions as parts
from service.history.partitions import Family, Partition

log = logging.getLogger(__name__)

# Rows deleted per transaction from the tables that are not partitioned: short transactions, and
# autovacuum keeps up.
_CHUNK = 5_000


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    deleted: dict[str, int] = field(default_factory=dict)

    def say(self, line: str) -> None:
        self.lines.append(line)
        log.info("retention: %s", line)


def _days(settings: Settings) -> dict[Family, int]:
    return {
        parts.TELEMETRY: settings.telemetry_retention_days,
        parts.RELAY_HISTORY: settings.relay_history_retention_days,
        parts.ROLLUP_MINUTE: settings.rollup_retention_days,
        parts.ROLLUP_HOUR: settings.rollup_retention_days,
    }


async def expired(conn: AsyncConnection, family: Family, days: int, now: datetime) -> list[Partition]:
    if days == 0:
        return []
    cutoff = now - timedelta(days=days)
    async with conn.begin():
        return [p for p in await parts.partitions(conn, family) if p.hi <= cutoff]


async def _scalar(conn: AsyncConnection, sql: str, params: dict[str, object] | None = None) -> object:
    async with conn.begin():
        return (await conn.execute(text(sql), params or {})).scalar()


async def _delete_chunks(conn: AsyncConnection, table: str, where: str, params: dict[str, object]) -> int:
    total = 0
    while True:
        async with conn.begin():
            result = await conn.execute(
                text(f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE {where} LIMIT {_CHUNK})"),
                params,
            )
        n = result.rowcount or 0
        total += n
        if n < _CHUNK:
            return total


async def run(
    conn: AsyncConnection, settings: Settings, *, dry_run: bool = False, now: datetime | None = None
) -> Report:
    """One pass. `conn` holds no transaction; each step commits on its own."""
    now = now or datetime.now(UTC)
    report = Report()
    for family, days in _days(settings).items():
        if days == 0:
            report.say(f"{family.table}: kept forever")
            continue
        for p in await expired(conn, family, days, now):
            rows = await _scalar(
                conn, "SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(:t)", {"t": p.name}
            )
            estimate = f"about {rows} rows" if isinstance(rows, int) and rows >= 0 else "rows not counted yet"
            if dry_run:
                report.say(f"would drop partition {p.name} ({p.lo:%Y-%m-%d} to {p.hi:%Y-%m-%d}, {estimate})")
                continue
            also: list[tuple[str, dict[str, object]]] = []
            if family is parts.TELEMETRY:
                # Buckets before this have lost their raw rows: the rollup sweep must never
                # recompute them from what is left (see rollups.py).
                also.append(
                    (
                        "UPDATE telemetry_rollup_state SET raw_complete_from = GREATEST(raw_complete_from, :hi)",
                        {"hi": p.hi},
                    )
                )
            if await parts.drop(conn, p, also):
                report.dropped.append(p.name)
                report.say(f"dropped partition {p.name} ({p.lo:%Y-%m-%d} to {p.hi:%Y-%m-%d}, {estimate})")
        outside = await _scalar(conn, f"SELECT count(*) FROM {family.default}")
        if outside:
            report.say(f"{family.default}: {outside} rows outside the partitions (kept; see docs/retention.md)")

    if settings.dead_letter_retention_days:
        cutoff = now - timedelta(days=settings.dead_letter_retention_days)
        # received_at <= last_received_at: the first condition uses the index, the second keeps a
        # dead letter that is still being received.
        where = "received_at < :cutoff AND last_received_at < :cutoff"
        await _trim(conn, report, "dead_letters", where, {"cutoff": cutoff}, dry_run)
    else:
        report.say("dead_letters: kept forever")

    if settings.alert_retention_days:
        cutoff = now - timedelta(days=settings.alert_retention_days)
        await _trim(conn, report, "alerts", "resolved_at < :cutoff", {"cutoff": cutoff}, dry_run)
    else:
        report.say("alerts: kept forever")
    return report


async def _trim(
    conn: AsyncConnection, report: Report, table: str, where: str, params: dict[str, object], dry_run: bool
) -> None:
    if dry_run:
        n = await _scalar(conn, f"SELECT count(*) FROM {table} WHERE {where}", params)
        report.say(f"would delete {n} rows of {table}")
        return
    n = await _delete_chunks(conn, table, where, params)
    report.deleted[table] = n
    if n:
        report.say(f"deleted {n} rows of {table}")
