"""The service's route table. The API lists it; the transport subscribes to its filters."""

from __future__ import annotations

from collections.abc import Sequence

from service import handlers
from service.models import DeviceStatus, DisplayInteraction, RelayStatus, SystemMessage, Telemetry
from service.routing.middleware import Middleware
from service.routing.router import Route, RouteGroup, Router


def device_routes(prefix: str) -> RouteGroup:
    return RouteGroup(
        prefix,
        [
            Route("{device_id}/status", DeviceStatus, handlers.device_status, name="status"),
            Route("{device_id}/telemetry", Telemetry, handlers.telemetry, name="telemetry"),
            Route("{device_id}/relay/{relay:int}/status", RelayStatus, handlers.relay_status, name="relay"),
            Route(
                "{device_id}/display/interaction",
                DisplayInteraction,
                handlers.display_interaction,
                name="display",
            ),
            Route("{device_id}/system/{kind}", SystemMessage, handlers.system_message, name="system"),
        ],
    )


def build_router(prefix: str, own_topics: Sequence[str] = ()) -> Router:
    return Router([device_routes(prefix)], own_topics)


DEFAULT_MIDDLEWARE: list[Middleware] = []
