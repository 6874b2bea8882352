from __future__ import annotations

import asyncio

import asyncpg

from tests.conftest import ServiceFactory, eventually
from tests.support.broker import Broker
from tests.support.publisher import Publisher


async def test_live_and_ready_follow_the_broker(service: ServiceFactory, own_broker: Broker) -> None:
    async with service(broker_port=own_broker.port) as svc:
        assert (await svc.client.get("/health/live")).json() == {"status": "alive"}
        ready = await svc.client.get("/health/ready")
        assert (ready.status_code, ready.json()) == (200, {"ready": True, "reasons": []})
        own_broker.kill()
        await eventually(lambda: not svc.runtime.transport.state.connected, timeout=10)
        ready = await svc.client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["reasons"] == ["not connected to the MQTT broker"]
        assert (await svc.client.get("/health/live")).status_code == 200
        own_broker.start()
        await eventually(lambda: svc.runtime.transport.state.connected, timeout=15)
        assert (await svc.client.get("/health/ready")).status_code == 200


async def test_silent_feed_turns_degraded(service: ServiceFactory, publisher: Publisher, ns: str) -> None:
    async with service(health_stale_after_seconds=1) as svc:
        publisher.publish(f"{ns}/D1/telemetry", {"temperature": 1})
        await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 1)
        assert (await svc.client.get("/health/mqtt-monitor")).status_code == 200
        resp = await eventually(lambda: _degraded(svc.client), timeout=10, interval=0.2)
        body = resp.json()
        assert body["broker_connected"] is True
        assert "no message for" in body["reasons"][0]
        publisher.publish(f"{ns}/D1/telemetry", {"temperature": 2})
        await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 2)
        assert (await svc.client.get("/health/mqtt-monitor")).json()["status"] == "healthy"


async def _degraded(client: object) -> object:
    resp = await client.get("/health/mqtt-monitor")  # type: ignore[attr-defined]
    return resp if resp.status_code == 503 and resp.json()["status"] == "degraded" else None


async def test_no_devices_no_staleness(service: ServiceFactory, db: asyncpg.Connection) -> None:
    # Nothing known yet (the db fixture empties the tables): silence is not a symptom.
    async with service(health_stale_after_seconds=0.5) as svc:
        await asyncio.sleep(1.0)
        assert (await svc.client.get("/health/mqtt-monitor")).json()["status"] == "healthy"
