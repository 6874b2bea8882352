"""Statistics and anomalies written with the batch (service/stats/), against the real database:
only inserted rows count, redeliveries and late samples change nothing, two writers count exactly."""

from __future__ import annotations

import asyncio
import json
import math
import random
import struct
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from service.mqtt.message import InboundMessage
from service.notify.outbox import WEBHOOK, Outbox
from service.records import TelemetryRecord
from service.stats.ewma import Params, fresh, observe
from service.stats.read import decode
from service.stats.store import Stats
from service.storage.statements import TELEMETRY_FIXED
from service.storage.writer import BatchWriter, Pending
from tests.conftest import ServiceFactory, eventually
from tests.support.publisher import Publisher

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DEVICE = "S1"


def writer(engine: Any) -> BatchWriter:
    stats = Stats(Outbox([(WEBHOOK, "http://127.0.0.1:9/hook")]), Params())
    return BatchWriter(engine, batch_size=10_000, linger=0, stats=stats)


def series(values: Sequence[float], device: str = DEVICE, start: int = 0) -> list[TelemetryRecord]:
    now = time.time()
    return [
        TelemetryRecord(device, T0 + timedelta(seconds=start + i), v, None, None, None, None, now)
        for i, v in enumerate(values)
    ]


def stable(n: int, seed: int = 1, level: float = 20.0) -> list[float]:
    r = random.Random(seed)
    return [level + r.gauss(0, 0.5) for _ in range(n)]


async def write(w: BatchWriter, records: Sequence[TelemetryRecord], per_batch: int = 25) -> None:
    for i in range(0, len(records), per_batch):
        for rec in records[i : i + per_batch]:
            w.add(Pending(InboundMessage(f"x/{rec.device_id}/telemetry", b"{}", 1, False, rec.received_at), [rec], "t"))
        await w.flush_once()


async def figures(db: asyncpg.Connection, metric: str = "temperature", device: str = DEVICE) -> dict[str, Any]:
    row = await db.fetchrow("SELECT metrics, state FROM telemetry_stats WHERE device_id = $1", device)
    assert row is not None
    found = {m["metric"]: m for m in decode(row["metrics"], row["state"])}
    return found[metric]


async def notified(db: asyncpg.Connection) -> list[tuple[str, str]]:
    rows = await db.fetch("SELECT kind, state FROM notifications ORDER BY id")
    return [(r["kind"], r["state"]) for r in rows]


async def test_spike_opens_and_resolves_one_alert_and_a_redelivery_changes_nothing(
    db: asyncpg.Connection, engine: Any
) -> None:
    values = stable(200)
    values[120] = 40.0
    records = series(values)
    w = writer(engine)
    await write(w, records)
    alerts = await db.fetch("SELECT key, details, resolved_at FROM alerts WHERE kind = 'anomaly'")
    assert len(alerts) == 1 and alerts[0]["key"] == "temperature" and alerts[0]["resolved_at"] is not None
    details = json.loads(alerts[0]["details"])
    assert details["value"] == 40.0 and details["z"] > 4 and abs(details["average"] - 20) < 0.5
    assert await notified(db) == [("anomaly", "opened"), ("anomaly", "resolved")]
    before = await figures(db)
    assert before["count"] == 200 and before["max"] == 40.0 and not before["anomalous"]

    # The broker delivers it all again (a restart before the acknowledgements): nothing changes.
    again = writer(engine)
    await write(again, records, per_batch=40)
    await write(w, records[:10])
    await w.close()
    await again.close()
    assert await figures(db) == before
    assert await db.fetchval("SELECT count(*) FROM alerts") == 1
    assert await notified(db) == [("anomaly", "opened"), ("anomaly", "resolved")]
    assert await db.fetchval("SELECT count(*) FROM telemetry") == 200


