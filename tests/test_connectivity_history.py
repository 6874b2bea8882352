"""Connectivity events are the transitions of the ordered status history (service/watch/history.py):
two writers (as two replicas would) committing one device's messages in the wrong order record the
events one consumer records in the right order; redelivering everything changes nothing."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg

from service.mqtt.message import InboundMessage
from service.notify.outbox import WEBHOOK, Outbox
from service.records import Record, StatusRecord, TelemetryRecord
from service.storage.writer import BatchWriter, Pending
from service.watch.liveness import Watch
from service.watch.sweep import Sweeper

R0 = float(int(time.time()) - 1000)  # receive times (our clock); the devices' clocks agree with it


def at(offset: float) -> datetime:
    return datetime.fromtimestamp(R0 + offset, UTC)


def writer(engine: Any) -> BatchWriter:
    return BatchWriter(engine, batch_size=1000, linger=0, watch=Watch(Outbox([(WEBHOOK, "http://127.0.0.1:9/h")])))


def stamped(device: str, online: bool, offset: float, *, dup: bool = False) -> Pending:
    rec = StatusRecord(device, at(offset), online, None, None, None, True, False, R0 + offset, dup)
    return _pending(f"x/{device}/status", rec, offset, dup)


def will(device: str, offset: float, *, dup: bool = False) -> Pending:
    rec = StatusRecord(device, at(offset), False, None, None, None, False, False, R0 + offset, dup)
    return _pending(f"x/{device}/status", rec, offset, dup)


def telemetry(device: str, offset: float, *, dup: bool = False) -> Pending:
    return _pending(f"x/{device}/telemetry", TelemetryRecord(device, at(offset), 1.0, 1.0, 1.0, 1, None, R0 + offset),
                    offset, dup)  # fmt: skip


def _pending(topic: str, rec: Record, offset: float, dup: bool) -> Pending:
    return Pending(InboundMessage(topic, b"{}", 1, False, R0 + offset, dup=dup), [rec], "x")


def traffic(device: str) -> dict[str, Pending]:
    """What the device sends, by name, in the order it sends it (every 10 s of both clocks)."""
    return {
        "on": stamped(device, True, 0),
        "off": stamped(device, False, 10),
        "on again": stamped(device, True, 20),
        "will": will(device, 30),  # connection lost: the broker's last will, no timestamp
        "back": telemetry(device, 40),  # heard from again: back online
        "off again": stamped(device, False, 50),
    }


async def commit(w: BatchWriter, *items: Pending) -> None:
    for p in items:
        w.add(p)
    await w.flush_once()


async def events(db: asyncpg.Connection, device: str) -> list[tuple[datetime, bool, str]]:
    rows = await db.fetch("SELECT ts, is_online, cause FROM connectivity_events WHERE device_id = $1 ORDER BY ts",
                          device)  # fmt: skip
    return [(r["ts"], r["is_online"], r["cause"]) for r in rows]


async def device_state(db: asyncpg.Connection, device: str) -> tuple[Any, ...]:
    row = await db.fetchrow("SELECT is_online, connectivity_cause FROM devices WHERE device_id = $1", device)
    return tuple(row)


async def outbox(db: asyncpg.Connection, device: str) -> list[str]:
    rows = await db.fetch("SELECT state FROM notifications WHERE device_id = $1 ORDER BY id", device)
    return [r["state"] for r in rows]


ONE_CONSUMER = [
    (at(0), True, "status"),
    (at(10), False, "status"),
    (at(20), True, "status"),
    (at(30), False, "will"),
    (at(40), True, "message"),
    (at(50), False, "status"),
]


async def test_events_in_the_wrong_commit_order_are_the_right_orders(db: asyncpg.Connection, engine: Any) -> None:
    one, two = writer(engine), writer(engine)
    try:
        right = traffic("RIGHT")
        for name in right:  # one consumer, in order
            await commit(one, right[name])
        assert await events(db, "RIGHT") == ONE_CONSUMER

        # Two replicas: the second holds "off" and "on again" and commits them last, after the first
        # committed everything else (a slow replica, or its share redelivered after a crash).
        wrong = traffic("WRONG")
        await commit(one, wrong["on"])
        await commit(one, wrong["will"])
        await commit(one, wrong["back"])
        await commit(one, wrong["off again"])
        await commit(two, wrong["on again"])
        await commit(two, wrong["off"])
        assert await events(db, "WRONG") == ONE_CONSUMER
        # The current state is what it was before history was derived: the newest status.
        assert await device_state(db, "WRONG") == await device_state(db, "RIGHT") == (False, "status")

        # Everything again, as redeliveries, through both writers at once: nothing changes.
        before = {d: (await events(db, d), await outbox(db, d)) for d in ("RIGHT", "WRONG")}
        again = [p for d in ("RIGHT", "WRONG") for p in traffic(d).values()]
        redelivered = [Pending(p.message._replace(dup=True), [_dup(r) for r in p.records], "x") for p in again]
        for p in redelivered:
            one.add(p)
        for p in reversed(redelivered):
            two.add(p)
        await asyncio.gather(one.flush_once(), two.flush_once())
        assert {d: (await events(db, d), await outbox(db, d)) for d in ("RIGHT", "WRONG")} == before
    finally:
        await one.close()
        await two.close()


def _dup(rec: Record) -> Record:
    return rec._replace(redelivered=True) if isinstance(rec, StatusRecord) else rec


async def test_a_late_offline_turns_a_later_revival_into_no_change(db: asyncpg.Connection, engine: Any) -> None:
    # One consumer: online, then offline by its own status; a timeout and a message change nothing
    # after that (the device said it is offline). The offline reaches the database last here.
    w = writer(engine)
    sweeper = Sweeper(engine, Outbox(), offline_after=5, interval=1, connection=lambda: None,
                      writer_healthy=lambda: True)  # fmt: skip
    try:
        await commit(w, stamped("LATE", True, 0))
        assert await sweeper.sweep_once(now=R0 + 30) == 1  # silent since 0: timed out at 30
        await commit(w, telemetry("LATE", 40))  # back online (cause message), as the device row says
        assert await device_state(db, "LATE") == (True, "message")
        assert await events(db, "LATE") == [(at(0), True, "status"), (at(30), False, "timeout"),
                                            (at(40), True, "message")]  # fmt: skip
        await commit(w, stamped("LATE", False, 10))  # newer than the stored status: it also applies
        assert await device_state(db, "LATE") == (False, "status")
        assert await events(db, "LATE") == [(at(0), True, "status"), (at(10), False, "status")]
        await commit(w, stamped("LATE", False, 10, dup=True))
        assert await events(db, "LATE") == [(at(0), True, "status"), (at(10), False, "status")]
    finally:
        await w.close()


async def test_a_will_stamped_at_connect_time_is_no_offline_before_the_online(
    db: asyncpg.Connection, engine: Any
) -> None:
    # Firmware sets its will at connect with the connect time; the online it sends next is later.
    # Both in one batch, and each in its own: the will is one event, at the time it was received.
    w = writer(engine)
    try:
        def stamped_will(device: str) -> Pending:
            rec = StatusRecord(device, at(0), False, None, None, None, True, False, R0 + 30)
            return _pending(f"x/{device}/status", rec, 30, False)

        await commit(w, stamped("W1", True, 1), stamped_will("W1"))
        await commit(w, stamped("W2", True, 1))
        await commit(w, stamped_will("W2"))
        for device in ("W1", "W2"):
            assert await events(db, device) == [(at(1), True, "status"), (at(30), False, "will")], device
            assert await device_state(db, device) == (False, "will")
    finally:
        await w.close()


async def test_an_old_offline_received_after_everything_is_no_will(db: asyncpg.Connection, engine: Any) -> None:
    # A replica killed holding "off" in its queued share gets it after its restart, after the others
    # stored everything the device sent since: received last, but the device said offline later
    # (at 30), so it is its status of 10 delivered late, not a will (it would be a will row and a
    # revival that one consumer never records).
    one, two = writer(engine), writer(engine)
    try:
        sent = {"on": stamped("Q", True, 0), "on again": stamped("Q", True, 20),
                "off again": stamped("Q", False, 30), "on at 40": stamped("Q", True, 40)}  # fmt: skip
        for p in sent.values():
            await commit(one, p)
        notified = await outbox(db, "Q")  # the offline at 30 and the online at 40
        queued = StatusRecord("Q", at(10), False, None, None, None, True, False, R0 + 50)
        await commit(two, _pending("x/Q/status", queued, 50, False))
        assert await events(db, "Q") == [(at(0), True, "status"), (at(10), False, "status"),
                                         (at(20), True, "status"), (at(30), False, "status"),
                                         (at(40), True, "status")]  # fmt: skip
        assert await device_state(db, "Q") == (True, "status")
        assert await outbox(db, "Q") == notified
    finally:
        await one.close()
        await two.close()


async def test_a_timeout_at_any_microsecond_fraction_is_recorded(db: asyncpg.Connection, engine: Any) -> None:
    # A sweep time whose float PostgreSQL's to_timestamp() and Python's datetime round to different
    # microseconds (about 6 % of them): the history row and its recompute must use one timestamp,
    # or the timeout's event is never written.
    w = writer(engine)
    sweeper = Sweeper(engine, Outbox(), offline_after=5, interval=1, connection=lambda: None,
                      writer_healthy=lambda: True)  # fmt: skip
    now = R0 + 30.1234605  # datetime: ...461 µs, to_timestamp: ...460 µs
    try:
        await commit(w, stamped("FRAC", True, 0))
        assert await sweeper.sweep_once(now=now) == 1
        stamp = datetime.fromtimestamp(now, UTC)
        assert await events(db, "FRAC") == [(at(0), True, "status"), (stamp, False, "timeout")]
    finally:
        await w.close()
