"""The PUBLISH reader against a real broker: payloads of 0 bytes, 1 MB and the broker's maximum, and
topics with the odd characters MQTT allows, arrive byte for byte (unrouted: as dead letters, which
keep the exact topic and payload)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import ServiceFactory, eventually
from tests.support.broker import Broker

MAX_PACKET = 2_000_000  # the broker's max_packet_size: it refuses a remaining length of this or more


@pytest.fixture
def big_broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker", extra_conf=f"max_packet_size {MAX_PACKET}\n")
    b.start()
    try:
        yield b
    finally:
        b.stop()


def publish(port: int, messages: list[tuple[str, bytes]], timeout: float = 10) -> list[bool]:
    """QoS 1 (MQTT 3.1.1); whether the broker acknowledged each (it drops a client that sends too much)."""
    out = []
    for topic, payload in messages:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"big-{uuid.uuid4().hex[:8]}")
        client.connect("127.0.0.1", port)
        client.loop_start()
        info = client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=timeout)
        out.append(info.is_published())
        client.disconnect()
        client.loop_stop()
    return out


def max_payload(topic: str) -> int:
    # Remaining length: topic length (2) + topic + packet id (2) + payload, below MAX_PACKET.
    return MAX_PACKET - 1 - 2 - len(topic.encode()) - 2


# Control characters (U+0001-U+001F) are allowed by MQTT but refused by Mosquitto; the fuzz tests cover them.
ODD = ["sp ace", "ümlaut", "😀", "$dollar", "a\u200bzero-width", "quote'\"`", "back\\slash",
       "per%cent", "semi;colon", "\U0010fffd", "l" * 200, "", "trailing/"]  # fmt: skip


async def test_sizes_and_odd_topics_arrive_byte_for_byte(
    service: ServiceFactory, big_broker: Broker, db: asyncpg.Connection, ns: str
) -> None:
    big = f"{ns}/D1/blob"
    messages = [(f"{ns}/D1/blob0", b""), (f"{ns}/D1/blob1", bytes(range(256)) * 4096),  # 0 bytes, 1 MiB
                (big, b"\xab" * max_payload(big))]  # fmt: skip
    messages += [(f"{ns}/odd/{name}/x", name.encode() or b"-") for name in ODD]
    async with service(broker_port=big_broker.port) as svc:
        acked = await asyncio.to_thread(publish, big_broker.port, messages)
        assert all(acked), [m[0] for m, ok in zip(messages, acked, strict=True) if not ok]
        # One byte more than the maximum is the broker's to refuse: the size above is its maximum.
        over = [(big, b"\xab" * (max_payload(big) + 1))]
        assert await asyncio.to_thread(publish, big_broker.port, over, 2) == [False]
        await eventually(lambda: svc.runtime.ingestor.stats.messages_processed == len(messages), timeout=30)
        rows = await db.fetch("SELECT topic, payload FROM dead_letters")
        assert sorted((r["topic"], bytes(r["payload"])) for r in rows) == sorted(messages)
        assert svc.runtime.transport.state.connects == 1  # no reset on the way