async def test_step_change_opens_then_becomes_the_new_baseline(db: asyncpg.Connection, engine: Any) -> None:
    w = writer(engine)
    await write(w, series(stable(100) + stable(100, seed=2, level=30.0)))
    await w.close()
    f = await figures(db)
    assert not f["anomalous"] and abs(f["average"] - 30.0) < 0.5
    alerts = await db.fetch("SELECT count, resolved_at FROM alerts WHERE kind = 'anomaly'")
    assert len(alerts) == 1 and alerts[0]["resolved_at"] is not None
    assert await notified(db) == [("anomaly", "opened"), ("anomaly", "resolved")]


async def test_noise_alone_opens_no_alert(db: asyncpg.Connection, engine: Any) -> None:
    r = random.Random(3)
    w = writer(engine)
    await write(w, series([20.0 + r.uniform(-1, 1) for _ in range(2000)]), per_batch=500)
    await w.close()
    assert (await figures(db))["count"] == 2000
    assert await db.fetchval("SELECT count(*) FROM alerts") == 0


async def test_an_old_sample_is_stored_but_does_not_move_the_average(db: asyncpg.Connection, engine: Any) -> None:
    w = writer(engine)
    await write(w, series(stable(100), start=100))
    before = await figures(db)
    late = TelemetryRecord(DEVICE, T0 + timedelta(seconds=5), 1000.0, None, None, None, None, time.time())
    await write(w, [late])
    await w.close()
    after = await figures(db)
    assert await db.fetchval("SELECT count(*) FROM telemetry WHERE device_id = $1", DEVICE) == 101
    assert after["count"] == 101 and after["max"] == 1000.0
    for k in ("average", "variance", "samples", "last_value", "last_ts", "anomalous", "last_z"):
        assert after[k] == before[k], k
    assert await db.fetchval("SELECT count(*) FROM alerts") == 0


async def test_extras_are_tracked_up_to_the_bound(db: asyncpg.Connection, engine: Any) -> None:
    stats = Stats(Outbox([]), Params(), max_metrics=6)
    w = BatchWriter(engine, batch_size=10_000, linger=0, stats=stats)
    now = time.time()
    extra = json.dumps({f"f{i:02d}": i for i in range(10)} | {"flag": True})
    rec = TelemetryRecord(DEVICE, T0, 20.0, 50.0, 3.3, 1000, extra, now)
    await write(w, [rec, rec._replace(ts=T0 + timedelta(seconds=1))])
    await w.close()
    metrics = await db.fetchval("SELECT metrics FROM telemetry_stats WHERE device_id = $1", DEVICE)
    assert sorted(metrics) == ["f00", "f01", "humidity", "memory_free", "temperature", "voltage"]
    assert (await figures(db, "f01"))["count"] == 2


async def test_two_writers_on_the_same_device_count_exactly(db: asyncpg.Connection, engine: Any) -> None:
    one, two = writer(engine), writer(engine)
    records = series(stable(600))
    for d in ("S2", "S3"):
        records += series(stable(600, seed=5), device=d)
    random.Random(7).shuffle(records)
    # Both know the devices first (a device's first message locks its new devices row, which would
    # serialize the writers), but the devices have no stats yet (as after the upgrade that added
    # them): both writers create the same stats rows at once, one finds the other's.
    now = time.time()
    for i, w in enumerate((one, two)):
        await write(w, [TelemetryRecord(d, T0 - timedelta(seconds=1 + i), None, None, 3.3, None, None, now)
                        for d in ("S1", "S2", "S3")])  # fmt: skip
    await db.execute("DELETE FROM telemetry_stats")
    # Each writer gets its own half of each round, the rounds commit concurrently. In the first both
    # create the stats rows (one finds the other's and writes its batch again); in the later ones
    # each also gets a slice of the other's half (a redelivery to the other replica).
    rounds = 6
    size = len(records) // rounds
    for k in range(rounds):
        part = records[k * size : (k + 1) * size]
        mine, theirs = part[::2], part[1::2]
        extra = 20 if k else 0
        await asyncio.gather(
            write(one, mine + theirs[:extra], per_batch=10_000), write(two, theirs + mine[:extra], per_batch=10_000)
        )
    await one.close()
    await two.close()
    temperature = [await figures(db, "temperature", d) for d in ("S1", "S2", "S3")]
    assert [f["count"] for f in temperature] == [600, 600, 600]
    assert all(f["samples"] <= 600 for f in temperature)
    assert await db.fetchval("SELECT array_agg(DISTINCT m) FROM telemetry_stats, unnest(metrics) m") == ["temperature"]
    assert await db.fetchval("SELECT count(*) FROM telemetry WHERE temperature IS NOT NULL") == 1800


