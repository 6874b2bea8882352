from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, IPvAnyAddress

from service.models.base import DeviceMessage


class DeviceStatus(DeviceMessage):
    """`<prefix>/{device_id}/status`: online/offline plus what the device reports about itself."""

    status: Literal["online", "offline"]
    ip_address: IPvAnyAddress | None = None
    firmware_version: Annotated[str, Field(max_length=64)] | None = None
    uptime: Annotated[int, Field(ge=0)] | None = None
