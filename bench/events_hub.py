#!/usr/bin/env python3
"""CPU cost of the event hub per committed message, in-process (no broker, no database, no port).

    .venv/bin/python bench/events_hub.py [-m 200000] [--clients 10]

Feeds batches of 2 000 telemetry messages (as the writer would after each commit) to an EventHub
with 0 clients, with N clients at the default EVENTS_MAX_RATE, and with N clients and no rate
limit, each client's queue drained after every batch as a reading client would. Prints CPU
microseconds per message (process time, so other load on the machine matters little). The
end-to-end figure is `bench.py events` (the referee harness, 0 and 10 real HTTP clients).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import UTC, datetime, timedelta

from service.mqtt.message import InboundMessage
from service.records import TelemetryRecord
from service.storage.writer import Committed, Pending
from service.web.filters import StreamFilter
from service.web.hub import EventHub

BATCH = 2_000


def batches(messages: int) -> list[list[Pending]]:
    base = datetime(2025, 6, 1, tzinfo=UTC)
    out: list[list[Pending]] = []
    for start in range(0, messages, BATCH):
        batch = []
        for i in range(start, min(messages, start + BATCH)):
            device = f"dev{i % 500:04d}"
            ts = base + timedelta(milliseconds=i)
            payload = json.dumps({"temperature": 21.5, "humidity": 40.1, "timestamp": ts.isoformat()}).encode()
            msg = InboundMessage(f"autocore/{device}/telemetry", payload, 1, False, time.time())
            record = TelemetryRecord(device, ts, 21.5, 40.1, None, None, None, msg.received_at)
            batch.append(Pending(msg, [record], "telemetry"))
        out.append(batch)
    return out


async def run(work: list[list[Pending]], clients: int, max_rate: float) -> tuple[float, int]:
    hub = EventHub(topic_prefix="autocore", max_rate=max_rate, resume_seconds=0)
    subscribed = [hub.subscribe(StreamFilter()) for _ in range(clients)]
    readers = [c for c in subscribed if c is not None]
    for c in readers:
        await c.next_chunk()  # the hello
    committed = [Committed.of(batch) for batch in work]
    started = time.process_time()
    delivered = 0
    for batch in committed:
        hub.observe(batch)
        while hub._inbox:  # what the hub's task does, inline
            hub._fan_out(hub._inbox.popleft())
        for c in readers:
            if c.queued or c.dropped or c._notices:  # next_chunk() waits when there is nothing
                delivered += len(await c.next_chunk())
    return time.process_time() - started, hub.published


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("-m", "--messages", type=int, default=200_000)
    p.add_argument("--clients", type=int, default=10)
    args = p.parse_args()
    work = batches(args.messages)
    for label, clients, rate in (
        ("0 clients", 0, 1_000.0),
        (f"{args.clients} clients, EVENTS_MAX_RATE=1000", args.clients, 1_000.0),
        (f"{args.clients} clients, no rate limit", args.clients, 1e9),
    ):
        cpu, published = asyncio.run(run(work, clients, rate))
        print(f"{label:40s} {cpu * 1e6 / args.messages:8.3f} us CPU per message, {published} events published")


if __name__ == "__main__":
    main()
