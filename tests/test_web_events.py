"""`GET /events` against the real service (a uvicorn child process), fed by real MQTT publishes.

Resumes with Last-Event-ID get exactly what they missed; filters narrow; a client that stops
reading neither grows the service's memory nor holds up ingestion (figures printed and written to
`<pytest basetemp>/events-figures.json`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest

from service.mqtt.message import InboundMessage
from service.records import StatusRecord
from service.storage.statements import Grouped
from service.storage.writer import Committed, Pending
from service.web.filters import StreamFilter, topic_matcher
from service.web.hub import EventHub
from tests.conftest import eventually
from tests.support import web
from tests.support.broker import Broker
from tests.support.publisher import Publisher
from tests.support.service_process import ServiceProcess
from tests.support.sse import open_events

spawn_web = web.spawn_web
BASE = datetime(2025, 6, 1, tzinfo=UTC)


def telemetry(ns: str, device: str, i: int) -> tuple[str, bytes]:
    ts = (BASE + timedelta(seconds=i)).isoformat()
    return f"{ns}/{device}/telemetry", json.dumps({"temperature": 20 + i % 10, "timestamp": ts}).encode()


async def committed(svc: ServiceProcess, count: int) -> None:
    async def check() -> bool:
        _, body = await svc.health()
        return body.get("messages_processed") == count

    await eventually(check, timeout=20)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# -- the hub on its own --------------------------------------------------------------------------


def test_mqtt_filters_match_as_mqtt_says() -> None:
    m = topic_matcher("a/+/telemetry")
    assert m.match("a/d1/telemetry") and not m.match("a/d1/x/telemetry") and not m.match("a/d1/telemetryx")
    assert topic_matcher("a/#").match("a") and topic_matcher("a/#").match("a/b/c")
    assert not topic_matcher("a/#").match("ab/c")
    assert topic_matcher("#").match("anything/at/all")
    assert topic_matcher("a.b/+").match("a.b/x") and not topic_matcher("a.b/+").match("axb/x")
    for bad in ("a/#/b", "a/b+", "a#"):
        with pytest.raises(ValueError):
            topic_matcher(bad)


async def test_nothing_is_kept_or_queued_while_nobody_listens() -> None:
    hub = EventHub(topic_prefix="p", resume_seconds=0)
    hub.observe(Committed([object()] * 5, Grouped(), []))  # type: ignore[list-item]
    assert not hub.recording and not hub._inbox and hub.published == 0
    client = hub.subscribe(StreamFilter())
    assert client is not None and hub.recording
    hub.observe(Committed.of([]))
    assert len(hub._inbox) == 1
    hub.unsubscribe(client)
    hub.observe(Committed.of([]))
    assert len(hub._inbox) == 1  # resume_seconds=0: nothing recorded once the last client left


async def test_over_the_rate_limit_messages_are_counted_not_published() -> None:
    hub = EventHub(topic_prefix="p", max_rate=5, client_buffer=3)
    client = hub.subscribe(StreamFilter.build(frozenset({"message"})))
    assert client is not None
    now = time.time()
    status = StatusRecord("D1", datetime.now(UTC), True, None, None, None)
    batch = [Pending(InboundMessage("p/D1/status", b"{}", 1, False, now), [status], "status") for _ in range(8)]
    hub._fan_out(batch)
    # 5 message events; 3 messages only counted. (Status records make no device event: those come
    # from what the database decided, `device_changed`.)
    assert hub.published == 5 and hub._rate_skipped == 3
    hub._window_end = 0.0  # the next second
    hub._fan_out([])
    assert hub._ring[-1].kind == "missed" and b'"count":3,"reason":"rate_limit"' in hub._ring[-1].frame
    # The client's queue of 3 kept the newest 3 of its 5 messages and counts the 2 it lost.
    chunk = (await client.next_chunk()).decode()
    assert chunk.count("event: message") == 2 and '"count":3,"reason":"slow_client"' in chunk
    assert '"count":3,"reason":"rate_limit"' in chunk  # every client hears of it, whatever its filter


async def test_device_events_follow_the_database_not_repeated() -> None:
    hub = EventHub(topic_prefix="p", resume_seconds=0)
    row = {"device_id": "D1", "is_online": False, "status_ts": None, "connectivity_cause": "will"}
    hub.device_changed(row)
    assert hub.published == 0  # nobody listens: nothing recorded
    client = hub.subscribe(StreamFilter.build(frozenset({"device"})))
    assert client is not None
    hub.device_changed(row)
    hub.device_changed(dict(row))  # the same state read back again: no second event
    hub.device_changed({**row, "is_online": True, "connectivity_cause": "status"})
    assert [(e.kind, e.device_id) for e in hub._ring] == [("device", "D1"), ("device", "D1")]
    chunk = (await client.next_chunk()).decode()
    assert '"is_online":false,' in chunk and '"cause":"will"' in chunk and '"is_online":true' in chunk


# -- the real service ----------------------------------------------------------------------------


async def test_messages_devices_and_health_arrive(
    spawn_web: web.Spawn, publisher: Publisher, ns: str, db: asyncpg.Connection
) -> None:
    svc = await spawn_web()
    async with open_events(svc.url) as events:
        online = {"status": "online", "firmware_version": "1.0", "timestamp": "2029-01-01T00:00:00Z"}
        publisher.publish(f"{ns}/D1/status", online)
        publisher.publish(*telemetry(ns, "D1", 1))
        publisher.publish(f"{ns}/D1/telemetry", b"{not json")
        messages = await events.collect("message", 3)
        kinds_seen = {e.kind for e in events.others}
        by_route = [(m.data["route"], m.data["outcome"], m.data["device_id"]) for m in messages]
        assert by_route == [
            ("status", "stored", "D1"),
            ("telemetry", "stored", "D1"),
            ("telemetry", "dead_letter", "D1"),
        ]
        assert messages[2].data["stage"] == "decode" and messages[2].data["payload"] == "{not json"
        assert all(m.id and m.id.startswith(messages[0].id.rsplit("-", 1)[0]) for m in messages)
        if "device" not in kinds_seen:
            await events.collect("device", 1)
        # An offline status stamped before the stored one is the device's will (docs/fleet-watch.md):
        # the page hears what the database decided (offline by will, the stored status time), not
        # what the record claimed.
        publisher.publish(f"{ns}/D1/status", {"status": "offline", "timestamp": "2020-01-01T00:00:00Z"})
        (device,) = await events.collect("device", 1)
        assert device.data["device_id"] == "D1" and device.data["is_online"] is False
        assert device.data["cause"] == "will" and device.data["ts"].startswith("2029-01-01")
        (health,) = await events.collect("health", 1, timeout=5)
        assert health.data["status"] == "healthy" and health.data["broker_connected"] is True
        assert "writer_backlog" in health.data and "messages_per_second" in health.data


async def test_filters_narrow_the_stream(
    spawn_web: web.Spawn, publisher: Publisher, ns: str, db: asyncpg.Connection
) -> None:
    svc = await spawn_web(events_max_clients=3)
    async with (
        open_events(svc.url, {"topic": f"{ns}/+/status", "kind": "message"}) as status_only,
        open_events(svc.url, {"device_id": "D2", "kind": "message,device"}) as d2_only,
        open_events(svc.url, {"outcome": "dead_letter", "kind": "message"}) as dead_only,
    ):
        # A fourth client is refused while three are connected.
        async with httpx.AsyncClient(base_url=svc.url) as client:
            resp = await client.get("/events")
            assert resp.status_code == 503 and resp.headers["retry-after"] == "5"
            for bad in ({"topic": "a/#/b"}, {"kind": "message,nope"}, {"outcome": "lost"}):
                resp = await client.get("/events", params=bad)
                assert resp.status_code == 422, (bad, resp.text)
            listing = (await client.get("/events/clients")).json()
            assert len(listing["clients"]) == 3 and listing["max_clients"] == 3
        publisher.publish(*telemetry(ns, "D1", 1))
        publisher.publish(f"{ns}/D2/status", {"status": "online"})
        publisher.publish(f"{ns}/D1/status", {"status": "online"})
        publisher.publish(f"{ns}/D2/telemetry", b"\xff")
        await committed(svc, 4)
        got = await status_only.collect("message", 2)
        assert [m.data["topic"] for m in got] == [f"{ns}/D2/status", f"{ns}/D1/status"]
        got = await d2_only.collect("message", 2)
        assert [m.data["topic"] for m in got] == [f"{ns}/D2/status", f"{ns}/D2/telemetry"]
        assert [e.data["device_id"] for e in d2_only.others if e.kind == "device"] in ([], ["D2"])
        got = await dead_only.collect("message", 1)
        assert got[0].data["topic"] == f"{ns}/D2/telemetry" and got[0].data["payload"] is None
        # Nothing else came to the narrow ones: one more event each proves the order held.
        publisher.publish(f"{ns}/D3/status", {"status": "online"})
        (nxt,) = await status_only.collect("message", 1)
        assert nxt.data["topic"] == f"{ns}/D3/status"


async def test_last_event_id_resume_gets_exactly_what_was_missed(
    spawn_web: web.Spawn, publisher: Publisher, ns: str, db: asyncpg.Connection
) -> None:
    # No health events in between: the ring then holds only these messages, so its counts are exact.
    svc = await spawn_web(events_ring_size=60, events_health_interval_seconds=3600)
    async with open_events(svc.url, {"kind": "message"}) as first:
        publisher.publish_many(telemetry(ns, "D1", i) for i in range(10))
        seen = await first.collect("message", 10)
        last_id = first.last_id
    assert last_id == seen[-1].id
    # Disconnected: 25 more are committed (still recorded: within EVENTS_RESUME_SECONDS).
    publisher.publish_many(telemetry(ns, "D1", i) for i in range(10, 35))
    await committed(svc, 35)
    async with open_events(svc.url, {"kind": "message"}, last_event_id=last_id) as again:
        resumed = await again.collect("message", 25)
        assert not [e for e in again.others if e.kind == "missed"]
        assert [json.loads(m.data["payload"])["timestamp"] for m in resumed] == [
            (BASE + timedelta(seconds=i)).isoformat() for i in range(10, 35)
        ]
        ids = [int(m.id.rsplit("-", 1)[1]) for m in resumed]
        assert ids == list(range(ids[0], ids[0] + 25)) and ids[0] == int(last_id.rsplit("-", 1)[1]) + 1
        # Nothing twice: the next event is a new one.
        publisher.publish(*telemetry(ns, "D1", 35))
        (new,) = await again.collect("message", 1)
        assert json.loads(new.data["payload"])["timestamp"] == (BASE + timedelta(seconds=35)).isoformat()
        newest = again.last_id
    # Further back than the ring holds (60 events): told how many are gone, then the rest.
    publisher.publish_many(telemetry(ns, "D1", i) for i in range(36, 106))
    await committed(svc, 106)
    async with open_events(svc.url, {"kind": "message"}, last_event_id=newest) as late:
        first_event = await late.next()
        assert first_event.kind == "missed" and first_event.data == {"count": 10, "reason": "beyond_resume_buffer"}
        rest = await late.collect("message", 60)
        assert json.loads(rest[0].data["payload"])["timestamp"] == (BASE + timedelta(seconds=46)).isoformat()
    # An id from another stream (a restart): the gap is unknown, and said so.
    async with open_events(svc.url, {"kind": "message"}, last_event_id="0badc0de-5") as other:
        event = await other.next()
        assert event.kind == "missed" and event.data == {"count": None, "reason": "stream_restarted"}


async def test_a_client_that_stops_reading_costs_neither_memory_nor_ingestion(
    spawn_web: web.Spawn, broker: Broker, ns: str, db: asyncpg.Connection, tmp_path_factory: pytest.TempPathFactory
) -> None:
    svc = await spawn_web(events_client_buffer=200, events_send_timeout_seconds=10, events_max_rate=100_000)
    assert svc.proc is not None
    rounds = 8_000
    publisher = Publisher(broker.port)
    try:
        # Warm-up, then the baseline: a client that reads everything.
        async with open_events(svc.url, {"kind": "message"}) as reader:

            async def drain() -> None:
                with contextlib.suppress(EOFError, httpx.HTTPError):
                    while True:
                        await reader.next(timeout=60)

            draining = asyncio.create_task(drain())
            await asyncio.to_thread(publisher.publish_many, [telemetry(ns, "W", i) for i in range(2_000)])
            await committed(svc, 2_000)
            rss_before = rss_kib(svc.proc.pid)
            started = time.monotonic()
            await asyncio.to_thread(publisher.publish_many, [telemetry(ns, "A", i) for i in range(rounds)])
            await committed(svc, 2_000 + rounds)
            baseline = time.monotonic() - started
            draining.cancel()

        # A client that sends its request, reads the headers and then nothing, with a small
        # receive buffer: the service's socket fills up within a few hundred events.
        stuck = socket.create_connection(("127.0.0.1", svc.port))
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.sendall(b"GET /events?kind=message HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        assert b"200 OK" in stuck.recv(200)
        started = time.monotonic()
        await asyncio.to_thread(publisher.publish_many, [telemetry(ns, "B", i) for i in range(rounds)])
        await committed(svc, 2_000 + 2 * rounds)
        with_stuck = time.monotonic() - started
        rss_after = rss_kib(svc.proc.pid)

        async with httpx.AsyncClient(base_url=svc.url) as client:
            listing = (await client.get("/events/clients")).json()
        stuck_state = listing["clients"]
        # What the client is owed is bounded in the service: either it is still connected with at
        # most EVENTS_CLIENT_BUFFER queued and the rest dropped (oldest first), or its socket took
        # nothing for EVENTS_SEND_TIMEOUT_SECONDS and it was disconnected. What the kernel's socket
        # buffers took is not the process's memory.
        stuck.settimeout(2)
        received = b""
        closed = False
        with contextlib.suppress(TimeoutError):
            while b'"reason":"slow_client"' not in received:
                chunk = stuck.recv(1 << 16)
                if not chunk:
                    closed = True
                    break
                received += chunk
        if stuck_state:
            (entry,) = stuck_state
            assert entry["queued"] <= 200 and entry["dropped"] > 0, entry
        else:
            assert closed, "not listed, so disconnected: its stream must have ended"
        # Reading again, it is told how many it lost (unless the send timeout closed it meanwhile).
        assert closed or (b"event: missed" in received and b'"reason":"slow_client"' in received), received[-500:]
        stuck.close()
    finally:
        publisher.close()
    figures = {
        "messages": rounds,
        "seconds_with_reading_client": round(baseline, 3),
        "seconds_with_stuck_client": round(with_stuck, 3),
        "rss_growth_kib": rss_after - rss_before,
        "stuck_client_at_end": stuck_state,
    }
    print(f"\nstuck /events client: {figures}")
    (tmp_path_factory.getbasetemp() / "events-figures.json").write_text(json.dumps(figures, indent=2))
    # 8 000 events of ~300 bytes would be 2.4 MB if all were held for the client; far less is.
    assert rss_after - rss_before < 20_000, figures
