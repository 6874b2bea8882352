"""`python -m service.simulate`: run a simulated device fleet against a broker.

Prints one JSON summary line on stdout at the end (what was sent, by kind, and the dead-letter
stages the bad messages should land in); progress goes to stderr. Exit status 1 if the broker did
not acknowledge everything sent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from service.simulate.fleet import Fleet, FleetConfig
from service.simulate.publisher import Publisher

log = logging.getLogger("service.simulate")
PROGRESS_EVERY = 10.0  # seconds between progress lines


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m service.simulate", description="Run a simulated device fleet.")
    p.add_argument("--host", default=env("MQTT_BROKER_HOST", "localhost"), help="broker host [$MQTT_BROKER_HOST]")
    p.add_argument("--port", type=int, default=int(env("MQTT_BROKER_PORT", "1883")), help="[$MQTT_BROKER_PORT]")
    p.add_argument("--username", default=env("MQTT_USERNAME"), help="[$MQTT_USERNAME]; password: $MQTT_PASSWORD")
    p.add_argument("--prefix", default=env("MQTT_TOPIC_PREFIX", "autocore"), help="topic prefix [$MQTT_TOPIC_PREFIX]")
    p.add_argument("--client-id", default=None, help="MQTT client id (default: random)")
    p.add_argument("--devices", type=int, default=10, help="fleet size (default 10)")
    p.add_argument("--relays", type=int, default=4, help="relays per device (default 4)")
    p.add_argument("--rate", type=float, default=10.0, help="messages per second, whole fleet (default 10)")
    p.add_argument("--bad-share", type=float, default=0.01, help="share of deliberately bad messages (default 0.01)")
    p.add_argument("--churn", type=float, default=0.005,
                   help="share of messages where a device drops offline (default 0.005)")  # fmt: skip
    p.add_argument("--offline-seconds", type=float, default=15.0,
                   help="mean time a dropped device stays offline (default 15)")  # fmt: skip
    p.add_argument("--count", type=int, default=None, help="stop after this many messages")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--seed", type=int, default=None, help="same seed and options, same traffic")
    p.add_argument("--start", type=datetime.fromisoformat, default=None,
                   help="the devices' clock at the first message, ISO 8601 (default: now)")  # fmt: skip
    p.add_argument("--window", type=int, default=200, help="unacknowledged messages at most (default 200)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def fleet_config(args: argparse.Namespace) -> FleetConfig:
    return FleetConfig(
        devices=args.devices,
        relays=args.relays,
        rate=args.rate,
        bad_share=args.bad_share,
        churn=args.churn,
        offline_seconds=args.offline_seconds,
        prefix=args.prefix,
        seed=args.seed,
        start=args.start,
    )


async def simulate(config: FleetConfig, args: argparse.Namespace, stop: asyncio.Event) -> dict[str, Any]:
    fleet = Fleet(config)
    pub = Publisher(args.host, args.port, args.client_id, args.window, args.username, os.environ.get("MQTT_PASSWORD"))
    if not await pub.connect(stop):
        return {"sent": 0, "acknowledged": 0, "complete": False}
    loop = asyncio.get_running_loop()
    started = loop.time()
    next_progress = started + PROGRESS_EVERY
    try:
        while not stop.is_set():
            now = loop.time()
            if args.count is not None and fleet.step >= args.count:
                break
            if args.duration is not None and now - started >= args.duration:
                break
            ahead = started + fleet.step / args.rate - now
            if ahead > 0.001:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), ahead)
                continue
            msg = fleet.next_message()
            await pub.publish(msg.topic, msg.payload)
            if not args.quiet and now >= next_progress:
                next_progress = now + PROGRESS_EVERY
                log.info("sent %d (acknowledged %d), %d of %d devices online",
                         fleet.step, pub.acknowledged, fleet.online_count, args.devices)  # fmt: skip
        complete = await pub.drain(timeout=30.0)
    finally:
        await pub.close()
    summary = fleet.tally.summary()
    summary |= {
        "acknowledged": pub.acknowledged,
        "complete": complete and pub.acknowledged == summary["sent"],
        "online_at_end": fleet.online_count,
        "seconds": round(loop.time() - started, 3),
    }
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = fleet_config(args)
    except ValueError as exc:
        parser.error(str(exc))
    if min(args.count or 0, args.duration or 0) < 0:
        parser.error("--count and --duration must not be negative")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("gmqtt").setLevel(logging.WARNING)

    async def run() -> dict[str, Any]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        # As PID 1 in a container a signal without a handler is ignored: stop cleanly on both.
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await simulate(config, args, stop)

    started = time.monotonic()
    summary = asyncio.run(run())
    print(json.dumps(summary), flush=True)
    log.info("done in %.1fs", time.monotonic() - started)
    return 0 if summary["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
