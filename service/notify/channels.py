"""Delivery channels: each takes notification bodies to their targets, and says per body whether it did."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol
from uuid import UUID


class DeliveryError(Exception):
    """The target did not take the notification; the outbox retries it later."""


class Delivery(NamedTuple):
    target: str
    event_id: UUID
    body: str
    # The row's MQTT options (a rule's publish); other channels ignore them.
    qos: int = 1
    retain: bool = False


class Channel(Protocol):
    async def send_many(self, items: Sequence[Delivery]) -> list[str | None]:
        """Deliver these, each to its own target (the sender never gives two for one target at once,
        so nothing orders them among themselves); per item None once delivered, else why not."""
        ...

    async def close(self) -> None: ...
