from __future__ import annotations

from typing import Annotated

from pydantic import AllowInfNan, ConfigDict, Field, StrictFloat, StrictInt

from service.models.base import DeviceMessage

# Extra readings feed per-metric aggregates, so they must be numbers (not bools, strings, objects).
Reading = Annotated[StrictInt | StrictFloat, AllowInfNan(False)]


class Telemetry(DeviceMessage):
    """`<prefix>/{device_id}/telemetry`: known readings as columns, other numeric readings kept too."""

    model_config = ConfigDict(frozen=True, extra="allow")
    # Typed extras are checked by pydantic-core itself: no Python validator on the hot path.
    __pydantic_extra__: dict[str, Reading] = Field(init=False)

    temperature: float | None = None
    humidity: Annotated[float, Field(ge=0, le=100)] | None = None
    voltage: float | None = None
    memory_free: Annotated[int, Field(ge=0)] | None = None
