"""Two writers (as two replicas would) committing the same device messages at once: every change is
derived against the locked, stored row, so each is recorded, alerted and notified once."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from service.mqtt.message import InboundMessage
from service.notify.outbox import WEBHOOK, Outbox
from service.records import DeadLetterRecord, RelayRecord, StatusRecord
from service.storage.writer import BatchWriter, Pending
from service.watch.liveness import Watch

DEVICES = [f"R{i:03d}" for i in range(60)]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def writer(engine: Any) -> BatchWriter:
    watch = Watch(Outbox([(WEBHOOK, "http://127.0.0.1:9/hook")]), critical_relays=[("R*", 0)])
    return BatchWriter(engine, batch_size=10_000, linger=0, watch=watch)


def batch(items: list[tuple[str, StatusRecord | RelayRecord]]) -> list[Pending]:
    now = time.time()
    return [Pending(InboundMessage(topic, b"{}", 1, False, now), [rec], "x") for topic, rec in items]


async def test_two_writers_derive_each_change_once(db: asyncpg.Connection, engine: Any) -> None:
    one, two = writer(engine), writer(engine)
    now = time.time()
    first = [(f"x/{d}/status", StatusRecord(d, T0, True, None, None, None, True, False, now)) for d in DEVICES]
    first += [(f"x/{d}/relay/0/status", RelayRecord(d, 0, T0, True, None, now)) for d in DEVICES]
    for p in batch(first):
        one.add(p)
    await one.flush_once()
    # The same later messages reach both (a redelivery after a replica crash), in opposite orders.
    later = [(f"x/{d}/status", StatusRecord(d, T0 + timedelta(seconds=5), False, None, None, None, True, False,
                                            now + 1)) for d in DEVICES]  # fmt: skip
    later += [(f"x/{d}/relay/0/status", RelayRecord(d, 0, T0 + timedelta(seconds=5), False, None, now + 1))
              for d in DEVICES]  # fmt: skip
    for p in batch(later):
        one.add(p)
    for p in reversed(batch(later)):
        two.add(p)
    await asyncio.gather(one.flush_once(), two.flush_once())
    await one.close()
    await two.close()

    assert await db.fetchval("SELECT count(*) FROM devices WHERE is_online = false") == len(DEVICES)
    assert await db.fetchval("SELECT count(*) FROM connectivity_events WHERE NOT is_online") == len(DEVICES)
    assert await db.fetchval("SELECT count(*) FROM alerts WHERE kind = 'offline'") == len(DEVICES)
    per_kind = dict(await db.fetch("SELECT kind, count(*) FROM notifications GROUP BY kind"))
    assert per_kind == {"offline": len(DEVICES), "critical_relay": len(DEVICES)}


async def test_two_writers_upsert_the_same_dead_letters_without_deadlock(
    db: asyncpg.Connection, engine: Any, caplog: Any
) -> None:
    # A bad message redelivered to both replicas: its dead-letter row is upserted by both. Rows are
    # upserted in key order whatever order the batch has them in, so the writers never wait in a cycle.
    now = time.time()
    dead = [DeadLetterRecord(now, f"x/D{i:03d}/telemetry", b"{", 1, "parse", "E", "bad", bytes([i]) * 32)
            for i in range(200)]  # fmt: skip
    one, two = writer(engine), writer(engine)
    try:
        for _ in range(10):
            for d in dead:
                one.add(Pending(InboundMessage(d.topic, b"{", 1, False, now), [d], "x"))
            for d in reversed(dead):
                two.add(Pending(InboundMessage(d.topic, b"{", 1, False, now), [d], "x"))
            await asyncio.gather(one.flush_once(), two.flush_once())
    finally:
        await one.close()
        await two.close()
    assert "deadlock" not in caplog.text.lower()
    assert await db.fetchval("SELECT count(*) FROM dead_letters") == len(dead)
    assert await db.fetchval("SELECT min(deliveries) FROM dead_letters") == 20
