"""QoS 1 publishing with paho-mqtt: all at once (returns once the broker acknowledged every message), or
streamed from a thread while a test breaks things."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
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


class StreamPublisher:
    """Streams QoS 1 messages from a thread at about `rate` per second, through broker restarts.

    paho keeps every message until the broker acknowledges it (no queue limit) and, after a lost
    connection, reconnects by itself and sends again whatever was unacknowledged: a message may
    reach the broker twice, never zero times. `acknowledged` is what the broker PUBACKed so far.
    """

    def __init__(self, port: int, messages: Sequence[tuple[str, bytes]], rate: float = 1000.0) -> None:
        if len(messages) >= 65535:
            raise ValueError("message ids must not wrap: publish fewer than 65535 messages")
        self.messages = list(messages)
        self.rate = rate
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-stream-{uuid.uuid4().hex[:8]}")
        self.client.max_inflight_messages_set(200)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(1, 2)
        self.client.on_publish = self._on_publish
        self.client.on_connect = self._on_connect
        self._port = port
        self._lock = threading.Lock()
        self._acked: dict[int, float] = {}  # mid -> when the broker acknowledged it (monotonic)
        self._mids: list[int] = []
        self.connects = 0
        self.sent = 0  # handed to paho
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stream-publisher", daemon=True)

    def start(self) -> None:
        self.client.connect("127.0.0.1", self._port)
        self.client.loop_start()
        self._thread.start()

    @property
    def acknowledged(self) -> int:
        with self._lock:
            return len(self._acked)

    def ack_times(self) -> dict[int, float]:
        """Message index -> when the broker acknowledged it (monotonic)."""
        with self._lock:
            index = {mid: i for i, mid in enumerate(self._mids)}
            return {index[mid]: t for mid, t in self._acked.items() if mid in index}

    def acknowledged_before(self, moment: float) -> int:
        with self._lock:
            return sum(1 for t in self._acked.values() if t <= moment)

    def wait_sent(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.sent < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"publisher handed on {self.sent} of {count} messages in {timeout}s")
            time.sleep(0.01)

    def wait_acknowledged(self, timeout: float = 60.0) -> None:
        """Until the broker has acknowledged every message."""
        deadline = time.monotonic() + timeout
        self._thread.join(timeout)
        while self.acknowledged < len(self.messages):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"broker acknowledged {self.acknowledged} of {len(self.messages)} messages in {timeout}s"
                )
            time.sleep(0.02)
        with self._lock:
            assert set(self._acked) == set(self._mids), "acknowledgements for messages never published"

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.disconnect()
        self.client.loop_stop()

    def _run(self) -> None:
        chunk = max(1, int(self.rate / 50))
        interval = chunk / self.rate
        next_at = time.monotonic()
        for start in range(0, len(self.messages), chunk):
            if self._stop.is_set():
                return
            for topic, payload in self.messages[start : start + chunk]:
                # While disconnected paho queues the message (rc NO_CONN) and sends it on reconnect.
                info = self.client.publish(topic, payload, qos=1)
                with self._lock:
                    self._mids.append(info.mid)
            self.sent = start + len(self.messages[start : start + chunk])
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))

    def _on_publish(self, _client: Any, _userdata: Any, mid: int, _rc: Any, _props: Any) -> None:
        with self._lock:
            self._acked.setdefault(mid, time.monotonic())

    def _on_connect(self, _client: Any, _userdata: Any, _flags: Any, _rc: Any, _props: Any) -> None:
        self.connects += 1
