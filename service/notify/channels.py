"""Delivery channels: each sends one notification body to one target, or raises DeliveryError."""

from __future__ import annotations

from typing import Protocol
from uuid import UUID


class DeliveryError(Exception):
    """The target did not take the notification; the outbox retries it later."""


class Channel(Protocol):
    # qos and retain are the row's MQTT options (a rule's publish); other channels ignore them.
    async def send(self, target: str, event_id: UUID, body: str, *, qos: int = 1, retain: bool = False) -> None: ...

    async def close(self) -> None: ...
