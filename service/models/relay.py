from __future__ import annotations

from typing import Annotated

from pydantic import Field, StrictBool

from service.models.base import DeviceMessage


class RelayStatus(DeviceMessage):
    """`<prefix>/{device_id}/relay/{relay}/status`: one relay's state."""

    relay_index: Annotated[int, Field(ge=0, le=65535)] | None = None
    state: StrictBool
    triggered_by: Annotated[str, Field(max_length=64)] | None = None
