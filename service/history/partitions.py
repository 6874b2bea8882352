"""Range partitions of the history tables: created ahead of time, dropped whole.

Each partitioned table has one partition per day (telemetry) or month (the others), named
`<table>_pYYYYMMDD` / `<table>_pYYYYMM` (UTC), plus `<table>_default` for timestamps outside them:
a device whose clock says 1970 or 2099 is stored there, and never makes a partition of its own.
Partitions of other names (made by an operator) are left alone.

A partition is made as a table of its own and then attached: ATTACH takes SHARE UPDATE EXCLUSIVE
on the parent, which does not wait for (or stop) the writer's inserts, where CREATE TABLE ...
PARTITION OF would take ACCESS EXCLUSIVE. Rows for the new range that already sit in the default
partition (PostgreSQL refuses the attach while they do) are moved into it first, in the same short
transaction, while the default partition is locked.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

log = logging.getLogger(__name__)

# Partitions exist this many days ahead: a job that fails for days still finds them made.
AHEAD_DAYS = 7
# DDL waits at most this long for its lock, then gives up and tries again later: while it waits,
# PostgreSQL queues the writer's inserts behind it, so this bounds the stall of ingestion.
LOCK_TIMEOUT = "200ms"
LOCK_ATTEMPTS = 5
LOCK_RETRY_DELAY = 0.5
# The rollup sweep's BRIN upkeep waits at most this long for a partition (an autovacuum may hold
# it), then leaves it to the next sweep: shorter than deadlock_timeout, so autovacuum is never
# cancelled on our account.
SUMMARIZE_LOCK_TIMEOUT = "50ms"


@dataclass(frozen=True)
class Family:
    """A partitioned table: its name, partition key and step (a day or a month)."""

    table: str
    column: str
    monthly: bool

    @property
    def default(self) -> str:
        return f"{self.table}_default"

    def start(self, t: datetime) -> datetime:
        day = t.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        return day.replace(day=1) if self.monthly else day

    def following(self, lo: datetime) -> datetime:
        if self.monthly:
            return (lo.replace(day=28) + timedelta(days=4)).replace(day=1)
        return lo + timedelta(days=1)

    def name(self, lo: datetime) -> str:
        return f"{self.table}_p{lo:%Y%m}" if self.monthly else f"{self.table}_p{lo:%Y%m%d}"

    def parse(self, name: str) -> datetime | None:
        """The lower bound of one of our partitions, from its name; None for any other name."""
        digits = 6 if self.monthly else 8
        found = re.fullmatch(rf"{re.escape(self.table)}_p(\d{{{digits}}})", name)
        if not found:
            return None
        fmt = "%Y%m" if self.monthly else "%Y%m%d"
        try:
            return datetime.strptime(found[1], fmt).replace(tzinfo=UTC)
        except ValueError:
            return None


TELEMETRY = Family("telemetry", "ts", monthly=False)
RELAY_HISTORY = Family("relay_state_history", "ts", monthly=True)
ROLLUP_MINUTE = Family("telemetry_rollup_1m", "bucket", monthly=True)
ROLLUP_HOUR = Family("telemetry_rollup_1h", "bucket", monthly=True)
FAMILIES = (TELEMETRY, RELAY_HISTORY, ROLLUP_MINUTE, ROLLUP_HOUR)


def is_partition(table_name: str) -> bool:
    """A partition (ours or the default one) of a partitioned table: not in the models (Alembic skips it)."""
    return any(table_name == f.default or f.parse(table_name) is not None for f in FAMILIES)


@dataclass(frozen=True)
class Partition:
    name: str
    lo: datetime
    hi: datetime


async def partitions(conn: AsyncConnection, family: Family) -> list[Partition]:
    """Our partitions of the family, oldest first (not the default one, nor an operator's)."""
    result = await conn.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = to_regclass(:t)"
        ),
        {"t": family.table},
    )
    found = []
    for (name,) in result:
        lo = family.parse(name)
        if lo is not None:
            found.append(Partition(name, lo, family.following(lo)))
    return sorted(found, key=lambda p: p.lo)


