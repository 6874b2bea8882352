"""QoS 1 publishing over one gmqtt connection, with a bounded window of unacknowledged messages.

gmqtt keeps every unacknowledged QoS 1 message in its storage (and sends it again after a
reconnect); the storage below also counts acknowledgements and holds the publisher back while the
window is full, so a fast simulator cannot pile up messages faster than the broker takes them.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from gmqtt import Client
from gmqtt.mqtt.constants import MQTTv311
from gmqtt.storage import PersistentStorage

log = logging.getLogger(__name__)


class _Window(PersistentStorage):  # type: ignore[misc]
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.acknowledged = 0
        self._pending: set[int] = set()
        self.room = asyncio.Event()
        self.room.set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def push_message(self, mid: int, raw_package: bytes) -> None:
        super().push_message(mid, raw_package)
        self._pending.add(mid)
        if len(self._pending) >= self.size:
            self.room.clear()

    def remove_message_by_mid(self, mid: int) -> None:
        super().remove_message_by_mid(mid)
        if mid in self._pending:
            self._pending.discard(mid)
            self.acknowledged += 1
        if len(self._pending) < self.size:
            self.room.set()

    def clear(self) -> None:
        super().clear()
        self._pending.clear()
        self.room.set()


class Publisher:
    def __init__(
        self,
        host: str,
        port: int,
        client_id: str | None = None,
        window: int = 200,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.host, self.port = host, port
        self._window = _Window(window)
        # MQTT 3.1.1: devices' firmware mostly speaks it, and it has no receive maximum to negotiate.
        self._client: Any = Client(client_id or f"autocore-sim-{uuid.uuid4().hex[:8]}", persistent_storage=self._window)
        self._client.set_config({"reconnect_retries": -1, "reconnect_delay": 1})
        if username:
            self._client.set_auth_credentials(username, password)

    @property
    def acknowledged(self) -> int:
        return self._window.acknowledged

    @property
    def pending(self) -> int:
        return self._window.pending

    async def connect(self, stop: asyncio.Event, timeout: float = 10.0) -> bool:
        """Connect, retrying with backoff until connected (True) or `stop` is set (False)."""
        delay = 0.5
        while not stop.is_set():
            try:
                await asyncio.wait_for(self._client.connect(self.host, self.port, version=MQTTv311), timeout)
                return True
            except (OSError, TimeoutError) as exc:
                log.warning("broker %s:%s not reachable (%s); retrying in %.1fs", self.host, self.port, exc, delay)
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                delay = min(delay * 2, 10.0)
        return False

    async def publish(self, topic: str, payload: bytes) -> None:
        await self._window.room.wait()
        self._client.publish(topic, payload, qos=1)

    async def drain(self, timeout: float) -> bool:
        """Wait until the broker has acknowledged everything sent; False if it has not in time."""
        try:
            await asyncio.wait_for(self._window.wait_empty(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._client.disconnect(), 5)
        except (OSError, TimeoutError) as exc:
            log.debug("disconnect: %s", exc)
