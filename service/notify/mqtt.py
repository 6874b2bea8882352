"""MQTT channel: the body on its topic (an alert's `<alert topic>/<device_id>/<kind>`, a rule's publish
topic), at the row's QoS (1 unless a rule says 0), done once the broker PUBACKs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from uuid import UUID

from service.notify.channels import DeliveryError

Publish = Callable[..., Awaitable[None]]


class MqttChannel:
    def __init__(self, publish: Publish, timeout: float = 10.0) -> None:
        self._publish = publish  # MqttTransport.publish
        self._timeout = timeout

    async def send(self, target: str, event_id: UUID, body: str, *, qos: int = 1, retain: bool = False) -> None:
        if not target or "+" in target or "#" in target or "\0" in target:
            # A rule's topic filled with a value carrying a wildcard: publishing it would make the
            # broker close our connection (the subscriber's too).
            raise DeliveryError(f"{target!r} is not a topic name")
        try:
            await self._publish(target, body.encode(), qos=qos, retain=retain, timeout=self._timeout)
        except TimeoutError:
            raise DeliveryError("no PUBACK from the broker in time") from None
        except Exception as exc:  # PublishError and friends: the text says why
            raise DeliveryError(f"{exc.__class__.__name__}: {exc}") from None

    async def close(self) -> None:
        pass
