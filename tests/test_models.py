from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from service.models import DeviceStatus, DisplayInteraction, RelayStatus, SystemMessage, Telemetry


@pytest.mark.parametrize(
    ("model", "payload"),
    [
        (Telemetry, {"device_id": "ESP32_001", "temperature": 25.6, "humidity": 45.2, "voltage": 3.28,
                     "memory_free": 45120, "timestamp": "2025-01-28T10:30:15Z"}),
        (Telemetry, {"temperature": 1, "rssi": -70}),
        (RelayStatus, {"device_id": "ESP32_001", "relay_index": 0, "state": True, "triggered_by": "manual",
                       "timestamp": "2025-01-28T10:30:30Z"}),
        (DeviceStatus, {"device_id": "ESP32_001", "status": "online", "ip_address": "192.168.1.100",
                        "firmware_version": "1.2.0", "uptime": 3600, "timestamp": "2025-01-28T10:30:00Z"}),
        (DeviceStatus, {"status": "offline"}),
        (DisplayInteraction, {"type": "touch", "screen": "home", "element": "btn1", "value": 1}),
        (SystemMessage, {"anything": {"nested": [1, 2]}, "timestamp": 1738060215}),
    ],
)  # fmt: skip
def test_valid(model: type[BaseModel], payload: dict[str, Any]) -> None:
    model.model_validate(payload)


@pytest.mark.parametrize(
    ("model", "payload", "complaint"),
    [
        (Telemetry, {"temperature": "hot"}, "temperature"),
        (Telemetry, {"unit": "C"}, "unit"),
        (Telemetry, {"on": True}, "on"),
        (Telemetry, {"humidity": 140}, "humidity"),
        (RelayStatus, {"state": "on"}, "state"),
        (DeviceStatus, {"status": "sleeping"}, "status"),
        (DeviceStatus, {"status": "online", "ip_address": "999.1.1.1"}, "ip_address"),
        (DeviceStatus, {"status": "online", "surprise": 1}, "surprise"),
        (DeviceStatus, {"status": "online", "device_id": "a/b"}, "device_id"),
        (DisplayInteraction, {"element": "x"}, "interaction_type"),
    ],
)
def test_invalid(model: type[BaseModel], payload: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        model.model_validate(payload)


def test_naive_timestamp_is_utc() -> None:
    msg = Telemetry.model_validate({"timestamp": "2025-01-28T10:30:15"})
    assert msg.timestamp == datetime(2025, 1, 28, 10, 30, 15, tzinfo=UTC)
    msg = Telemetry.model_validate({"timestamp": "2025-01-28T12:30:15+02:00"})
    assert msg.timestamp == datetime(2025, 1, 28, 10, 30, 15, tzinfo=UTC)
