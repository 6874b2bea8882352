"""The fleet cache: what it holds after a commit is what the database holds, and it answers while the
database is away (stale, with the time of its newest commit); history does not."""

from __future__ import annotations

import asyncio
import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession

from service.fleet_cache import FleetCache
from service.storage import queries
from tests.conftest import ServiceFactory, eventually, via
from tests.support.proxy import CuttableProxy
from tests.support.publisher import Publisher

T0 = datetime(2025, 5, 1, tzinfo=UTC)
DEVICES = 1000


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def mixed_stream(ns: str, rng: random.Random, devices: range) -> list[tuple[str, str | dict[str, Any]]]:
    """Statuses out of order (some older than what is stored), telemetry with repeated timestamps,
    relays changing back and forth out of order, fields left out, messages twice, bad messages."""
    out: list[tuple[str, str | dict[str, Any]]] = []
    for n in devices:
        dev = f"dev-{n:04d}"
        for _ in range(rng.randint(0, 3)):
            body: dict[str, Any] = {"status": rng.choice(["online", "offline"]),
                                    "timestamp": _iso(T0 + timedelta(seconds=rng.randint(0, 50)))}  # fmt: skip
            if rng.random() < 0.5:
                # host(inet) prints some IPv6 forms unlike Python: the cache prints them as PostgreSQL does.
                body["ip_address"] = rng.choice([f"10.0.{n % 250}.{rng.randint(1, 254)}", f"::ffff:10.9.0.{n % 250}",
                                                 f"2001:db8:0:0:1::{n:x}", "::1"])  # fmt: skip
            if rng.random() < 0.5:
                body["firmware_version"] = rng.choice(["1.0.0", "1.1.0", "2.0.0"])
            if rng.random() < 0.3:
                body["uptime"] = rng.randint(0, 10**6)
            out.append((f"{ns}/{dev}/status", body))
        for _ in range(rng.randint(0, 4)):
            ts = T0 + timedelta(seconds=rng.randint(0, 20))  # repeats: the first stored stays
            body = {"temperature": round(rng.uniform(-10, 40), 2), "timestamp": _iso(ts)}
            if rng.random() < 0.5:
                body["humidity"] = rng.uniform(0, 100)
            if rng.random() < 0.3:
                body["rssi"] = -rng.randint(30, 90)  # an extra field
            out.append((f"{ns}/{dev}/telemetry", body))
        for _ in range(rng.randint(0, 3)):
            relay = rng.randint(0, 2)
            body = {"state": rng.random() < 0.5, "timestamp": _iso(T0 + timedelta(seconds=rng.randint(0, 30)))}
            if rng.random() < 0.5:
                body["triggered_by"] = rng.choice(["manual", "schedule"])
            out.append((f"{ns}/{dev}/relay/{relay}/status", body))
        if rng.random() < 0.05:
            out.append((f"{ns}/{dev}/telemetry", "not json"))
        if rng.random() < 0.05:
            out.append((f"{ns}/{dev}/display/interaction", {"interaction_type": "tap", "timestamp": _iso(T0)}))
    out += rng.sample(out, len(out) // 10)  # the same message again, later
    rng.shuffle(out)
    return out


async def compare(session: AsyncSession, fleet: FleetCache) -> int:
    """Every device's row, newest telemetry and relays, and a few pages: cache == database."""
    ids = [r["device_id"] for r in (await queries.device_page(session, online=None, seen_since=None, q=None,
                                                              sort="device_id", limit=10**6, offset=0))[0]]  # fmt: skip
    for device_id in ids:
        assert fleet.device(device_id) == await queries.device(session, device_id), device_id
        assert fleet.latest_telemetry(device_id) == await queries.latest_telemetry(session, device_id), device_id
        assert fleet.relays(device_id) == await queries.relays(session, device_id), device_id
    pages: list[dict[str, Any]] = [
        {"online": None, "seen_since": None, "q": None, "sort": "device_id", "limit": 100, "offset": 0},
        {"online": True, "seen_since": None, "q": None, "sort": "-last_seen", "limit": 1000, "offset": 3},
        {"online": False, "seen_since": None, "q": "DEV-00", "sort": "last_seen", "limit": 50, "offset": 0},
        {"online": None, "seen_since": T0, "q": "1", "sort": "-last_seen", "limit": 1000, "offset": 0},
    ]
    for page in pages:
        assert fleet.device_page(**page) == await queries.device_page(session, **page), page
    assert fleet.size == len(ids)
    return len(ids)


async def test_cache_equals_the_database_after_a_mixed_stream(
    service: ServiceFactory, publisher: Publisher, db: asyncpg.Connection, ns: str
) -> None:
    rng = random.Random(16)
    first, second = mixed_stream(ns, rng, range(0, 600)), mixed_stream(ns, rng, range(300, DEVICES))
    # The first part is stored by one process; the second by another that fills its cache from the
    # database at start, then follows its own commits. Waves a little over a second apart make the
    # writer's last_seen coalescing (DEVICE_LAST_SEEN_RESOLUTION) skip and take devices.
    async with service() as svc:
        await asyncio.to_thread(publisher.publish_many, first)
        await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == len(first), timeout=30)
    async with service() as svc:
        fleet = svc.runtime.fleet
        assert fleet.loaded and fleet.size == await db.fetchval("SELECT count(*) FROM devices") > 500
        waves = [second[i::3] for i in range(3)]
        done = 0
        for wave in waves:
            await asyncio.to_thread(publisher.publish_many, wave)
            done += len(wave)
            await eventually(lambda d=done: svc.runtime.ingestor.stats.messages_processed == d, timeout=30)
            await asyncio.sleep(1.1)
        assert await db.fetchval("SELECT count(*) FROM dead_letters") > 0
        await eventually(lambda: fleet.settled, timeout=10)  # the devices whose state changed, read again
        async with svc.runtime.sessions() as session:
            assert await compare(session, fleet) > 0.95 * DEVICES  # a few sent nothing at all
        # And through HTTP: the cache's answers are the database's.
        fresh = await svc.client.get("/devices", params={"limit": 1000})
        assert fresh.status_code == 200 and "stale" not in fresh.json() and "warning" not in fresh.headers


