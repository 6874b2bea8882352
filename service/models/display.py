from __future__ import annotations

from typing import Annotated, Any

from pydantic import AliasChoices, ConfigDict, Field

from service.models.base import DeviceMessage

_Name = Annotated[str, Field(min_length=1, max_length=64)]


class DisplayInteraction(DeviceMessage):
    """`<prefix>/{device_id}/display/interaction`: a touch or button event on the device's screen.

    The known fields are typed; anything else the firmware adds is kept in `data`.
    """

    model_config = ConfigDict(frozen=True, extra="allow")

    # "touch", "button", "swipe", ... : what happened.
    interaction_type: Annotated[
        str,
        Field(min_length=1, max_length=64, validation_alias=AliasChoices("interaction_type", "type", "event")),
    ]
    screen: _Name | None = None
    element: _Name | None = None
    value: str | int | float | bool | None = None

    @property
    def data(self) -> dict[str, Any]:
        return dict(self.__pydantic_extra__ or {})