def wanted(family: Family, now: datetime) -> list[datetime]:
    """Lower bounds of the partitions that must exist: today's (or this month's) to AHEAD_DAYS on."""
    starts = {family.start(now + timedelta(days=d)) for d in range(AHEAD_DAYS + 1)}
    return sorted(starts)


async def with_lock_retries(conn: AsyncConnection, what: str, statements: list[tuple[str, dict[str, object]]]) -> bool:
    """Run the statements in one transaction under LOCK_TIMEOUT; retry a few times; False if never locked."""
    for attempt in range(1, LOCK_ATTEMPTS + 1):
        try:
            async with conn.begin():
                await conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
                for sql, params in statements:
                    await conn.execute(text(sql), params)
            return True
        except DBAPIError as exc:
            if not _lock_not_available(exc):
                raise
            log.info("%s: lock not granted within %s (attempt %d of %d)", what, LOCK_TIMEOUT, attempt, LOCK_ATTEMPTS)
            await asyncio.sleep(LOCK_RETRY_DELAY * attempt)
    log.warning("%s: lock not granted in %d attempts; the next run tries again", what, LOCK_ATTEMPTS)
    return False


def _lock_not_available(exc: DBAPIError) -> bool:
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(getattr(orig, "__cause__", None), "sqlstate", None)
    return code == "55P03"


async def create(conn: AsyncConnection, family: Family, lo: datetime) -> bool:
    """Make and attach one partition, moving its rows out of the default partition first."""
    hi = family.following(lo)
    name = family.name(lo)
    bounds: dict[str, object] = {"lo": lo, "hi": hi}
    return await with_lock_retries(
        conn,
        f"create partition {name}",
        [
            # First: no row for the range can land in the default partition between the move and the
            # attach (which would lock it anyway). Only inserts of out-of-range timestamps wait.
            (f"LOCK TABLE {family.default} IN ACCESS EXCLUSIVE MODE", {}),
            (
                f"CREATE TABLE {name} (LIKE {family.table} INCLUDING DEFAULTS INCLUDING STORAGE INCLUDING COMPRESSION)",
                {},
            ),
            (
                f"WITH moved AS (DELETE FROM {family.default} WHERE {family.column} >= :lo AND {family.column} < :hi"
                f" RETURNING *) INSERT INTO {name} SELECT * FROM moved",
                bounds,
            ),
            # DDL takes no parameters: the bounds are ours (datetimes), written out in ISO 8601.
            (
                f"ALTER TABLE {family.table} ATTACH PARTITION {name}"
                f" FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')",
                {},
            ),
        ],
    )


async def ensure(conn: AsyncConnection, now: datetime | None = None) -> list[str]:
    """Create the missing partitions of every family up to AHEAD_DAYS from now; names of those made."""
    now = now or datetime.now(UTC)
    made: list[str] = []
    for family in FAMILIES:
        async with conn.begin():
            have = {p.lo for p in await partitions(conn, family)}
        for lo in wanted(family, now):
            if lo not in have and await create(conn, family, lo):
                made.append(family.name(lo))
    if made:
        log.info("created partitions %s", ", ".join(made))
    return made


async def drop(conn: AsyncConnection, partition: Partition, also: list[tuple[str, dict[str, object]]]) -> bool:
    """Drop one partition whole (after `also`, in the same transaction): no row-by-row DELETE, no bloat.

    DETACH ... CONCURRENTLY is refused while a default partition exists, so this takes ACCESS
    EXCLUSIVE on the parent for a moment, bounded by LOCK_TIMEOUT while it waits.
    """
    # `also` first: a row lock it waits for (the rollup sweep's) must not be waited for while this
    # transaction holds the parent, which would stall the inserts (and deadlock with the sweep).
    return await with_lock_retries(
        conn, f"drop partition {partition.name}", [*also, (f"DROP TABLE {partition.name}", {})]
    )