async def test_answers_from_cache_while_the_database_is_away(
    service: ServiceFactory, publisher: Publisher, db: asyncpg.Connection, ns: str,
    db_proxy: CuttableProxy, database_url: str,
) -> None:  # fmt: skip
    async with service(database_url=via(db_proxy, database_url)) as svc:
        c = svc.client
        publisher.publish_many([
            (f"{ns}/D1/status", {"status": "online", "ip_address": "10.0.0.7", "timestamp": _iso(T0)}),
            (f"{ns}/D1/telemetry", {"temperature": 20.5, "rssi": -60, "timestamp": _iso(T0)}),
            (f"{ns}/D1/relay/0/status", {"state": True, "timestamp": _iso(T0)}),
            (f"{ns}/D2/telemetry", {"temperature": 1.0, "timestamp": _iso(T0)}),
        ])  # fmt: skip
        await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 4)
        paths = ["/devices", "/devices?online=true", "/devices/D1", "/devices/D1/relays", "/devices/D2"]
        fresh = {p: await c.get(p) for p in paths}
        assert all(r.status_code == 200 and "warning" not in r.headers for r in fresh.values())
        committed = svc.runtime.fleet.as_of

        db_proxy.cut()
        for path in paths:
            stale = await c.get(path)
            assert stale.status_code == 200, (path, stale.text)
            assert stale.headers["warning"].startswith('110 autocore-monitor "Response is Stale')
            body, want = stale.json(), fresh[path].json()
            if isinstance(want, dict):
                assert body.pop("stale") is True
                as_of = datetime.fromisoformat(body.pop("as_of"))
                assert abs(as_of.timestamp() - committed) < 0.01
                # Statistics come from the database only (docs/statistics.md): [] from the cache.
                if "stats" in want:
                    assert body.pop("stats") == []
                    want.pop("stats")
            assert body == want, path
        assert (await c.get("/devices/nope")).status_code == 404  # the cache knows the whole fleet
        for path in ("/devices/D1/telemetry", "/devices/D1/connectivity", "/devices/D1/relays/0/history",
                     "/dead-letters"):  # fmt: skip
            history = await c.get(path)
            assert history.status_code == 503, path
            assert history.json()["detail"].startswith("database unavailable"), path

        # Committed while the database was away: nothing (the writer holds it), so the cache waits too.
        publisher.publish(f"{ns}/D1/telemetry", {"temperature": 30.0, "timestamp": _iso(T0 + timedelta(seconds=9))})
        await asyncio.sleep(0.5)
        assert (await c.get("/devices/D1")).json()["latest_telemetry"]["temperature"] == 20.5
        db_proxy.restore()
        await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 5, timeout=30)

        async def fresh_again() -> bool:
            r = await c.get("/devices/D1")
            return "stale" not in r.json() and r.json()["latest_telemetry"]["temperature"] == 30.0

        await eventually(fresh_again, timeout=15)


