"""Liveness against the real broker and database: inactivity timeout, no mass offline after the service
or the broker was away, real last wills, retained statuses, the ordering rule between them."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import ServiceFactory, eventually
from tests.support.broker import Broker
from tests.support.publisher import Publisher

FAST = {"device_offline_after_seconds": 1.0, "device_sweep_interval_seconds": 0.1}


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def state(db: asyncpg.Connection, device: str) -> tuple[Any, Any]:
    row = await db.fetchrow("SELECT is_online, connectivity_cause FROM devices WHERE device_id = $1", device)
    return (row["is_online"], row["connectivity_cause"]) if row else (None, None)


async def events(db: asyncpg.Connection, device: str) -> list[tuple[bool, str]]:
    rows = await db.fetch("SELECT is_online, cause FROM connectivity_events WHERE device_id = $1 ORDER BY ts", device)
    return [(r["is_online"], r["cause"]) for r in rows]


async def open_alerts(db: asyncpg.Connection, device: str) -> list[str]:
    rows = await db.fetch("SELECT kind FROM alerts WHERE device_id = $1 AND resolved_at IS NULL", device)
    return [r["kind"] for r in rows]


async def test_silent_device_times_out_and_its_next_message_brings_it_back(
    service: ServiceFactory, publisher: Publisher, db: asyncpg.Connection, ns: str
) -> None:
    async with service(**FAST) as svc:
        publisher.publish(f"{ns}/T1/telemetry", {"temperature": 1.0})
        await eventually(lambda: state(db, "T1"), timeout=5)
        await eventually(lambda: _is(state(db, "T1"), (False, "timeout")), timeout=5)
        assert await open_alerts(db, "T1") == ["offline"]
        # The fleet cache follows the sweep (it answers while the database is away).
        await eventually(lambda: _cached(svc, "T1") == (False, "timeout"), timeout=5)
        alert = (await svc.client.get("/alerts", params={"device_id": "T1"})).json()["items"][0]
        assert alert["details"]["cause"] == "timeout" and alert["resolved_at"] is None
        publisher.publish(f"{ns}/T1/telemetry", {"temperature": 2.0})
        await eventually(lambda: _is(state(db, "T1"), (True, "message")), timeout=5)
        assert await open_alerts(db, "T1") == []
        await eventually(lambda: _cached(svc, "T1") == (True, "message"), timeout=5)
        resolved = (await svc.client.get("/alerts", params={"status": "resolved", "device_id": "T1"})).json()
        assert resolved["total"] == 1
    assert (await events(db, "T1"))[:2] == [(False, "timeout"), (True, "message")]
    # Each change notified once per channel (MQTT on by default): opened, resolved.
    states = [r["state"] for r in await db.fetch("SELECT state FROM notifications WHERE device_id = 'T1' ORDER BY id")]
    assert states[:2] == ["opened", "resolved"]


def _cached(svc: Any, device: str) -> tuple[bool | None, str | None] | None:
    row = svc.runtime.fleet.device(device)
    return None if row is None else (row["is_online"], row["connectivity_cause"])


async def _is(value: Any, want: Any) -> bool:
    return bool(await value == want)


async def test_no_mass_offline_after_the_service_was_away(
    service: ServiceFactory, publisher: Publisher, db: asyncpg.Connection, ns: str
) -> None:
    devices = [f"A{i}" for i in range(20)]
    async with service() as svc:
        publisher.publish_many([(f"{ns}/{d}/telemetry", {"temperature": 1.0}) for d in devices])
        await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == len(devices))
    await asyncio.sleep(1.5)  # the service is away longer than the window: every last_seen is stale
    window = 2.0
    async with service(device_offline_after_seconds=window, device_sweep_interval_seconds=0.1) as svc:
        # When the connection came up, as the sweep counts it (the fixture sees it a poll later).
        connected = svc.runtime.transport.state.connected_since
        # The fleet speaks within its first window after the (re)connect, except A0.
        for _ in range(2):
            publisher.publish_many([(f"{ns}/{d}/telemetry", {"temperature": 2.0}) for d in devices[1:]])
            await asyncio.sleep(0.6)
        assert await db.fetchval("SELECT count(*) FROM devices WHERE NOT is_online") == 0
        await eventually(lambda: _is(state(db, "A0"), (False, "timeout")), timeout=5)
        assert time.time() - connected >= window
        # Only the silent device; the others spoke within the window.
        assert await db.fetchval("SELECT count(*) FROM devices WHERE is_online = false") == 1


async def test_no_timeout_while_the_broker_is_down_nor_in_the_first_window_after(
    service: ServiceFactory, own_broker: Broker, db: asyncpg.Connection, ns: str
) -> None:
    window = 1.5
    async with service(broker_port=own_broker.port, device_offline_after_seconds=window,
                       device_sweep_interval_seconds=0.1, mqtt_monitor_reconnect_delay=0.1,
                       mqtt_reconnect_max_delay=0.2) as svc:  # fmt: skip
        pub = Publisher(own_broker.port)
        pub.publish_many([(f"{ns}/B{i}/telemetry", {"temperature": 1.0}) for i in range(10)])
        pub.close()
        await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 10)
        own_broker.kill()
        await eventually(lambda: not svc.runtime.transport.state.connected, timeout=5)
        await asyncio.sleep(window * 2)  # the devices (behind the dead broker) look silent
        assert await db.fetchval("SELECT count(*) FROM devices WHERE is_online = false") == 0
        own_broker.start()
        await eventually(lambda: svc.runtime.transport.state.connected, timeout=10)
        pub = Publisher(own_broker.port)
        await asyncio.sleep(window * 0.6)
        assert await db.fetchval("SELECT count(*) FROM devices WHERE is_online = false") == 0
        pub.publish_many([(f"{ns}/B{i}/telemetry", {"temperature": 2.0}) for i in range(1, 10)])
        pub.close()
        await eventually(lambda: _is(state(db, "B0"), (False, "timeout")), timeout=5)
        assert await db.fetchval("SELECT count(*) FROM devices WHERE is_online = false") == 1


def _device_with_will(port: int, ns: str, device: str, will: dict[str, Any]) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{ns}-{device}-{uuid.uuid4().hex[:6]}")
    client.will_set(f"{ns}/{device}/status", json.dumps(will), qos=1)
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    return client


def _kill(client: mqtt.Client) -> None:
    """The device vanishes: its socket closes without DISCONNECT, so the broker publishes its will."""
    client.loop_stop()
    sock = client.socket()
    assert sock is not None
    sock.close()


async def test_a_real_will_takes_the_device_offline_with_or_without_its_old_timestamp(
    service: ServiceFactory, broker: Broker, db: asyncpg.Connection, ns: str
) -> None:
    async with service() as svc:
        connected_at = datetime.now(UTC)
        wills = {"W1": {"status": "offline"}, "W2": {"status": "offline", "timestamp": iso(connected_at)}}
        for device, will in wills.items():
            client = _device_with_will(broker.port, ns, device, will)
            online = {"status": "online", "timestamp": iso(connected_at + timedelta(seconds=1))}
            client.publish(f"{ns}/{device}/status", json.dumps(online), qos=1).wait_for_publish(10)
            client.publish(f"{ns}/{device}/telemetry", json.dumps({"temperature": 3.0}), qos=1).wait_for_publish(10)
            await eventually(lambda device=device: _is(state(db, device), (True, "status")), timeout=5)
            _kill(client)
        for device in wills:
            await eventually(lambda device=device: _is(state(db, device), (False, "will")), timeout=10)
            assert await open_alerts(db, device) == ["offline"]
            await eventually(lambda device=device: _cached(svc, device) == (False, "will"), timeout=5)
            assert await events(db, device) == [(True, "status"), (False, "will")]


async def test_a_stale_status_followed_by_newer_messages_does_not_move_state_back(
    service: ServiceFactory, publisher: Publisher, db: asyncpg.Connection, ns: str
) -> None:
    now = datetime.now(UTC)
    async with service(writer_linger_ms=300) as svc:
        publisher.publish(f"{ns}/S1/status", {"status": "online", "timestamp": iso(now)})
        await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 1)
        # A session replay: an old offline, then what the device sent after it.
        publisher.publish_many([
            (f"{ns}/S1/status", {"status": "offline", "timestamp": iso(now - timedelta(minutes=5))}),
            (f"{ns}/S1/telemetry", {"temperature": 4.0, "timestamp": iso(now - timedelta(minutes=4))}),
        ])  # fmt: skip
        await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 3)
    assert await state(db, "S1") == (True, "status")
    assert await events(db, "S1") == [(True, "status")]


async def test_retained_status_never_flips_a_device_whose_newer_state_we_know(
    service: ServiceFactory, publisher: Publisher, db: asyncpg.Connection, ns: str
) -> None:
    # Left on the broker long ago, before this monitor ever subscribed; no timestamp.
    for device in ("R1", "R2"):
        publisher.client.publish(f"{ns}/{device}/status", json.dumps({"status": "offline"}), qos=1,
                                 retain=True).wait_for_publish(10)  # fmt: skip
    # R1's newer state is known (stored from an earlier run).
    await db.execute(
        "INSERT INTO devices (device_id, first_seen, last_seen, is_online, status_ts, state_changed_at, "
        "connectivity_cause) VALUES ('R1', now(), now(), true, now() - interval '1 hour', now(), 'status')"
    )
    try:
        async with service() as svc:
            await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 2)
            assert await state(db, "R1") == (True, "status")
            # R2 was never seen: the retained status is all we know.
            assert await state(db, "R2") == (False, "retained")
            # R2's own online status, its clock a little behind ours, wins over the retained one.
            publisher.publish(
                f"{ns}/R2/status", {"status": "online", "timestamp": iso(datetime.now(UTC) - timedelta(seconds=3))}
            )
            await eventually(lambda: _is(state(db, "R2"), (True, "status")))
        async with service() as svc:  # a new session replays the retained messages
            await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 2)
            assert await state(db, "R1") == (True, "status")
            assert await state(db, "R2") == (True, "status")
    finally:
        for device in ("R1", "R2"):
            publisher.client.publish(f"{ns}/{device}/status", b"", qos=1, retain=True).wait_for_publish(10)
