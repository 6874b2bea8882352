"""Three replicas of the real service on one Mosquitto, sharing the traffic through a shared
subscription; one is SIGKILLed mid-stream and restarted. The outcome must be what one consumer of the
same traffic would have stored.

The scenario runs once (module fixture); each test checks one property of its outcome.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from tests.conftest import TABLES, service_settings
from tests.support.broker import Broker
from tests.support.publisher import StreamPublisher
from tests.support.service_process import ServiceProcess

DEVICES = 40
MESSAGES = 20_000
BASE = datetime(2026, 1, 1, tzinfo=UTC)


def _iso(seq: int) -> str:
    return (BASE + timedelta(seconds=seq)).isoformat().replace("+00:00", "Z")


@dataclass
class Traffic:
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    online: dict[str, bool] = field(default_factory=dict)  # newest status per device
    relays: dict[tuple[str, int], bool] = field(default_factory=dict)  # newest state per relay
    events: set[tuple[str, datetime, bool]] = field(default_factory=set)  # what one consumer records


def fleet(prefix: str) -> Traffic:
    """A mixed fleet: per device and step, status / relay / system / display / telemetry, each with a
    timestamp of its own (the step), so "newest" is defined by the traffic itself."""
    t = Traffic()
    counts = dict.fromkeys(("status", "relay", "system", "display", "telemetry"), 0)
    last_status: dict[str, bool] = {}
    for i in range(MESSAGES):
        device, seq = f"R{i % DEVICES:02d}", i // DEVICES
        kind, ts = seq % 10, _iso(seq)
        if kind == 0:
            online = (seq // 10) % 2 == 0
            topic, body = f"{prefix}/{device}/status", {"status": "online" if online else "offline", "timestamp": ts}
            if last_status.get(device) != online:
                t.events.add((device, BASE + timedelta(seconds=seq), online))
            last_status[device] = t.online[device] = online
            counts["status"] += 1
        elif kind in (1, 2):
            relay, state = (seq // 10) % 2, (seq // 20 + kind) % 2 == 0
            topic = f"{prefix}/{device}/relay/{relay}/status"
            body = {"state": state, "timestamp": ts, "triggered_by": "schedule"}
            t.relays[(device, relay)] = state
            counts["relay"] += 1
        elif kind == 3:
            topic, body = f"{prefix}/{device}/system/heartbeat", {"seq": seq, "timestamp": ts}
            counts["system"] += 1
        elif kind == 4:
            topic, body = f"{prefix}/{device}/display/interaction", {"type": "touch", "value": seq, "timestamp": ts}
            counts["display"] += 1
        else:
            topic, body = f"{prefix}/{device}/telemetry", {"temperature": 20 + seq % 7, "timestamp": ts}
            counts["telemetry"] += 1
        t.messages.append((topic, json.dumps(body).encode()))
    t.counts = counts
    return t


@dataclass
class Outcome:
    traffic: Traffic
    tables: dict[str, int]
    online: dict[str, bool]
    relays: dict[tuple[str, int], bool]
    events: set[tuple[str, datetime, bool]]
    dead_letters: int
    logs: dict[str, str]
    received: dict[str, int]
    seconds: float


async def _counts(conn: asyncpg.Connection) -> dict[str, int]:
    tables = {"status": None, "telemetry": "telemetry", "relay": "relay_state_history",
              "system": "system_messages", "display": "display_interactions"}  # fmt: skip
    return {k: int(await conn.fetchval(f"SELECT count(*) FROM {v}")) for k, v in tables.items() if v}


async def _received(svc: ServiceProcess) -> int:
    async with httpx.AsyncClient(base_url=svc.url, timeout=5) as client:
        text = (await client.get("/metrics")).text
    values = re.findall(r"^autocore_messages_received_total\{[^}]*\} (\S+)$", text, re.M)
    return int(sum(float(v) for v in values))


@pytest.fixture(scope="module")
async def outcome(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Outcome]:
    workdir = tmp_path_factory.mktemp("replicas")
    broker = Broker(workdir / "broker")
    broker.start()
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    await conn.execute(f"TRUNCATE {', '.join(TABLES)}")
    ns = f"rep{time.monotonic_ns() % 10**8}"
    traffic = fleet(ns)
    base = {**service_settings(database_url, broker.port, ns), "mqtt_shared_group": f"{ns}g",
            "mqtt_reconnect_max_delay": 1.0, "shutdown_grace_seconds": 5}  # fmt: skip
    replicas = [
        ServiceProcess(workdir / f"r{i}", {**base, "mqtt_client_id": f"{ns}-{{hostname}}-r{i}"}, f"replica{i}")
        for i in range(3)
    ]
    publisher = StreamPublisher(broker.port, traffic.messages, rate=5000)
    started = time.monotonic()
    try:
        for r in replicas:
            r.start()
        await asyncio.gather(*(r.wait_health(200) for r in replicas))
        publisher.start()
        await asyncio.to_thread(publisher.wait_sent, MESSAGES * 3 // 10)
        await replicas[1].kill()  # mid-stream: whatever it held uncommitted or unacknowledged is redelivered
        await asyncio.to_thread(publisher.wait_sent, MESSAGES // 2)
        replicas[1].start()  # same client id: it resumes its session
        await asyncio.to_thread(publisher.wait_acknowledged, 120)
        want = {k: v for k, v in traffic.counts.items() if k != "status"}
        deadline = time.monotonic() + 120
        while await _counts(conn) != want and time.monotonic() < deadline:  # noqa: ASYNC110 (polls the database)
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)  # anything late (a duplicate) would land now
        seconds = time.monotonic() - started
        tables = await _counts(conn)
        rows = await conn.fetch("SELECT device_id, is_online FROM devices")
        relays = await conn.fetch("SELECT device_id, relay_index, state FROM relays")
        events = await conn.fetch("SELECT device_id, ts, is_online FROM connectivity_events")
        dead = int(await conn.fetchval("SELECT count(*) FROM dead_letters"))
        yield Outcome(
            traffic,
            tables,
            {r["device_id"]: r["is_online"] for r in rows},
            {(r["device_id"], r["relay_index"]): r["state"] for r in relays},
            {(e["device_id"], e["ts"], e["is_online"]) for e in events},
            dead,
            {r.name: r.log_text() for r in replicas},
            {r.name: await _received(r) for r in replicas},
            seconds,
        )
    finally:
        publisher.close()
        for r in replicas:
            if r.running:
                await r.terminate()
            r.close()
        await conn.close()
        broker.stop()


def test_every_row_exactly_once(outcome: Outcome) -> None:
    assert outcome.tables == {k: v for k, v in outcome.traffic.counts.items() if k != "status"}
    assert outcome.dead_letters == 0


def test_device_and_relay_state_is_the_newest(outcome: Outcome) -> None:
    assert outcome.online == outcome.traffic.online
    assert outcome.relays == outcome.traffic.relays


def test_no_deadlocks_between_replicas(outcome: Outcome) -> None:
    for name, text in outcome.logs.items():
        assert "deadlock" not in text.lower(), f"{name}:\n{text[-3000:]}"


def test_every_replica_took_a_share(outcome: Outcome) -> None:
    # The restarted one counts from its restart; each still got part of the stream.
    assert all(n > 0 for n in outcome.received.values()), outcome.received
    assert sum(outcome.received.values()) >= MESSAGES * 7 // 10


def test_connectivity_events_are_what_one_consumer_records(outcome: Outcome) -> None:
    missing, extra = outcome.traffic.events - outcome.events, outcome.events - outcome.traffic.events
    expected = len(outcome.traffic.events)
    assert (len(missing), len(extra)) == (0, 0), f"of {expected}: {len(missing)} missing, e.g. {sorted(missing)[:3]}"

