from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from service.mqtt.transport import Link


class InboundMessage(NamedTuple):
    """One PUBLISH as received. `link` and `mid` let the transport acknowledge it after commit."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    received_at: float  # time.time()
    mid: int | None = None
    link: Link | None = None
    dup: bool = False  # DUP flag: the broker sent this before (a redelivery)
