#!/usr/bin/env python3
"""N clients of the service's `/events` that read everything, for the benchmark's `events` scenario.

    python bench/sse_clients.py --port 8089 --clients 10 [--query kind=message]

Started detached by the `autocore-sse*` sinks of bench/autocore.toml, so its CPU is not counted as
the sink's. Each client reconnects (with Last-Event-ID) when its stream ends; all exit once the
service has refused connections for `--give-up` seconds once it had answered (the harness stopped
it). The events read
are appended as one JSON line to `--log`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path


async def client(port: int, query: str, counts: dict[str, int], give_up: float) -> None:
    last_id = ""
    refused_since: float | None = None
    connected_once = False
    while True:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            refused_since = refused_since or time.monotonic()
            # Before the first connection the service may still be starting: wait longer for it.
            if time.monotonic() - refused_since > (give_up if connected_once else 60.0):
                return
            await asyncio.sleep(0.1)
            continue
        refused_since = None
        connected_once = True
        resume = f"Last-Event-ID: {last_id}\r\n" if last_id else ""
        head = f"GET /events?{query} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n{resume}\r\n"
        writer.write(head.encode())
        try:
            while line := await reader.readline():
                if line.startswith(b"event: "):
                    kind = line[7:].strip().decode()
                    counts[kind] = counts.get(kind, 0) + 1
                elif line.startswith(b"id: "):
                    last_id = line[4:].strip().decode()
        except OSError:
            pass
        writer.close()


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=8089)
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--query", default="kind=message")
    p.add_argument("--give-up", type=float, default=5.0)
    p.add_argument("--log", type=Path, default=Path(__file__).parent / ".state" / "sse-clients.jsonl")
    args = p.parse_args()
    counts: list[dict[str, int]] = [{} for _ in range(args.clients)]
    started = time.time()
    await asyncio.gather(*(client(args.port, args.query, c, args.give_up) for c in counts))
    args.log.parent.mkdir(parents=True, exist_ok=True)
    with args.log.open("a") as log:
        log.write(json.dumps({"started": started, "clients": args.clients, "events": counts}) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
