"""Liveness, readiness and the monitor's health against a real broker and database that come and go."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import httpx

from tests.conftest import ServiceFactory, eventually, via
from tests.support.broker import Broker
from tests.support.proxy import CuttableProxy
from tests.support.publisher import Publisher


async def test_live_ready_and_health_follow_the_broker(service: ServiceFactory, own_broker: Broker, ns: str) -> None:
    async with service(broker_port=own_broker.port) as svc:
        c = svc.client
        assert (await c.get("/health/live")).json() == {"status": "alive"}
        ready = await c.get("/health/ready")
        assert (ready.status_code, ready.json()) == (200, {"ready": True, "reasons": []})
        health = await c.get("/health/mqtt-monitor")
        body = health.json()
        assert (health.status_code, body["status"], body["reasons"]) == (200, "healthy", [])
        assert (body["broker_connected"], body["subscriptions_granted"], body["database_ok"]) == (True, True, True)
        assert body["subscriptions"] == {f"{ns}/#": 1}
        assert body["connection_uptime_seconds"] >= 0 and body["uptime_seconds"] >= body["connection_uptime_seconds"]

        own_broker.kill()
        await eventually(lambda: not svc.runtime.transport.state.connected, timeout=10)
        ready = await c.get("/health/ready")
        assert ready.status_code == 503
        assert [r.partition(":")[0] for r in ready.json()["reasons"]] == ["not connected to the MQTT broker"]
        health = await c.get("/health/mqtt-monitor")
        body = health.json()
        assert (health.status_code, body["status"], body["broker_connected"]) == (503, "unhealthy", False)
        assert (body["subscriptions"], body["connection_uptime_seconds"]) == ({f"{ns}/#": None}, None)
        assert (await c.get("/health/live")).status_code == 200

        own_broker.start()
        await eventually(lambda: svc.runtime.transport.state.connected, timeout=15)
        assert (await c.get("/health/ready")).status_code == 200
        assert (await c.get("/health/mqtt-monitor")).json()["status"] == "healthy"


async def test_ready_and_health_follow_the_database(
    service: ServiceFactory, db_proxy: CuttableProxy, database_url: str
) -> None:
    async with service(database_url=via(db_proxy, database_url)) as svc:
        c = svc.client
        assert (await c.get("/health/ready")).status_code == 200
        # A database that hangs (half-open link): the probes still answer, in a few seconds.
        db_proxy.stall()
        started = time.monotonic()
        ready = await c.get("/health/ready")
        assert (ready.status_code, ready.json()["reasons"]) == (503, ["database does not answer"])
        assert time.monotonic() - started < 8
        health = (await c.get("/health/mqtt-monitor")).json()
        assert (health["status"], health["database_ok"], health["broker_connected"]) == ("unhealthy", False, True)
        # A database that refuses connections: the API says so with a 503, not a 500.
        db_proxy.restore()
        db_proxy.cut()
        assert (await c.get("/health/ready")).status_code == 503
        history = await c.get("/dead-letters")
        assert history.status_code == 503
        assert history.json()["detail"].startswith("database unavailable")
        # The fleet's current state answers from the cache meanwhile (tests/test_fleet_cache.py).
        devices = await c.get("/devices")
        assert (devices.status_code, devices.json()["stale"]) == (200, True)
        db_proxy.restore()
        await eventually(lambda: _status(c, "/health/ready", 200), timeout=10, interval=0.2)
        assert (await c.get("/devices")).status_code == 200


async def test_silent_feed_turns_degraded(service: ServiceFactory, publisher: Publisher, ns: str) -> None:
    async with service(health_stale_after_seconds=1) as svc:
        publisher.publish(f"{ns}/D1/telemetry", {"temperature": 1})
        await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 1)
        assert (await svc.client.get("/health/mqtt-monitor")).status_code == 200
        resp = await eventually(lambda: _degraded(svc.client), timeout=10, interval=0.2)
        body = resp.json()
        assert (body["broker_connected"], body["database_ok"]) == (True, True)
        assert body["reasons"][0].startswith("no message for ")
        assert body["seconds_since_last_message"] > 1
        # Silent is not unready: nothing a restart would fix.
        assert (await svc.client.get("/health/ready")).status_code == 200
        publisher.publish(f"{ns}/D1/telemetry", {"temperature": 2})
        await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 2)
        assert (await svc.client.get("/health/mqtt-monitor")).json()["status"] == "healthy"


async def _status(client: httpx.AsyncClient, path: str, code: int) -> bool:
    return (await client.get(path)).status_code == code


async def _degraded(client: object) -> object:
    resp = await client.get("/health/mqtt-monitor")  # type: ignore[attr-defined]
    return resp if resp.status_code == 503 and resp.json()["status"] == "degraded" else None


async def test_no_devices_no_staleness(service: ServiceFactory, db: asyncpg.Connection) -> None:
    # Nothing known yet (the db fixture empties the tables): silence is not a symptom.
    async with service(health_stale_after_seconds=0.5) as svc:
        await asyncio.sleep(1.0)
        assert (await svc.client.get("/health/mqtt-monitor")).json()["status"] == "healthy"
