"""Pydantic v2 models of what devices publish, one module per message family."""

from service.models.display import DisplayInteraction
from service.models.relay import RelayStatus
from service.models.status import DeviceStatus
from service.models.system import SystemMessage
from service.models.telemetry import Telemetry

__all__ = ["DeviceStatus", "DisplayInteraction", "RelayStatus", "SystemMessage", "Telemetry"]