async def test_broker_down_says_so_in_fresh_answers(
    service: ServiceFactory, own_broker: Any, publisher: Publisher, ns: str
) -> None:
    async with service(broker_port=own_broker.port) as svc:
        c = svc.client
        assert "broker_connected" not in (await c.get("/devices")).json()
        own_broker.kill()
        await eventually(lambda: not svc.runtime.transport.state.connected, timeout=10)
        page = await c.get("/devices")
        assert page.status_code == 200 and page.json()["broker_connected"] is False and "stale" not in page.json()
        assert '199 autocore-monitor "not connected to the MQTT broker' in page.headers["warning"]
        own_broker.start()
        await eventually(lambda: svc.runtime.transport.state.connected, timeout=15)
        assert "broker_connected" not in (await c.get("/devices")).json()


def test_bounded_cache_refuses_rather_than_answers_partially() -> None:
    from service.mqtt.message import InboundMessage
    from service.records import RelayRecord, TelemetryRecord
    from service.storage.writer import Committed, Pending

    fleet = FleetCache(max_devices=2)
    fleet.loaded, fleet._backlog = True, None

    def msg(t: float) -> InboundMessage:
        return InboundMessage("x", b"", 1, False, t, 1, None)

    batch = [Pending(msg(100.0 + i), [TelemetryRecord(f"d{i}", T0, 1.0, None, None, None, json.dumps({"a": 1.0}),
                                                      100.0 + i)], "telemetry") for i in range(3)]  # fmt: skip
    batch += [Pending(msg(101.0), [RelayRecord("d0", i, T0, True, None, 101.0)], "relay") for i in range(70)]
    fleet.observe(Committed.of(batch))
    assert fleet.size == 2
    import pytest

    from service.fleet_cache import NotCached

    with pytest.raises(NotCached, match="FLEET_CACHE_MAX_DEVICES"):
        fleet.device_page(online=None, seen_since=None, q=None, sort="device_id", limit=10, offset=0)
    with pytest.raises(NotCached, match="FLEET_CACHE_MAX_DEVICES"):
        fleet.device("d2")
    with pytest.raises(NotCached, match="more relays"):
        fleet.relays("d0")
    assert fleet.latest_telemetry("d1") is not None and fleet.latest_telemetry("d1")["extra"] == {"a": 1.0}


async def test_replayed_dead_letters_reach_the_cache(
    service: ServiceFactory, publisher: Publisher, db: asyncpg.Connection, ns: str
) -> None:
    v2 = f"{ns}/v2"
    async with service() as svc:  # knows no route for <ns>/v2/...: dead letters
        publisher.publish_many([
            (f"{v2}/D7/telemetry", {"temperature": 5.5, "timestamp": "2025-05-05T00:00:00Z"}),
            (f"{v2}/D9/status", {"status": "online", "firmware_version": "3.0", "timestamp": "2025-05-05T00:00:02Z"}),
        ])  # fmt: skip
        await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 2)
    token = {"Authorization": "Bearer replay-token"}
    async with service(api_token="replay-token", mqtt_topic_prefix=v2, mqtt_client_id=f"{ns}-v2") as svc:
        fleet = svc.runtime.fleet
        assert fleet.size == 0
        resp = await svc.client.post("/dead-letters/replay", headers=token)
        assert resp.json()["resolved"] == 2
        async with svc.runtime.sessions() as session:
            assert await compare(session, fleet) == 2
        assert fleet.latest_telemetry("D7")["temperature"] == 5.5