def reference(samples: Sequence[tuple[int, float]]) -> dict[str, Any]:
    """observe() over these (second from T0, value) samples one by one, decoded as stored."""
    p = Params()
    v = fresh()
    for second, x in samples:
        us = float((T0 + timedelta(seconds=second) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1))
        observe(v, 0, us, x, p, p.alpha)
    return decode(["temperature"], struct.pack("<16d", *v))[0]


def assert_figures(stored: dict[str, Any], want: dict[str, Any]) -> None:
    assert stored.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, float):
            assert math.isclose(stored[key], value, rel_tol=1e-12, abs_tol=1e-12), key
        else:
            assert stored[key] == value, key


async def test_a_state_another_writer_moved_on_since_it_was_cached_is_folded_again(
    db: asyncpg.Connection, engine: Any
) -> None:
    # `one` caches the row it wrote; `two` then moves the row on; `one`'s next batch must fold its
    # samples into the row as `two` left it (a cache taken at its word would lose `two`'s 50).
    values = stable(150)
    one, two = writer(engine), writer(engine)
    await write(one, series(values[:50]), per_batch=10_000)
    await write(two, series(values[50:100], start=50), per_batch=10_000)
    await write(one, series(values[100:], start=100), per_batch=10_000)
    await write(one, series(stable(10, seed=9), start=150), per_batch=10_000)  # and on from there
    await one.close()
    await two.close()
    assert_figures(await figures(db), reference(list(enumerate(values + stable(10, seed=9)))))


async def test_a_rolled_back_batch_leaves_the_cache_no_state_to_trust(db: asyncpg.Connection, engine: Any) -> None:
    # A batch whose transaction rolls back after its statistics were written (and cached): the next
    # batch folds into the committed row, as if the rolled-back one had never been.
    values = stable(150)
    w = writer(engine)
    await write(w, series(values[:50]), per_batch=10_000)
    now = time.time()
    batch = [Pending(InboundMessage(f"x/{DEVICE}/telemetry", b"{}", 1, False, now), [rec], "t")
             for rec in series(values[50:100], start=50)]  # fmt: skip
    tx = db.transaction()
    await tx.start()
    await w.write_in(db, batch)
    assert await db.fetchval("SELECT count(*) FROM telemetry") == 100
    await tx.rollback()
    await write(w, series(values[100:], start=100), per_batch=10_000)
    await w.close()
    assert await db.fetchval("SELECT count(*) FROM telemetry") == 100
    kept = [(i, x) for i, x in enumerate(values) if not 50 <= i < 100]
    assert_figures(await figures(db), reference(kept))


