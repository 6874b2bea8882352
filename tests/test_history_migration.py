"""Migration 0003 with rows in place: partitioned tables keep every row, and so does the downgrade."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from alembic import command

from service.storage import statements as sql
from service.storage.migrate import alembic_config
from tests.support.database import temporary_database

NOW = datetime.now(UTC).replace(microsecond=0)
TIMES = [
    NOW,
    NOW - timedelta(days=1),
    NOW - timedelta(days=100),
    datetime(1970, 1, 1, tzinfo=UTC),  # a device without a clock
    datetime(2099, 6, 1, tzinfo=UTC),  # a device with a wrong one
]


@pytest.fixture
def url() -> Iterator[str]:
    with temporary_database("autocore_mig3") as u:
        yield u


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def _fill(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        for i, ts in enumerate(TIMES):
            await conn.execute(
                "INSERT INTO telemetry VALUES ($1, $2, $3, 40.5, 3.3, 1000, '{\"rpm\": 7}', now())",
                f"D{i}",
                ts,
                20.0 + i,
            )
            await conn.execute("INSERT INTO relay_state_history VALUES ($1, 0, $2, true, 'manual', now())", f"D{i}", ts)
    finally:
        await conn.close()


async def _rows(url: str, table: str) -> list[tuple[object, ...]]:
    conn = await asyncpg.connect(url)
    try:
        return [tuple(r) for r in await conn.fetch(f"SELECT * FROM {table} ORDER BY device_id, ts")]
    finally:
        await conn.close()


async def _where(url: str, table: str) -> dict[datetime, str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(f"SELECT ts, tableoid::regclass::text AS part FROM {table}")
        return {r["ts"]: r["part"] for r in rows}
    finally:
        await conn.close()


async def _relkind(url: str, table: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        return str(await conn.fetchval("SELECT relkind::text FROM pg_class WHERE oid = to_regclass($1)", table))
    finally:
        await conn.close()


async def _write_like_the_writer(url: str) -> tuple[int, int]:
    """COPY into the partitioned parent, then the ON CONFLICT statements with a row stored already."""
    conn = await asyncpg.connect(url)
    try:
        received = NOW.timestamp()
        rows = [("W", NOW, 1.0, None, None, None, None, NOW), ("W", datetime(1971, 1, 1, tzinfo=UTC), 2.0,
                None, None, None, None, NOW)]  # fmt: skip
        await conn.copy_records_to_table("telemetry", records=rows, columns=sql.TELEMETRY_COLUMNS)
        await conn.copy_records_to_table(
            "relay_state_history", records=[("W", 1, NOW, True, None, NOW)], columns=sql.RELAY_HISTORY_COLUMNS
        )
        again = await conn.execute(
            sql.INSERT_TELEMETRY, ["W", "W"], [NOW, NOW + timedelta(seconds=1)], [9.0, 3.0], [None, None],
            [None, None], [None, None], [None, None], [received, received],
        )  # fmt: skip
        relay_again = await conn.execute(sql.INSERT_RELAY_HISTORY, ["W"], [1], [NOW], [False], [None], [received])
        return int(again.split()[-1]), int(relay_again.split()[-1])
    finally:
        await conn.close()


def test_upgrade_keeps_every_row_and_downgrade_too(url: str) -> None:
    cfg = alembic_config(url.replace("postgresql://", "postgresql+asyncpg://", 1))
    command.upgrade(cfg, "0001")
    run(_fill(url))
    before = {t: run(_rows(url, t)) for t in ("telemetry", "relay_state_history")}
    assert len(before["telemetry"]) == len(TIMES)

    command.upgrade(cfg, "0003")
    for table in ("telemetry", "relay_state_history"):
        assert run(_relkind(url, table)) == "p"
        assert run(_rows(url, table)) == before[table]
    placed = run(_where(url, "telemetry"))
    assert placed[NOW] == f"telemetry_p{NOW:%Y%m%d}"
    day = NOW - timedelta(days=100)
    assert placed[day] == f"telemetry_p{day:%Y%m%d}"  # a day that holds rows gets its partition
    assert placed[TIMES[3]] == placed[TIMES[4]] == "telemetry_default"  # no partition per bogus date
    assert run(_where(url, "relay_state_history"))[NOW] == f"relay_state_history_p{NOW:%Y%m}"

    # The writer's two paths against the partitioned tables: COPY, and ON CONFLICT for redeliveries.
    assert run(_write_like_the_writer(url)) == (1, 0)
    after = run(_rows(url, "telemetry"))
    assert len(after) == len(TIMES) + 3
    stored = {(r[0], r[1]): r[2] for r in after}  # type: ignore[index]
    assert stored[("W", NOW)] == 1.0  # the stored row stands; the redelivery changed nothing

    command.downgrade(cfg, "0001")
    for table in ("telemetry", "relay_state_history"):
        assert run(_relkind(url, table)) == "r"
    assert run(_rows(url, "telemetry")) == after
    assert len(run(_rows(url, "relay_state_history"))) == len(TIMES) + 1
