"""What every device message has: who sent it and when."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

# One MQTT topic level: no separators or wildcards.
DeviceId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^/+#\x00]+$")]


class DeviceMessage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # Optional in the payload: the topic names the device. When both are there they must agree.
    device_id: DeviceId | None = None
    # The device's own clock. Orders state updates and identifies redeliveries; a message
    # without one is stamped with the time it was received (and cannot be de-duplicated).
    timestamp: datetime | None = None

    @field_validator("timestamp")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        # Firmware without a time zone sends naive ISO strings; they are UTC by convention here.
        # Aware values are left as they are (converting them costs a fifth of the hot path; the
        # database stores the instant either way).
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value
