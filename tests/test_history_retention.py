"""Partitions made ahead, rows moved out of the default partition, retention by whole partitions."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from alembic import command
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from service.config import Settings
from service.history import jobs, partitions, retention
from service.storage.migrate import alembic_config
from tests.support.database import temporary_database

ROOT = Path(__file__).resolve().parents[1]
TODAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


@pytest.fixture
def own_database() -> Iterator[str]:
    with temporary_database("autocore_ret") as url:
        yield url


@pytest.fixture
async def pg(own_database: str) -> AsyncIterator[tuple[AsyncEngine, asyncpg.Connection, str]]:
    async_url = own_database.replace("postgresql://", "postgresql+asyncpg://", 1)
    await asyncio.to_thread(command.upgrade, alembic_config(async_url), "head")
    engine = create_async_engine(async_url)
    conn = await asyncpg.connect(own_database)
    try:
        yield engine, conn, async_url
    finally:
        await conn.close()
        await engine.dispose()


def settings(url: str, **overrides: Any) -> Settings:
    return Settings(_env_file=None, database_url=url, **overrides)  # type: ignore[call-arg]


async def names(conn: asyncpg.Connection, parent: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = $1::regclass ORDER BY 1",
        parent,
    )
    return [r["relname"] for r in rows]


async def add_telemetry(conn: asyncpg.Connection, *times: datetime) -> None:
    await conn.executemany(
        "INSERT INTO telemetry (device_id, ts, temperature, received_at) VALUES ('D', $1, 1.0, now())",
        [(t,) for t in times],
    )


async def test_partitions_ahead_and_rows_moved_out_of_the_default(
    pg: tuple[AsyncEngine, asyncpg.Connection, str],
) -> None:
    engine, conn, _ = pg
    later = TODAY + timedelta(days=30)
    # A device whose clock runs a month ahead: no partition yet, so the default one keeps it.
    await add_telemetry(conn, later + timedelta(hours=5), later + timedelta(days=1, hours=1))
    assert await conn.fetchval("SELECT count(*) FROM telemetry_default") == 2

    async with engine.connect() as c:
        made = await partitions.ensure(c, now=later)
    assert f"telemetry_p{later:%Y%m%d}" in made
    have = await names(conn, "telemetry")
    for d in range(partitions.AHEAD_DAYS + 1):
        assert f"telemetry_p{later + timedelta(days=d):%Y%m%d}" in have
    assert f"relay_state_history_p{later:%Y%m}" in await names(conn, "relay_state_history")
    assert f"telemetry_rollup_1m_p{later:%Y%m}" in await names(conn, "telemetry_rollup_1m")
    # PostgreSQL refuses a partition whose rows sit in the default one: they were moved, not lost.
    assert await conn.fetchval("SELECT count(*) FROM telemetry_default") == 0
    placed = [r["p"] for r in await conn.fetch("SELECT tableoid::regclass::text AS p FROM telemetry ORDER BY ts")]
    assert placed == [f"telemetry_p{later:%Y%m%d}", f"telemetry_p{later + timedelta(days=1):%Y%m%d}"]
    async with engine.connect() as c:
        assert await partitions.ensure(c, now=later) == []  # idempotent


async def test_retention_drops_whole_partitions_and_keeps_the_default(
    pg: tuple[AsyncEngine, asyncpg.Connection, str],
) -> None:
    engine, conn, url = pg
    await add_telemetry(conn, TODAY + timedelta(hours=1), datetime(1970, 1, 1, tzinfo=UTC))
    await conn.execute(
        "INSERT INTO relay_state_history VALUES ('D', 0, $1, true, NULL, now())", TODAY + timedelta(hours=1)
    )
    future = TODAY + timedelta(days=45)
    old = future - timedelta(days=40)
    await conn.executemany(
        "INSERT INTO dead_letters (received_at, last_received_at, topic, payload, qos, stage, error_class,"
        " error_message, digest) VALUES ($1, $2, $3, '', 1, 'decode', 'E', 'e', '')",
        [(old, old, "a/old"), (old, future, "a/still-coming"), (future, future, "a/new")],
    )
    cfg = settings(url)
    async with engine.connect() as c:
        dry = await retention.run(c, cfg, dry_run=True, now=future)
    assert any(f"would drop partition telemetry_p{TODAY:%Y%m%d}" in line for line in dry.lines)
    assert "would delete 1 rows of dead_letters" in dry.lines
    assert "would delete 0 rows of alerts" in dry.lines
    assert await conn.fetchval("SELECT count(*) FROM telemetry") == 2  # a dry run changes nothing
    assert await conn.fetchval("SELECT count(*) FROM dead_letters") == 3

    async with engine.connect() as c:
        report = await retention.run(c, cfg, now=future)
    assert f"telemetry_p{TODAY:%Y%m%d}" in report.dropped
    assert not [n for n in await names(conn, "telemetry") if n < f"telemetry_p{future - timedelta(days=30):%Y%m%d}"
                and n != "telemetry_default"]  # fmt: skip
    # Relay history is kept a year, rollups 400 days: still there.
    assert await conn.fetchval("SELECT count(*) FROM relay_state_history") == 1
    # The 1970 row is in the default partition, which retention never trims.
    assert await conn.fetchval("SELECT count(*) FROM telemetry") == 1
    assert any("telemetry_default: 1 rows outside the partitions" in line for line in report.lines)
    topics = sorted(r["topic"] for r in await conn.fetch("SELECT topic FROM dead_letters"))
    assert topics == ["a/new", "a/still-coming"]
    # The rollups must never recompute a bucket whose raw rows are gone.
    complete = await conn.fetchval("SELECT raw_complete_from FROM telemetry_rollup_state")
    assert complete > TODAY

    # 0 keeps forever.
    async with engine.connect() as c:
        forever = await retention.run(c, settings(url, relay_history_retention_days=0), now=TODAY + timedelta(days=800))
    assert "relay_state_history: kept forever" in forever.lines
    assert await conn.fetchval("SELECT count(*) FROM relay_state_history") == 1


async def test_resolved_alerts_are_trimmed(pg: tuple[AsyncEngine, asyncpg.Connection, str]) -> None:
    engine, conn, url = pg
    now = datetime.now(UTC)
    # Resolved 100 days ago (past ALERT_RETENTION_DAYS), resolved now, and open: only the first goes.
    await conn.executemany(
        "INSERT INTO alerts (device_id, kind, key, severity, message, resolved_at)"
        " VALUES ($1, 'offline', '', 'warning', 'x', $2)",
        [("A1", now - timedelta(days=100)), ("A2", now), ("A3", None)],
    )
    async with engine.connect() as c:
        report = await retention.run(c, settings(url), now=now)
    assert report.deleted["alerts"] == 1
    assert await conn.fetchval("SELECT count(*) FROM alerts") == 2


async def test_one_replica_at_a_time(pg: tuple[AsyncEngine, asyncpg.Connection, str]) -> None:
    engine, _, _ = pg
    async with jobs.exclusive(engine, jobs.MAINTENANCE_LOCK) as first:
        assert first is not None
        async with jobs.exclusive(engine, jobs.MAINTENANCE_LOCK) as second:
            assert second is None
    async with jobs.exclusive(engine, jobs.MAINTENANCE_LOCK) as again:
        assert again is not None


def test_command_line_dry_run(pg: tuple[AsyncEngine, asyncpg.Connection, str]) -> None:
    _, _, url = pg
    env = {**os.environ, "DATABASE_URL": url, "TELEMETRY_RETENTION_DAYS": "7"}
    out = subprocess.run(
        [sys.executable, "-m", "service", "retention", "--dry-run"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert "telemetry_default" not in out.stdout  # nothing outside the partitions
    assert "would delete 0 rows of dead_letters" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "service", "retention"],
        cwd=ROOT, env={**env, "TELEMETRY_RETENTION_DAYS": "-1"}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode != 0
    assert "TELEMETRY_RETENTION_DAYS" in bad.stderr


async def test_drop_gives_up_instead_of_queueing_ingestion(
    pg: tuple[AsyncEngine, asyncpg.Connection, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, conn, url = pg
    monkeypatch.setattr(partitions, "LOCK_ATTEMPTS", 2)
    monkeypatch.setattr(partitions, "LOCK_RETRY_DELAY", 0.01)
    monkeypatch.setattr(partitions, "LOCK_TIMEOUT", "50ms")
    future = TODAY + timedelta(days=45)
    # A long report holds the table: the drop waits at most LOCK_TIMEOUT per attempt, then gives up.
    reader = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    tx = reader.transaction()
    await tx.start()
    await reader.fetch("SELECT * FROM telemetry LIMIT 1")
    async with engine.connect() as c:
        report = await retention.run(c, settings(url), now=future)
    assert report.dropped == []
    assert f"telemetry_p{TODAY:%Y%m%d}" in await names(conn, "telemetry")
    # Meanwhile the writer's inserts were never queued behind a granted lock: one goes in now.
    await add_telemetry(conn, TODAY + timedelta(hours=2))
    await tx.rollback()
    await reader.close()
    async with engine.connect() as c:
        report = await retention.run(c, settings(url), now=future)
    assert f"telemetry_p{TODAY:%Y%m%d}" in report.dropped


async def test_the_sweep_summarizes_the_filled_brin_ranges_and_leaves_the_last_one(
    pg: tuple[AsyncEngine, asyncpg.Connection, str],
) -> None:
    # The rollup sweep finds the rows received since the last one through the BRIN on received_at,
    # which reads every unsummarized range: autovacuum summarizes a filled range only at its next
    # round, so without this each sweep would read the whole tail written meanwhile.
    engine, conn, url = pg
    partition = f"telemetry_p{TODAY:%Y%m%d}"
    index = await conn.fetchval(
        "SELECT ic.relname FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid"
        " JOIN pg_am am ON am.oid = ic.relam WHERE am.amname = 'brin' AND i.indrelid = $1::regclass",
        partition,
    )
    # Three ranges of 128 pages and part of a fourth (about 135 rows a page).
    await conn.execute(
        "INSERT INTO telemetry (device_id, ts, temperature, received_at)"
        " SELECT 'D' || (i % 50), $1::timestamptz + i * interval '1 ms', i, now() + i * interval '1 us'"
        " FROM generate_series(1, 60000) i",
        TODAY + timedelta(hours=1),
    )
    blocks = await conn.fetchval("SELECT pg_relation_size($1::regclass) / 8192", partition)
    assert blocks > 3 * 128 and blocks % 128
    # Autovacuum must not summarize them first: this test is about the sweep doing it.
    await conn.execute(f"ALTER TABLE {partition} SET (autovacuum_enabled = false)")
    await conn.execute(
        "SELECT brin_desummarize_range($1::regclass, b) FROM generate_series(0, $2::int8, 128) b", index, blocks
    )
    checked: dict[str, int] = {}
    # A partition locked by someone else (an autovacuum, say) is left for the next sweep, not waited for.
    holder = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    tx = holder.transaction()
    await tx.start()
    await holder.execute(f"LOCK TABLE {partition} IN SHARE UPDATE EXCLUSIVE MODE")
    async with engine.connect() as c:
        assert await partitions.summarize_filled(c, checked) == 0
    assert index not in checked
    await tx.rollback()
    await holder.close()
    async with engine.connect() as c:
        assert await partitions.summarize_filled(c, checked) == blocks // 128
        assert checked[index] == blocks // 128 * 128
        assert await partitions.summarize_filled(c, checked) == 0  # nothing filled since
    # Only the last, partial range is left unsummarized (inserts into it update no summary).
    assert await conn.fetchval("SELECT brin_summarize_new_values($1::regclass)", index) == 1
