"""QoS 1 publishing with paho-mqtt: returns once the broker has acknowledged every message."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


class Publisher:
    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-pub-{uuid.uuid4().hex[:8]}")
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.connect(host, port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes | str | dict[str, Any], qos: int = 1) -> None:
        self.publish_many([(topic, payload)], qos)

    def publish_many(self, messages: Iterable[tuple[str, bytes | str | dict[str, Any]]], qos: int = 1) -> int:
        infos = []
        for topic, payload in messages:
            body = json.dumps(payload) if isinstance(payload, dict) else payload
            infos.append(self.client.publish(topic, body, qos=qos))
        for info in infos:
            info.wait_for_publish(timeout=30)
            if not info.is_published():
                raise TimeoutError(f"broker did not acknowledge message {info.mid}")
        return len(infos)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
