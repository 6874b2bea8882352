"""A message is acknowledged only once its row is committed: prove it by failing the commit."""

from __future__ import annotations

import asyncio

import asyncpg

from tests.conftest import ServiceFactory, eventually, via
from tests.support.proxy import CuttableProxy
from tests.support.publisher import Publisher


async def test_uncommitted_message_is_redelivered_and_stored_once(
    service: ServiceFactory, publisher: Publisher, db: asyncpg.Connection, ns: str, db_proxy: CuttableProxy,
    database_url: str,
) -> None:  # fmt: skip
    url = via(db_proxy, database_url)
    topic = f"{ns}/ESP32_001/telemetry"
    async with service(database_url=url, shutdown_grace_seconds=1) as svc:
        publisher.publish(topic, {"temperature": 1.0, "timestamp": "2025-05-01T00:00:00Z"})
        await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 1)

        db_proxy.cut()
        publisher.publish(topic, {"temperature": 2.0, "timestamp": "2025-05-01T00:00:01Z"})
        await eventually(lambda: not svc.runtime.ingestor.writer.healthy, timeout=15)
        health = await svc.client.get("/health/mqtt-monitor")
        assert health.status_code == 503
        assert health.json()["database_ok"] is False
        assert svc.runtime.ingestor.stats.messages_processed == 1
        assert svc.runtime.ingestor.in_flight == 1
    # The service stopped without committing, hence without acknowledging, the second message.
    assert await db.fetchval("SELECT count(*) FROM telemetry") == 1

    db_proxy.restore()
    async with service(database_url=url) as svc:
        # The broker delivers it again to the same persistent session.
        await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 1)
    rows = await db.fetch("SELECT temperature FROM telemetry ORDER BY ts")
    assert [r["temperature"] for r in rows] == [1.0, 2.0]


async def test_writes_resume_after_the_database_returns(
    service: ServiceFactory, publisher: Publisher, db: asyncpg.Connection, ns: str, db_proxy: CuttableProxy,
    database_url: str,
) -> None:  # fmt: skip
    topic = f"{ns}/ESP32_002/telemetry"
    async with service(database_url=via(db_proxy, database_url)) as svc:
        db_proxy.cut()
        publisher.publish_many([(topic, {"temperature": i, "timestamp": f"2025-05-01T00:00:{i:02d}Z"})
                                for i in range(10)])  # fmt: skip
        await eventually(lambda: not svc.runtime.ingestor.writer.healthy, timeout=15)
        assert await db.fetchval("SELECT count(*) FROM telemetry") == 0
        db_proxy.restore()
        await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 10, timeout=40)
        assert svc.runtime.ingestor.writer.healthy
        assert (await svc.client.get("/health/mqtt-monitor")).status_code == 200
    assert await db.fetchval("SELECT count(DISTINCT ts) FROM telemetry") == 10
    assert await db.fetchval("SELECT count(*) FROM telemetry") == 10


async def test_memory_stays_bounded_while_the_database_is_away(
    service: ServiceFactory, publisher: Publisher, db: asyncpg.Connection, ns: str, db_proxy: CuttableProxy,
    database_url: str,
) -> None:  # fmt: skip
    # Mosquitto with max_queued_messages 0 sends past our Receive Maximum; the service then stops
    # reading the socket, so what it holds is the window plus at most one read buffer.
    window, total = 100, 3000
    async with service(database_url=via(db_proxy, database_url), mqtt_receive_maximum=window) as svc:
        db_proxy.cut()
        stamps = [f"2025-07-01T00:{i // 60:02d}:{i % 60:02d}Z" for i in range(total)]
        messages = [(f"{ns}/D{i % 10}/telemetry", {"temperature": i, "timestamp": stamps[i]}) for i in range(total)]
        await asyncio.to_thread(publisher.publish_many, messages)
        await eventually(lambda: svc.runtime.ingestor.in_flight >= window, timeout=15)
        await asyncio.sleep(1.0)
        held = svc.runtime.ingestor.in_flight
        assert window <= held < window + 1000, held
        db_proxy.restore()
        await eventually(lambda: svc.runtime.ingestor.stats.messages_processed >= total, timeout=60)
    assert await db.fetchval("SELECT count(*) FROM telemetry") == total
    assert await db.fetchval("SELECT count(DISTINCT (device_id, ts)) FROM telemetry") == total
