"""End to end: real publishes into the run's Mosquitto, rows read back from PostgreSQL."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import asyncpg
import pytest

from tests.conftest import ServiceFactory, eventually
from tests.support.publisher import Publisher

TELEMETRY = {"device_id": "ESP32_001", "temperature": 25.6, "humidity": 45.2, "voltage": 3.28,
             "memory_free": 45120, "timestamp": "2025-01-28T10:30:15Z"}  # fmt: skip
RELAY = {"device_id": "ESP32_001", "relay_index": 0, "state": True, "triggered_by": "manual",
         "timestamp": "2025-01-28T10:30:30Z"}  # fmt: skip
STATUS = {"device_id": "ESP32_001", "status": "online", "ip_address": "192.168.1.100",
          "firmware_version": "1.2.0", "uptime": 3600, "timestamp": "2025-01-28T10:30:00Z"}  # fmt: skip


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


async def count(db: asyncpg.Connection, table: str, where: str = "true") -> int:
    return int(await db.fetchval(f"SELECT count(*) FROM {table} WHERE {where}"))


async def test_each_route_stores_its_row(
    service: ServiceFactory, publisher: Publisher, db: asyncpg.Connection, ns: str
) -> None:
    async with service() as svc:
        publisher.publish(f"{ns}/ESP32_001/telemetry", {**TELEMETRY, "rssi": -67})
        publisher.publish(f"{ns}/ESP32_001/relay/0/status", RELAY)
        publisher.publish(f"{ns}/ESP32_001/status", STATUS)
        publisher.publish(f"{ns}/ESP32_001/display/interaction",
                          {"type": "touch", "screen": "home", "element": "btn1", "value": 1,
                           "timestamp": "2025-01-28T10:31:00Z", "x": 10})  # fmt: skip
        publisher.publish(f"{ns}/ESP32_001/system/boot", {"reason": "power_on", "heap": 120000})
        await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 5)

    row = await db.fetchrow("SELECT * FROM telemetry")
    assert (row["device_id"], row["ts"], row["temperature"], row["humidity"], row["voltage"], row["memory_free"]) == (
        "ESP32_001", ts("2025-01-28T10:30:15Z"), 25.6, 45.2, 3.28, 45120)  # fmt: skip
    assert json.loads(row["extra"]) == {"rssi": -67}

    relay = await db.fetchrow("SELECT * FROM relays")
    assert (relay["device_id"], relay["relay_index"], relay["state"], relay["triggered_by"], relay["ts"]) == (
        "ESP32_001", 0, True, "manual", ts("2025-01-28T10:30:30Z"))  # fmt: skip
    assert await count(db, "relay_state_history", "relay_index = 0 AND state") == 1

    device = await db.fetchrow("SELECT * FROM devices")
    assert device["device_id"] == "ESP32_001"
    assert device["is_online"] is True
    assert str(device["ip_address"]) == "192.168.1.100"
    assert (device["firmware_version"], device["uptime"]) == ("1.2.0", 3600)
    # last_seen is when the service heard from the device (its own clock, not the device's)
    assert abs((device["last_seen"] - datetime.now(UTC)).total_seconds()) < 60
    events = await db.fetch("SELECT ts, is_online FROM connectivity_events")
    assert [(e["ts"], e["is_online"]) for e in events] == [(ts("2025-01-28T10:30:00Z"), True)]

    display = await db.fetchrow("SELECT * FROM display_interactions")
    assert (display["interaction_type"], display["screen"], display["element"]) == ("touch", "home", "btn1")
    assert json.loads(display["value"]) == 1
    assert json.loads(display["data"]) == {"x": 10}

    system = await db.fetchrow("SELECT * FROM system_messages")
    assert (system["device_id"], system["kind"]) == ("ESP32_001", "boot")
    assert json.loads(system["payload"]) == {"reason": "power_on", "heap": 120000}
    assert await count(db, "dead_letters") == 0


async def test_unknown_device_is_registered(
    service: ServiceFactory, publisher: Publisher, db: asyncpg.Connection, ns: str
) -> None:
    async with service() as svc:
        publisher.publish(f"{ns}/NEW_DEVICE_9/telemetry", {"temperature": 20.0, "timestamp": "2025-02-01T00:00:00Z"})
        await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 1)
    device = await db.fetchrow("SELECT * FROM devices WHERE device_id = 'NEW_DEVICE_9'")
    assert device is not None
    assert abs((device["last_seen"] - datetime.now(UTC)).total_seconds()) < 60
    assert device["first_seen"] == device["last_seen"]  # both: when the service first heard of it
    assert device["is_online"] is None  # no status message yet


async def test_redelivered_messages_leave_one_row(
    service: ServiceFactory, publisher: Publisher, db: asyncpg.Connection, ns: str
) -> None:
    async with service() as svc:
        for _ in range(2):  # the same payload twice, as a redelivery would bring it
            publisher.publish(f"{ns}/ESP32_001/telemetry", TELEMETRY)
            publisher.publish(f"{ns}/ESP32_001/relay/0/status", RELAY)
            publisher.publish(f"{ns}/ESP32_001/status", STATUS)
            publisher.publish(
                f"{ns}/ESP32_001/display/interaction", {"type": "touch", "timestamp": "2025-01-28T10:31:00Z"}
            )
            publisher.publish(f"{ns}/ESP32_001/system/ota", {"stage": "done", "timestamp": "2025-01-28T10:32:00Z"})
        await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 10)
    for table in ("telemetry", "relay_state_history", "relays", "connectivity_events", "devices",
                  "display_interactions", "system_messages"):  # fmt: skip
        assert await count(db, table) == 1, table


async def test_rows_stored_by_an_earlier_batch_are_skipped_and_the_new_ones_stored(
    service: ServiceFactory, publisher: Publisher, db: asyncpg.Connection, ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="service.storage.writer")
    first = [(f"{ns}/D{i}/telemetry", {"temperature": i, "timestamp": "2025-05-01T00:00:00Z"}) for i in range(5)]
    first += [(f"{ns}/D{i}/relay/1/status", {"state": True, "timestamp": "2025-05-01T00:00:00Z"}) for i in range(5)]
    later = [(f"{ns}/D{i}/telemetry", {"temperature": i, "timestamp": "2025-05-01T00:00:01Z"}) for i in range(5)]
    async with service() as svc:
        publisher.publish_many(first)
        await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 10)
        # A redelivery of what is stored (as after a lost PUBACK), mixed with new messages.
        publisher.publish_many([*first, *later])
        await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 25)
    assert await count(db, "telemetry") == 10
    assert await count(db, "telemetry", "ts = '2025-05-01T00:00:01Z'") == 5
    assert await count(db, "relay_state_history") == 5
    assert any("stored already" in r.getMessage() for r in caplog.records)


async def test_bad_input_is_dead_lettered_and_ingestion_goes_on(
    service: ServiceFactory, publisher: Publisher, db: asyncpg.Connection, ns: str
) -> None:
    bad = [
        (f"{ns}/D1/telemetry", b"{not json", "decode", "DecodeError"),
        (f"{ns}/D1/telemetry", b"\xff\xfe\x00binary", "decode", "DecodeError"),
        (f"{ns}/D1/telemetry", b'{"temperature": "hot"}', "validation", "PayloadInvalid"),
        (f"{ns}/D1/status", b'{"status": "sleeping"}', "validation", "PayloadInvalid"),
        (f"{ns}/D1/telemetry", b'{"device_id": "D2", "temperature": 1}', "validation", "TopicMismatch"),
        (f"{ns}/D1/relay/1/status", b'{"relay_index": 2, "state": true}', "validation", "TopicMismatch"),
        (f"{ns}/D1/relay/x/status", b'{"state": true}', "route", "NoRoute"),
        (f"{ns}/D1/unknown", b"{}", "route", "NoRoute"),
        # valid JSON the model accepts, refused by PostgreSQL (jsonb cannot hold \u0000)
        (f"{ns}/D1/system/log", b'{"line": "nul\\u0000here"}', "storage", "StorageRejected"),
        # ... and one a telemetry column cannot hold (bigint), found while encoding the batch's COPY
        (f"{ns}/D1/telemetry", b'{"memory_free": 9223372036854775808}', "storage", "StorageRejected"),
    ]
    async with service() as svc:
        for topic, payload, _stage, _cls in bad:
            publisher.publish(topic, payload)
        publisher.publish(f"{ns}/D1/telemetry", {"temperature": 21.5, "timestamp": "2025-03-01T00:00:00Z"})
        await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == len(bad) + 1)
        health = (await svc.client.get("/health/mqtt-monitor")).json()
        assert health["errors_count"] == len(bad)
        assert health["status"] == "healthy"

    rows = await db.fetch("SELECT topic, payload, stage, error_class, error_message FROM dead_letters ORDER BY id")
    got = sorted((r["topic"], bytes(r["payload"]), r["stage"], r["error_class"]) for r in rows)
    assert got == sorted(bad)
    assert all(r["error_message"] for r in rows)
    assert await count(db, "telemetry", "temperature = 21.5") == 1


async def test_one_refused_row_does_not_sink_its_batch(
    service: ServiceFactory, publisher: Publisher, db: asyncpg.Connection, ns: str
) -> None:
    messages = [(f"{ns}/D{i % 7}/telemetry", {"temperature": i, "timestamp": f"2025-04-01T00:00:{i:02d}Z"})
                for i in range(40)]  # fmt: skip
    messages.insert(17, (f"{ns}/D1/system/log", b'{"line": "\\u0000"}'))
    async with service(writer_linger_ms=500, writer_batch_size=100) as svc:
        publisher.publish_many(messages)
        await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 41)
    assert await count(db, "telemetry") == 40
    assert await count(db, "dead_letters", "stage = 'storage'") == 1


async def test_a_status_the_state_tables_refuse_is_dead_lettered_and_its_batch_stored(
    service: ServiceFactory, publisher: Publisher, db: asyncpg.Connection, ns: str
) -> None:
    # An uptime beyond int8 is valid for the model (any int >= 0) and refused by PostgreSQL in the
    # status update: a permanent refusal, so that message alone becomes a dead letter.
    messages = [(f"{ns}/S{i}/status", {**STATUS, "device_id": f"S{i}", "uptime": 2**64 if i == 3 else i})
                for i in range(6)]  # fmt: skip
    messages += [(f"{ns}/S{i}/telemetry", {"temperature": i, "timestamp": "2025-04-01T00:00:00Z"}) for i in range(6)]
    async with service(writer_linger_ms=500, writer_batch_size=100) as svc:
        publisher.publish_many(messages)
        await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 12)
        assert svc.runtime.ingestor.writer.healthy
    assert await count(db, "telemetry") == 6
    assert await count(db, "devices", "uptime IS NOT NULL") == 5
    dead = await db.fetchrow("SELECT topic, stage FROM dead_letters")
    assert (dead["topic"], dead["stage"]) == (f"{ns}/S3/status", "storage")


async def test_a_refused_dead_letter_is_logged_and_does_not_block_ingestion(
    service: ServiceFactory, publisher: Publisher, db: asyncpg.Connection, ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A constraint (as an operator might add) makes PostgreSQL refuse the dead letter itself.
    await db.execute("ALTER TABLE dead_letters ADD CONSTRAINT test_refuse CHECK (topic NOT LIKE '%/REFUSED/%')")
    messages = [(f"{ns}/D{i % 3}/telemetry", {"temperature": i, "timestamp": f"2025-04-02T00:00:{i:02d}Z"})
                for i in range(20)]  # fmt: skip
    messages.insert(7, (f"{ns}/REFUSED/system/log", b'{"line": "\\u0000"}'))
    try:
        async with service(writer_linger_ms=300, writer_batch_size=100) as svc:
            publisher.publish_many(messages)
            await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 21)
            # and the writer is not stuck on it: a later message is stored too
            publisher.publish(f"{ns}/D0/telemetry", {"temperature": 99, "timestamp": "2025-04-02T00:01:00Z"})
            await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 22)
            assert svc.runtime.ingestor.writer.healthy
    finally:
        await db.execute("ALTER TABLE dead_letters DROP CONSTRAINT test_refuse")
    assert await count(db, "telemetry") == 21
    assert await count(db, "dead_letters") == 0
    dropped = [r for r in caplog.records if "message dropped" in r.getMessage()]
    assert len(dropped) == 1
    assert f"{ns}/REFUSED/system/log" in dropped[0].getMessage()
    assert "eyJsaW5lIjogIlx1MDAwMCJ9" in dropped[0].getMessage()  # the payload, base64


async def test_out_of_order_status_keeps_the_newest(
    service: ServiceFactory, publisher: Publisher, db: asyncpg.Connection, ns: str
) -> None:
    topic = f"{ns}/ESP32_007/status"
    relay = f"{ns}/ESP32_007/relay/1/status"
    messages = [
        (topic, {"status": "online", "ip_address": "10.0.0.2", "timestamp": "2025-01-28T10:00:00Z"}),
        (topic, {"status": "offline", "timestamp": "2025-01-28T12:00:00Z"}),
        # older messages arriving late must not move the state back
        (topic, {"status": "online", "ip_address": "10.0.0.9", "timestamp": "2025-01-28T11:00:00Z"}),
        (relay, {"state": False, "timestamp": "2025-01-28T12:00:00Z"}),
        (relay, {"state": True, "timestamp": "2025-01-28T11:00:00Z"}),
    ]
    async with service() as svc:
        for n, (t, payload) in enumerate(messages, 1):  # one at a time: each its own commit
            publisher.publish(t, payload)
            await eventually(lambda n=n: svc.runtime.ingestor.stats.messages_processed == n)
    device = await db.fetchrow("SELECT * FROM devices")
    assert (device["is_online"], device["status_ts"]) == (False, ts("2025-01-28T12:00:00Z"))
    assert str(device["ip_address"]) == "10.0.0.2"
    relay = await db.fetchrow("SELECT state, ts FROM relays")
    assert (relay["state"], relay["ts"]) == (False, ts("2025-01-28T12:00:00Z"))
    assert await count(db, "relay_state_history") == 2  # history keeps both


async def test_connectivity_events_follow_changes_within_a_batch(
    service: ServiceFactory, publisher: Publisher, db: asyncpg.Connection, ns: str
) -> None:
    topic = f"{ns}/ESP32_008/status"
    sequence = [("online", "10:00"), ("online", "10:01"), ("offline", "10:02"), ("online", "10:03")]
    async with service(writer_linger_ms=1000) as svc:
        publisher.publish_many([(topic, {"status": s, "timestamp": f"2025-01-28T{t}:00Z"}) for s, t in sequence])
        await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 4)
    events = await db.fetch("SELECT ts, is_online FROM connectivity_events ORDER BY ts")
    assert [(e["ts"].strftime("%H:%M"), e["is_online"]) for e in events] == [
        ("10:00", True), ("10:02", False), ("10:03", True)]  # fmt: skip


async def test_message_published_while_stopped_is_stored_on_start(
    service: ServiceFactory, publisher: Publisher, db: asyncpg.Connection, ns: str
) -> None:
    async with service():
        pass  # first run creates the persistent session and its subscription
    publisher.publish(f"{ns}/ESP32_001/telemetry", TELEMETRY)
    assert await count(db, "telemetry") == 0
    async with service() as svc:
        await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 1)
    assert await count(db, "telemetry") == 1


async def test_tables_in_their_own_schema(
    service: ServiceFactory, publisher: Publisher, db: asyncpg.Connection, ns: str
) -> None:
    schema = f"s_{ns}"
    try:
        async with service(database_schema=schema, db_migrate_on_start=True) as svc:
            publisher.publish(f"{ns}/D1/telemetry", {"temperature": 7.5, "timestamp": "2025-06-01T00:00:00Z"})
            await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == 1)
        assert await db.fetchval(f"SELECT temperature FROM {schema}.telemetry") == 7.5
        assert await db.fetchval(f"SELECT count(*) FROM {schema}.alembic_version") == 1
        assert await count(db, "telemetry") == 0  # nothing in public
    finally:
        await db.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
