"""Rollups equal a GROUP BY over the raw rows (late and redelivered samples too); reads agree either way."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from alembic import command

from service.history import jobs, rollups
from service.storage import queries
from service.storage.migrate import alembic_config
from tests.conftest import RunningService, ServiceFactory, eventually
from tests.support.database import temporary_database
from tests.support.publisher import Publisher

# Three hours back from the last whole hour: in today's or yesterday's partition.
BASE = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
METRIC_COLUMNS = [f"{m}_{p}" for m in rollups.METRICS for p in ("count", "sum", "min", "max")]


@pytest.fixture
def own_database() -> Iterator[str]:
    with temporary_database("autocore_roll") as url:
        command.upgrade(alembic_config(url.replace("postgresql://", "postgresql+asyncpg://", 1)), "head")
        yield url


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def sample(ns: str, device: str, t: datetime, i: int, value: float | None = None) -> tuple[str, dict[str, Any]]:
    body: dict[str, Any] = {"timestamp": iso(t), "temperature": value if value is not None else 20 + math.sin(i) * 5,
                            "voltage": 3.3 + (i % 7) / 100, "memory_free": 100_000 + i * 13}  # fmt: skip
    if i % 3:
        body["humidity"] = 40.0 + (i % 11) * 0.7  # a metric missing from some rows: NULL, not counted
    return f"{ns}/{device}/telemetry", body


async def publish(svc: RunningService, publisher: Publisher, messages: list[tuple[str, dict[str, Any]]]) -> None:
    stats = svc.runtime.ingestor.stats
    target = stats.messages_processed + len(messages)
    await asyncio.to_thread(publisher.publish_many, messages)
    await eventually(lambda: stats.messages_processed >= target, timeout=30)


async def sweep(svc: RunningService) -> rollups.Sweep | None:
    async with svc.runtime.engine.connect() as conn:
        # Settled at once: the test waited for the commits.
        return await rollups.sweep(conn, settle=0.0)


def close(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-9)
    return bool(a == b)


def same_rows(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        bad = {k: (g[k], w[k]) for k in g if not close(g[k], w[k])}
        assert not bad, (g.get("start") or g.get("bucket"), bad)


async def rollups_match_raw(conn: asyncpg.Connection) -> int:
    """Each rollup table against the GROUP BY over the raw table that it stands for."""
    aggregates = ", ".join(f"count({m}), sum({m})::float8, min({m}), max({m})" for m in rollups.METRICS)
    total = 0
    for width, table in (("1 minute", "telemetry_rollup_1m"), ("1 hour", "telemetry_rollup_1h")):
        raw = await conn.fetch(
            f"SELECT device_id, date_bin('{width}', ts, $1) AS bucket, count(*) AS n, {aggregates} "
            "FROM telemetry GROUP BY 1, 2 ORDER BY 1, 2",
            rollups.ORIGIN,
        )
        rolled = await conn.fetch(
            f"SELECT device_id, bucket, n, {', '.join(METRIC_COLUMNS)} FROM {table} ORDER BY 1, 2"
        )
        same_rows([dict(zip(r.keys(), r.values(), strict=True)) for r in rolled],
                  [dict(zip(rolled[0].keys(), r.values(), strict=True)) for r in raw])  # fmt: skip
        total += len(raw)
    return total


WINDOWS: list[tuple[datetime | None, datetime | None]] = [
    (None, None),
    (BASE, BASE + timedelta(hours=2)),
    # Not on a minute or hour: the partial buckets at both ends come from the raw rows.
    (BASE + timedelta(minutes=7, seconds=30), BASE + timedelta(hours=2, minutes=10, seconds=13)),
    (BASE + timedelta(minutes=61), None),
]
WIDTHS = [timedelta(minutes=1), timedelta(minutes=5), timedelta(hours=1), timedelta(hours=2), timedelta(days=1),
          timedelta(seconds=90)]  # fmt: skip


async def reads_agree(svc: RunningService, device: str) -> None:
    """The rollup-backed reads give the figures of the raw aggregation, for every width and window."""
    async with svc.runtime.sessions() as session:
        for width in WIDTHS:
            for start, end in WINDOWS:
                fast = await queries.telemetry_buckets(session, device, width, start, end, 1000)
                raw = await queries.telemetry_buckets(session, device, width, start, end, 1000, use_rollups=False)
                assert raw, (width, start, end)
                same_rows(fast, raw)


async def test_rollups_equal_raw_after_late_and_redelivered_samples(
    service: ServiceFactory, publisher: Publisher, own_database: str, ns: str
) -> None:
    async_url = own_database.replace("postgresql://", "postgresql+asyncpg://", 1)
    conn = await asyncpg.connect(own_database)
    async with service(database_url=async_url, rollup_interval_seconds=3600) as svc:
        first = [sample(ns, "D1", BASE + timedelta(seconds=20 * i), i) for i in range(450)]  # 2.5 hours
        first += [sample(ns, "D2", BASE + timedelta(minutes=i), i) for i in range(0, 150, 7)]
        await publish(svc, publisher, first)
        swept = await sweep(svc)
        assert swept is not None and swept.minutes > 0 and swept.hours > 0
        assert await rollups_match_raw(conn) > 0
        await reads_agree(svc, "D1")

        # Late samples into minutes and hours already rolled up, messages redelivered (stored once),
        # and a second message for a stored (device, ts) with another value (the first one stands).
        late = [sample(ns, "D1", BASE + timedelta(minutes=3 * i, seconds=7), 1000 + i) for i in range(40)]
        again = first[100:160]
        clash = [sample(ns, "D1", BASE + timedelta(seconds=20 * i), i, value=999.0) for i in range(200, 210)]
        before = await conn.fetchval("SELECT count(*) FROM telemetry")
        await publish(svc, publisher, late + again + clash)
        assert await conn.fetchval("SELECT count(*) FROM telemetry") == before + len(late)

        # Not swept yet: the reads find the buckets that changed since and aggregate those raw.
        await reads_agree(svc, "D1")
        with pytest.raises(AssertionError):
            await rollups_match_raw(conn)  # (the test can fail: the rollups are behind here)
        await sweep(svc)
        assert await rollups_match_raw(conn) > 0
        await reads_agree(svc, "D1")
        assert await sweep(svc) is not None  # nothing new: a sweep that changes nothing
        assert await rollups_match_raw(conn) > 0

        # The first sweep after the migration (nothing rolled up yet) takes one pass over everything.
        await conn.execute("TRUNCATE telemetry_rollup_1m, telemetry_rollup_1h")
        await conn.execute("UPDATE telemetry_rollup_state SET received_through = '-infinity'")
        assert await sweep(svc) is not None
        assert await rollups_match_raw(conn) > 0
        await reads_agree(svc, "D1")

        # The HTTP answer is read from the rollups: a rollup row changed by hand shows through.
        hour = BASE + timedelta(hours=1)
        await conn.execute(
            "UPDATE telemetry_rollup_1h SET temperature_max = 1e6 WHERE device_id = 'D1' AND bucket = $1", hour
        )
        items = (await svc.client.get("/devices/D1/telemetry", params={"bucket": "1h"})).json()["items"]
        assert {i["start"]: i["metrics"]["temperature"]["max"] for i in items}[iso(hour).replace(".000", "")] == 1e6
        # ... and a bucket of 90 s is not (no rollup divides it): the raw rows' figure.
        items = (await svc.client.get("/devices/D1/telemetry", params={"bucket": "90s"})).json()["items"]
        assert max(i["metrics"]["temperature"]["max"] for i in items) < 1e6
    await conn.close()


async def test_one_sweeper_at_a_time(service: ServiceFactory, own_database: str) -> None:
    async_url = own_database.replace("postgresql://", "postgresql+asyncpg://", 1)
    conn = await asyncpg.connect(own_database)
    async with service(database_url=async_url, mqtt_monitor_enabled=False, rollup_interval_seconds=3600) as svc:
        # The service sweeps once at start.
        await eventually(lambda: conn.fetchval("SELECT swept_at IS NOT NULL FROM telemetry_rollup_state"))
        engine, settings = svc.runtime.engine, svc.runtime.settings
        async with jobs.exclusive(engine, jobs.ROLLUP_LOCK) as held:
            assert held is not None
            assert await jobs.roll_up(engine, settings) is None  # another replica is sweeping
        assert await jobs.roll_up(engine, settings) is not None
    await conn.close()
