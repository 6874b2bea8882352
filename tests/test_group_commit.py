"""The writer's group commit and its binary COPY rows, against the real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from service.mqtt.message import InboundMessage
from service.records import Record, RelayRecord, TelemetryRecord
from service.storage import statements as sql
from service.storage.writer import BatchWriter, Committed, Pending
from tests.conftest import eventually

RECEIVED = 1_738_022_400.123456


def pending(records: list[Record], topic: str = "t/x/telemetry") -> Pending:
    message = InboundMessage(topic, json.dumps([repr(r) for r in records]).encode(), 1, False, RECEIVED)
    return Pending(message, records, "telemetry")


def reading(i: int, device: str = "D1", **fields: object) -> TelemetryRecord:
    values: dict[str, object] = {"temperature": 20.5 + i, "humidity": 40.0, "voltage": 3.3, "memory_free": 1000 + i,
                                 "extra": None} | fields  # fmt: skip
    ts = datetime(2025, 1, 28, tzinfo=UTC) + timedelta(seconds=i)
    return TelemetryRecord(device, ts, *values.values(), RECEIVED)  # type: ignore[arg-type]


@pytest.fixture
async def writer(database_url: str) -> AsyncIterator[tuple[BatchWriter, list[int]]]:
    engine = create_async_engine(database_url)
    w = BatchWriter(engine, batch_size=20, linger=0.0)
    batches: list[int] = []
    w.observe(lambda committed: batches.append(len(committed.messages)))
    task = asyncio.create_task(w.run())
    try:
        yield w, batches
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await w.close()
        await engine.dispose()


async def test_idle_writer_commits_at_once_and_arrivals_gather_for_the_next_commit(
    writer: tuple[BatchWriter, list[int]], db: asyncpg.Connection, database_url: str
) -> None:
    w, batches = writer
    # Another session holds a lock the writer's COPY must wait for: its first commit stays in flight.
    blocker = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    hold = blocker.transaction()
    await hold.start()
    await blocker.execute("LOCK TABLE telemetry IN EXCLUSIVE MODE")
    try:
        w.add(pending([reading(0)]))
        # Not waiting for company: the one message is in a commit by itself.
        await eventually(lambda: w.in_commit == 1)
        for i in range(1, 51):
            w.add(pending([reading(i)]))
        assert (w.in_commit, w.backlog) == (1, 51)
        assert batches == []  # nothing committed while the lock is held
    finally:
        await hold.rollback()
        await blocker.close()
    await eventually(lambda: sum(batches) == 51)
    # What arrived during the commit went in the next ones, WRITER_BATCH_SIZE (20) at most each.
    assert batches == [1, 20, 20, 10]
    assert await db.fetchval("SELECT count(*) FROM telemetry") == 51


async def test_binary_copy_stores_what_the_records_say(
    writer: tuple[BatchWriter, list[int]], db: asyncpg.Connection
) -> None:
    w, batches = writer
    plus_two = timezone(timedelta(hours=2))
    telemetry = [
        reading(0, device="ESP32_ü😀"),  # multi-byte device ids
        reading(1)._replace(ts=datetime(2025, 1, 28, 2, 0, 1, 999999, tzinfo=plus_two), temperature=-0.0),
        reading(2, memory_free=2**63 - 1, temperature=1e308, voltage=float("inf")),
    ]
    relays = [
        RelayRecord("D1", 0, datetime(2025, 1, 28, tzinfo=UTC), True, None, RECEIVED),
        RelayRecord("D1", 65535, datetime(2025, 1, 28, 0, 0, 1, 5, tzinfo=UTC), False, "schedé", RECEIVED),
    ]
    w.add(pending([*telemetry, *relays]))
    await eventually(lambda: batches == [1])
    rows = await db.fetch(f"SELECT {', '.join(sql.TELEMETRY_COLUMNS)} FROM telemetry ORDER BY ts")
    received = datetime.fromtimestamp(RECEIVED, UTC)
    assert [tuple(r) for r in rows] == [(*t[:7], received) for t in telemetry]
    rows = await db.fetch(f"SELECT {', '.join(sql.RELAY_HISTORY_COLUMNS)} FROM relay_state_history ORDER BY ts")
    assert [tuple(r) for r in rows] == [(*r[:5], received) for r in relays]


async def test_rows_of_other_shapes_are_packed_field_by_field(
    writer: tuple[BatchWriter, list[int]], db: asyncpg.Connection
) -> None:
    w, batches = writer
    odd = [
        reading(0, humidity=None),
        reading(1, extra='{"rssi": -70, "name": "büro"}'),
        reading(2),
        reading(3, temperature=None, humidity=None, voltage=None, memory_free=None),
        reading(4, voltage=None, extra="{}"),
    ]
    w.add(pending(odd))
    await eventually(lambda: batches == [1])
    rows = await db.fetch(f"SELECT {', '.join(sql.TELEMETRY_COLUMNS[:6])}, extra::text FROM telemetry ORDER BY ts")
    stored = [(*t[:6], None if t.extra is None else json.loads(t.extra)) for t in odd]
    assert [(*r[:6], None if r[6] is None else json.loads(r[6])) for r in rows] == stored


async def test_the_copy_goes_in_pieces_and_a_value_refused_in_a_later_piece_stores_none_of_it(
    writer: tuple[BatchWriter, list[int]], db: asyncpg.Connection
) -> None:
    w, batches = writer
    many = [reading(i, device="MANY") for i in range(sql.COPY_PIECE_ROWS * 2 + 10)]
    pieces = list(sql.telemetry_copy_pieces(many))
    assert len(pieces) == 3 and pieces[0].startswith(sql.COPY_HEADER) and pieces[-1].endswith(sql.COPY_TRAILER)
    assert b"".join(pieces) == sql.telemetry_copy(many)
    # One message of many rows, one of them past int8 in the second piece: its first piece was sent
    # and stored before the value was met, and is rolled back with the rest; the message is a dead
    # letter, the message beside it commits.
    bad = [*many[: sql.COPY_PIECE_ROWS + 5], reading(9999, device="MANY", memory_free=2**63)]
    w.add(pending(bad, topic="t/MANY/telemetry"))
    w.add(pending([reading(0, device="ONE")]))
    await eventually(lambda: sum(batches) == 2)
    assert await db.fetchval("SELECT array_agg(DISTINCT device_id) FROM telemetry") == ["ONE"]
    assert await db.fetchval("SELECT count(*) FROM telemetry") == 1
    dead = await db.fetchrow("SELECT topic, error_message FROM dead_letters")
    assert dead["topic"] == "t/MANY/telemetry" and "invalid input for telemetry" in dead["error_message"]
    # The same rows without the bad one go in three pieces, every row stored once.
    w.add(pending(many, topic="t/MANY/telemetry"))
    await eventually(lambda: sum(batches) == 3)
    assert await db.fetchval("SELECT count(*) FROM telemetry WHERE device_id = 'MANY'") == len(many)


async def test_redelivered_rows_and_refused_values_on_the_binary_path(
    writer: tuple[BatchWriter, list[int]], db: asyncpg.Connection
) -> None:
    w, batches = writer
    w.add(pending([reading(0), reading(1)]))
    await eventually(lambda: batches == [1])
    # The broker redelivers the two (stored already) with a new one: ON CONFLICT keeps them once.
    w.add(pending([reading(0), reading(1), reading(2)]))
    await eventually(lambda: batches == [1, 1])
    assert await db.fetchval("SELECT count(*) FROM telemetry") == 3
    # An int8 overflow found while packing the row: the message becomes a dead letter, the others commit.
    w.add(pending([reading(3)]))
    w.add(pending([reading(4, memory_free=2**63)], topic="t/x/telemetry-refused"))
    w.add(pending([reading(5)]))
    await eventually(lambda: sum(batches) == 5)
    assert await db.fetchval("SELECT count(*) FROM telemetry") == 5
    dead = await db.fetchrow("SELECT topic, stage, error_message FROM dead_letters")
    assert (dead["topic"], dead["stage"]) == ("t/x/telemetry-refused", "storage")
    assert "invalid input for telemetry" in dead["error_message"]


async def test_observers_get_the_records_and_touches_the_commit_wrote(
    writer: tuple[BatchWriter, list[int]], db: asyncpg.Connection
) -> None:
    w, _batches = writer
    seen: list[Committed] = []
    w.observe(seen.append)
    w.add_many([pending([reading(0, device="D1")]), pending([reading(1, device="D2")])])
    await eventually(lambda: len(seen) == 1)
    first = seen[0]
    assert [r.device_id for r in first.records.telemetry] == ["D1", "D2"] and not first.records.dead
    assert sorted(d for d, _ in first.touched) == ["D1", "D2"]
    # Within DEVICE_LAST_SEEN_RESOLUTION of the last touch: stored, last_seen left alone.
    w.add(pending([reading(2, device="D1")]))
    await eventually(lambda: len(seen) == 2)
    assert [r.ts for r in seen[1].records.telemetry] == [reading(2).ts] and seen[1].touched == []
    # A batch split around a refused message: the records as stored (its dead letter), every touch.
    w.add_many([pending([reading(3, device="D3")]), pending([reading(4, device="D4", memory_free=2**63)]),
                pending([reading(5, device="D5")])])  # fmt: skip
    await eventually(lambda: len(seen) == 3)
    split = seen[2]
    assert [r.device_id for r in split.records.telemetry] == ["D3", "D5"]
    assert [d.stage for d in split.records.dead] == ["storage"]
    assert sorted(d for d, _ in split.touched) == ["D3", "D5"]
    stored = await db.fetch("SELECT device_id FROM devices ORDER BY device_id")
    assert [r["device_id"] for r in stored] == ["D1", "D2", "D3", "D5"]