async def summarize(conn: AsyncConnection, now: datetime | None = None) -> int:
    """Summarize the BRIN ranges of telemetry partitions no longer written to, the last partial one too.

    VACUUM (and autosummarize) leave a partition's last, partial block range unsummarized, and a
    BRIN scan reads every unsummarized range: without this, finding the rows received since the
    last rollup sweep would read the tail of every partition in a chart's window. Summarizing a
    range where rows still arrive would make each insert update its summary, so only partitions
    whose day is over (by an hour) are summarized; the day being written keeps its tail unsummarized.
    """
    now = now or datetime.now(UTC)
    async with conn.begin():
        done = [p.name for p in await partitions(conn, TELEMETRY) if p.hi <= now - timedelta(hours=1)]
        if not done:
            return 0
        result = await conn.execute(
            text(
                "SELECT coalesce(sum(brin_summarize_new_values(i.indexrelid)), 0) FROM pg_index i"
                " JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_am am ON am.oid = ic.relam"
                " WHERE am.amname = 'brin'"
                " AND i.indrelid = ANY(SELECT to_regclass(n) FROM unnest(CAST(:names AS text[])) n)"
            ),
            {"names": done},
        )
        return int(result.scalar() or 0)


async def summarize_filled(conn: AsyncConnection, checked: dict[str, int], now: datetime | None = None) -> int:
    """Summarize the full BRIN block ranges of the telemetry partitions still written to (and the
    default one); returns how many were summarized. `checked`: per index, the block up to which
    its ranges were looked at (kept by the caller between sweeps, so each range is looked at once).

    autosummarize asks autovacuum to summarize a range once the table grows past it, which happens
    at its next round (autovacuum_naptime, a minute by default). Meanwhile a BRIN scan reads every
    unsummarized range: the rollup sweep would read the whole tail written since, at every sweep.
    A range is summarized here once all its pages exist (rows still arriving in it widen its
    summary on insert; the last, partial range is left alone, so the inserts there cost nothing).
    Summarizing takes SHARE UPDATE EXCLUSIVE on the partition, which inserts do not wait for;
    a partition whose lock is not granted within SUMMARIZE_LOCK_TIMEOUT waits for the next sweep.
    """
    now = now or datetime.now(UTC)
    async with conn.begin():
        written = [p.name for p in await partitions(conn, TELEMETRY) if p.hi > now - timedelta(hours=1)]
        result = await conn.execute(
            text(
                "SELECT ic.relname, pg_relation_size(i.indrelid) / current_setting('block_size')::int,"
                " coalesce((SELECT option_value::int FROM pg_options_to_table(ic.reloptions)"
                "           WHERE option_name = 'pages_per_range'), 128)"
                " FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_am am ON am.oid = ic.relam"
                " WHERE am.amname = 'brin'"
                " AND i.indrelid = ANY(SELECT to_regclass(n) FROM unnest(CAST(:names AS text[])) n)"
            ),
            {"names": [*written, TELEMETRY.default]},
        )
        indexes = [(str(name), int(blocks), int(per_range)) for name, blocks, per_range in result]
    done = 0
    for name, blocks, per_range in indexes:
        full = blocks // per_range * per_range  # the ranges below this block are complete
        start = checked.get(name, 0)
        if full <= start:
            continue
        try:
            async with conn.begin():
                await conn.execute(text(f"SET LOCAL lock_timeout = '{SUMMARIZE_LOCK_TIMEOUT}'"))
                summarized = await conn.execute(
                    text(
                        "SELECT coalesce(sum(brin_summarize_range(to_regclass(:index), b)), 0)"
                        " FROM generate_series(CAST(:start AS int8), :full - 1, :step) b"
                    ),
                    {"index": name, "start": start, "full": full, "step": per_range},
                )
                done += int(summarized.scalar() or 0)
        except DBAPIError as exc:
            if not _lock_not_available(exc):
                raise
            log.debug("summarize %s: lock not granted within %s", name, SUMMARIZE_LOCK_TIMEOUT)
            continue
        checked[name] = full
    return done