async def test_api_stats_over_mqtt(
    service: ServiceFactory, publisher: Publisher, db: asyncpg.Connection, ns: str
) -> None:
    values = stable(60)
    values[57] = 45.0  # two normal samples after it: still open
    messages = [
        (f"{ns}/D1/telemetry", {"temperature": v, "voltage": 3.3,
                                "timestamp": (T0 + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%S.000Z")})
        for i, v in enumerate(values)
    ]  # fmt: skip
    async with service(stats_enabled=True) as svc:
        publisher.publish_many(messages)
        await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == len(messages))
        c = svc.client
        stats = (await c.get("/devices/D1/stats")).json()
        by_metric = {m["metric"]: m for m in stats}
        assert set(by_metric) == {"temperature", "voltage"}
        t = by_metric["temperature"]
        assert t["count"] == 60 and t["max"] == 45.0 and t["last_value"] == values[-1]
        assert t["anomalous"] is True and abs(t["average"] - 20.0) < 0.5
        detail = (await c.get("/devices/D1")).json()
        assert {m["metric"] for m in detail["stats"]} == {"temperature", "voltage"}
        assert [a["kind"] for a in detail["open_alerts"]] == ["anomaly"]
        assert (await c.get("/devices/nope/stats")).status_code == 404


async def test_a_batch_whose_copy_fails_counts_only_what_it_stored(db: asyncpg.Connection, engine: Any) -> None:
    # A batch of a device whose state is cached, half of it stored already (a redelivery mixed with
    # new samples): its COPY fails, the batch is written again with ON CONFLICT, and only the 50
    # samples stored then are counted, not the 100 the COPY would have stored.
    values = stable(150)
    w = writer(engine)
    await write(w, series(values[:100]), per_batch=10_000)
    await write(w, series(values[50:], start=50), per_batch=10_000)
    await w.close()
    assert await db.fetchval("SELECT count(*) FROM telemetry") == 150
    assert_figures(await figures(db), reference(list(enumerate(values))))


class AheadStats(Stats):
    """Stats recording what fold_ahead() gave: which batches were folded while their COPY ran."""

    def __init__(self) -> None:
        super().__init__(Outbox([(WEBHOOK, "http://127.0.0.1:9/hook")]), Params())
        self.ahead: list[bool] = []
        self.fixed: list[bool] = []  # whether the COPY's packed readings came with the rows

    def fold_ahead(self, rows: Sequence[Sequence[Any]], fixed: bytes | None = None) -> Any:
        folded = super().fold_ahead(rows, fixed)
        self.ahead.append(folded is not None)
        self.fixed.append(fixed is not None and len(fixed) == len(rows) * TELEMETRY_FIXED.size)
        return folded


def ahead_writer(engine: Any) -> tuple[AheadStats, BatchWriter]:
    stats = AheadStats()
    return stats, BatchWriter(engine, batch_size=10_000, linger=0, stats=stats)


def full(values: Sequence[float], device: str = DEVICE, start: int = 0) -> list[TelemetryRecord]:
    """series() with every known reading: the rows the writer sends as binary COPY."""
    now = time.time()
    return [
        TelemetryRecord(device, T0 + timedelta(seconds=start + i), v, 50.0, 3.3, 1000, None, now)
        for i, v in enumerate(values)
    ]


async def test_a_batch_folded_while_its_copy_runs_is_stored_as_observe_says(
    db: asyncpg.Connection, engine: Any
) -> None:
    # Binary COPY batches of a cached device are folded ahead (during the COPY); the first one,
    # whose device has no cached row, is not. Each metric's figures are observe()'s.
    values = stable(200)
    stats, w = ahead_writer(engine)
    await write(w, full(values), per_batch=50)
    await w.close()
    assert stats.ahead == [False, True, True, True] and stats.fixed == [True] * 4
    assert_figures(await figures(db), reference(list(enumerate(values))))
    humidity = await figures(db, "humidity")
    assert (humidity["count"], humidity["min"], humidity["max"]) == (200, 50.0, 50.0)


async def test_a_batch_folded_ahead_whose_copy_fails_counts_only_what_it_stored(
    db: asyncpg.Connection, engine: Any
) -> None:
    # As the test above but on the binary COPY path: the second batch is folded ahead from the
    # cached row, its COPY then fails on the 50 rows stored already, and that fold is dropped: the
    # batch written again with ON CONFLICT counts its 50 new samples only (150, not 200).
    values = stable(150)
    stats, w = ahead_writer(engine)
    await write(w, full(values[:100]), per_batch=10_000)
    await write(w, full(values[50:], start=50), per_batch=10_000)
    await w.close()
    assert stats.ahead == [False, True]
    assert await db.fetchval("SELECT count(*) FROM telemetry") == 150
    assert_figures(await figures(db), reference(list(enumerate(values))))
    assert (await figures(db, "voltage"))["count"] == 150


async def test_stored_figures_equal_observe_as_metrics_appear(db: asyncpg.Connection, engine: Any) -> None:
    # The writer's path (NumPy over the batch, names written only when they grow) against
    # observe() sample by sample: devices gain humidity, then an extra field, in later batches;
    # samples come shuffled within a batch, some late, some spikes.
    w = writer(engine)
    r = random.Random(3)
    p = Params()
    now = time.time()
    devices = ("S1", "S2", "S3")
    reference: dict[tuple[str, str], list[float]] = {}
    batches = []
    for b in range(12):
        batch = []
        for d in devices:
            for i in range(25):
                k = b * 25 + i
                late = r.random() < 0.05
                ts = T0 + timedelta(seconds=k - (1000 if late else 0), microseconds=r.randrange(1000))
                spike = 30.0 if r.random() < 0.02 else 0.0
                extra = json.dumps({"rpm": 900 + r.gauss(0, 5)}) if b >= 8 else None
                hum = 50 + r.gauss(0, 1) if b >= 4 else None
                batch.append(TelemetryRecord(d, ts, 20 + r.gauss(0, 0.5) + spike, hum, None, None, extra, now))
        r.shuffle(batch)
        batches.append(batch)
    for batch in batches:
        await write(w, batch, per_batch=10_000)
        for rec in sorted(batch, key=lambda x: (x.device_id, x.ts)):
            us = float((rec.ts - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1))
            samples = [("temperature", rec.temperature), ("humidity", rec.humidity)]
            samples += list(json.loads(rec.extra).items()) if rec.extra else []
            for metric, value in samples:
                if value is not None:
                    v = reference.setdefault((rec.device_id, metric), fresh())
                    observe(v, 0, us, float(value), p, p.alpha)
    await w.close()
    for d in devices:
        names = await db.fetchval("SELECT metrics FROM telemetry_stats WHERE device_id = $1", d)
        assert names == ["temperature", "humidity", "rpm"]
        for metric in names:
            stored = await figures(db, metric, d)
            want = decode([metric], struct.pack("<16d", *reference[d, metric]))[0]
            assert stored.keys() == want.keys()
            for key, value in want.items():
                if isinstance(value, float):
                    assert math.isclose(stored[key], value, rel_tol=1e-12, abs_tol=1e-12), (d, metric, key)
                else:
                    assert stored[key] == value, (d, metric, key)
    assert await db.fetchval("SELECT count(*) FROM alerts WHERE kind = 'anomaly'") > 0


async def test_stats_rows_are_rewritten_in_place_batch_after_batch(db: asyncpg.Connection, engine: Any) -> None:
    # Every batch rewrites its devices' rows: with room on their pages the new versions stay there
    # (HOT updates, migration 0009) and the table keeps its size instead of growing by a copy of
    # itself per batch until autovacuum comes by.
    devices = [f"H{i:03d}" for i in range(200)]
    records = [rec for d in devices for rec in full(stable(40, seed=len(d)), device=d)]
    records.sort(key=lambda r: r.ts)
    w = writer(engine)
    await write(w, records[: len(devices)], per_batch=len(devices))
    pages = await db.fetchval("SELECT pg_relation_size('telemetry_stats') / current_setting('block_size')::int")
    await write(w, records[len(devices) :], per_batch=len(devices))
    await w.close()
    assert [(await figures(db, "temperature", d))["count"] for d in devices] == [40] * len(devices)
    grown = await db.fetchval("SELECT pg_relation_size('telemetry_stats') / current_setting('block_size')::int")
    assert grown <= 2 * pages, (pages, grown)
