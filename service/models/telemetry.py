from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import ConfigDict, Field, model_validator

from service.models.base import DeviceMessage

_MAX_EXTRA = 64


class Telemetry(DeviceMessage):
    """`<prefix>/{device_id}/telemetry`: known readings as columns, other numeric readings kept too."""

    # Other readings are kept (in `extra`), but only numbers: they feed per-metric aggregates.
    model_config = ConfigDict(frozen=True, extra="allow")

    temperature: float | None = None
    humidity: Annotated[float, Field(ge=0, le=100)] | None = None
    voltage: float | None = None
    memory_free: Annotated[int, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _numeric_extras(self) -> Telemetry:
        extra = self.__pydantic_extra__ or {}
        if len(extra) > _MAX_EXTRA:
            raise ValueError(f"too many extra readings ({len(extra)} > {_MAX_EXTRA})")
        for name, value in extra.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"extra reading {name!r} must be a number, got {type(value).__name__}")
            if not math.isfinite(value):
                raise ValueError(f"extra reading {name!r} must be finite")
        return self

    @property
    def extra_readings(self) -> dict[str, Any]:
        return dict(self.__pydantic_extra__ or {})
