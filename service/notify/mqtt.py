"""MQTT channel: the body on `<alert topic>/<device_id>/<kind>` at QoS 1, done once the broker PUBACKs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from uuid import UUID

from service.notify.channels import DeliveryError

Publish = Callable[..., Awaitable[None]]


class MqttChannel:
    def __init__(self, publish: Publish, timeout: float = 10.0) -> None:
        self._publish = publish  # MqttTransport.publish
        self._timeout = timeout

    async def send(self, target: str, event_id: UUID, body: str) -> None:
        try:
            await self._publish(target, body.encode(), qos=1, timeout=self._timeout)
        except TimeoutError:
            raise DeliveryError("no PUBACK from the broker in time") from None
        except Exception as exc:  # PublishError and friends: the text says why
            raise DeliveryError(f"{exc.__class__.__name__}: {exc}") from None

    async def close(self) -> None:
        pass
