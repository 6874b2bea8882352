#!/usr/bin/env python3
"""CPU per QoS 1 publish of the notification sender's path (MqttTransport), against a running broker.

    .venv/bin/python bench/publish_cpu.py [--port 1883] [-n 3000] [--wave 30]

one-by-one: `publish()` per message, each awaiting its PUBACK (what the sender did per row before
the waves); pipelined: `publish_many()` of `--wave` distinct topics at a time (one write per Receive
Maximum's worth, the PUBACKs awaited together). Prints the process CPU and the wall time per publish.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import uvloop  # the service runs on it under uvicorn

from service.config import Settings
from service.mqtt.transport import MqttTransport


async def main(args: argparse.Namespace) -> None:
    s = Settings(mqtt_broker_host=args.host, mqtt_broker_port=args.port, mqtt_client_id="autocore-publish-cpu",
                 database_url="postgresql+asyncpg://unused@127.0.0.1/unused", db_migrate_on_start=False,
                 rules_file=None, mqtt_session_expiry=0, _env_file=None)  # fmt: skip
    connected = asyncio.Event()
    t = MqttTransport(s, [("autocore-publish-cpu/none/#", 1)],
                      on_state_change=lambda state: connected.set() if state.connected else None)  # fmt: skip
    t.start(lambda _m: None)
    await asyncio.wait_for(connected.wait(), 10)
    n, wave, body = args.messages, args.wave, b"x" * 60
    try:
        for mode in ("one-by-one", f"pipelined-{wave}"):
            c0, w0 = time.process_time(), time.perf_counter()
            if mode == "one-by-one":
                for i in range(n):
                    await t.publish(f"autocore-publish-cpu/t/{i % wave}", body, qos=1)
            else:
                for _ in range(0, n, wave):
                    batch = [(f"autocore-publish-cpu/t/{i}", body, 1, False) for i in range(wave)]
                    assert await t.publish_many(batch) == [None] * wave
            cpu, wall = time.process_time() - c0, time.perf_counter() - w0
            print(f"{mode:14} {n} publishes: {cpu / n * 1e6:6.1f} µs CPU, {wall / n * 1e6:6.1f} µs wall each")
    finally:
        await t.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("-n", "--messages", type=int, default=3000)
    p.add_argument("--wave", type=int, default=30)
    uvloop.run(main(p.parse_args()))
