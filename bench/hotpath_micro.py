"""CPU per message of hot-path stages, in-process (no broker, no database): the PUBLISH reader
(`_Protocol._read_packet` + `_handle_publish_packet`), the pipeline with the default middleware
(route, logging, fast decode, handler), the writer's grouping and binary COPY formatting, and the
fleet cache's after-commit observer.

    .venv/bin/python bench/hotpath_micro.py

For a before/after comparison, run it on both checkouts; the end-to-end figure is bench.py's.
"""

from __future__ import annotations

import gc
import json
import struct
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from gmqtt import Client

from service.mqtt.message import InboundMessage
from service.mqtt.transport import _DeferredAckHandler, _Protocol
from service.records import TelemetryRecord
from service.storage.writer import Pending

BATCH, ROUNDS, DEVICES = 2000, 200, 1000


def publish_packet(topic: str, payload: bytes, mid: int) -> bytes:
    t = topic.encode()
    body = struct.pack("!H", len(t)) + t + struct.pack("!H", mid) + b"\x00" + payload
    length, out = len(body), bytearray()
    while True:
        byte, length = length & 0x7F, length >> 7
        out.append(byte | (0x80 if length else 0))
        if not length:
            break
    return bytes([0x32]) + bytes(out) + body


def reader() -> float:
    handler = Client("bench")._package_handler
    handler.__class__ = _DeferredAckHandler
    got: list[InboundMessage] = []
    handler.sink, handler.link = got.append, None

    class Connection:
        _handler = handler
        _last_data_in = 0.0

        def put_package(self, _package: Any) -> None:
            pass

    handler._connection = Connection()
    proto = _Protocol.__new__(_Protocol)
    proto._connection = handler._connection
    body = json.dumps({"temperature": 21.5, "humidity": 40.0, "voltage": 3.3, "memory_free": 123456,
                       "timestamp": "2025-01-01T00:00:00Z"}).encode()  # fmt: skip
    buf = b"".join(publish_packet(f"autocore/device-{i % DEVICES:04d}/telemetry", body, i + 1) for i in range(BATCH))
    start = time.process_time()
    for _ in range(ROUNDS):
        got.clear()
        assert proto._read_packet(buf) == len(buf)
    return (time.process_time() - start) / (ROUNDS * BATCH) * 1e6


def observer() -> float:
    from service.fleet_cache import FleetCache  # here: a checkout from before the cache can run reader()

    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    try:  # the observer takes the writer's Committed (before it, the batch and a resolution)
        from service.storage.writer import Committed  # type: ignore[attr-defined, unused-ignore]

        fleet = FleetCache(max_devices=100_000)
        wrap: Any = Committed.of
    except ImportError:
        fleet = FleetCache(max_devices=100_000, last_seen_resolution=1.0)  # type: ignore[call-arg, unused-ignore]
        wrap = list
    fleet.loaded, fleet._backlog = True, None
    batches, n = [], 0
    for _ in range(ROUNDS):
        batch = []
        for _ in range(BATCH):
            n += 1
            at = 1.7e9 + n / 1000
            record = TelemetryRecord(f"d{n % DEVICES}", t0 + timedelta(milliseconds=n), 21.0, 40.0, 3.3, 1000, None, at)
            batch.append(Pending(InboundMessage("x", b"", 1, False, at, 1, None), [record], "telemetry"))
        batches.append(wrap(batch))
    start = time.process_time()
    for batch in batches:
        fleet.observe(batch)
    return (time.process_time() - start) / n * 1e6


def pipeline() -> tuple[float, float]:
    """Pipeline.process_batch with the service's default route table and middleware, then the
    writer's per-batch grouping and binary COPY of the telemetry rows."""
    import asyncio

    from service.config import Settings
    from service.routes import ROUTE_NAMES, build_router
    from service.routing.middleware.setup import build_middleware
    from service.storage.statements import group, telemetry_copy

    settings = Settings()
    mw = build_middleware(settings, ROUTE_NAMES)
    router = build_router("autocore", route_middleware=mw.per_route, own_topics=[settings.alert_topic])
    from service.pipeline import Pipeline

    pipe = Pipeline(router)
    body = json.dumps({"temperature": 21.5, "humidity": 40.0, "voltage": 3.3, "memory_free": 123456,
                       "timestamp": "2025-01-01T00:00:00Z"}).encode()  # fmt: skip
    batch = [
        InboundMessage(f"autocore/device-{i % DEVICES:04d}/telemetry", body, 1, False, 1.7e9 + i, i + 1, None, False)
        for i in range(BATCH)
    ]

    async def run() -> tuple[float, float]:
        spent_pipe = spent_write = 0.0
        for _ in range(ROUNDS):
            start = time.process_time()
            results = await pipe.process_batch(batch)
            mid = time.process_time()
            grouped = group([(m.received_at, recs) for m, (_r, recs) in zip(batch, results, strict=True)])
            assert telemetry_copy(grouped.telemetry) is not None
            spent_pipe += mid - start
            spent_write += time.process_time() - mid
        n = ROUNDS * BATCH
        return spent_pipe / n * 1e6, spent_write / n * 1e6

    return asyncio.run(run())


if __name__ == "__main__":
    # The collector as the service sets it once started (Runtime.start).
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    print(f"PUBLISH reader:        {reader():.2f} µs CPU per message (QoS 1 telemetry, {BATCH} per read)")
    piped, written = pipeline()
    print(f"pipeline:              {piped:.2f} µs CPU per message (default middleware, fast decode, handler)")
    print(f"group + binary COPY:   {written:.2f} µs CPU per message")
    try:
        print(f"fleet cache observer:  {observer():.2f} µs CPU per message ({DEVICES} devices, batches of {BATCH})")
    except ImportError:
        print("fleet cache observer:  (no fleet cache in this checkout)")
