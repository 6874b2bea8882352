from __future__ import annotations

from pydantic import ConfigDict

from service.models.base import DeviceMessage


class SystemMessage(DeviceMessage):
    """`<prefix>/{device_id}/system/{kind}`: any JSON object (boot, error, ota, ...); stored whole."""

    model_config = ConfigDict(frozen=True, extra="allow")
