"""The service's route table. The API lists it; the transport subscribes to its filters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import BaseModel

from service import handlers
from service.models import DeviceStatus, DisplayInteraction, RelayStatus, SystemMessage, Telemetry
from service.routing.middleware import Middleware
from service.routing.router import Handler, Route, RouteGroup, Router


def device_routes(
    prefix: str,
    middleware: Sequence[Middleware] = (),
    route_middleware: Mapping[str, Sequence[Middleware]] | None = None,
) -> RouteGroup:
    """The device routes under `prefix`; `middleware` runs for all of them, `route_middleware[name]` after it."""
    own = route_middleware or {}

    def route(template: str, model: type[BaseModel], handler: Handler, name: str) -> Route:
        return Route(template, model, handler, name=name, middleware=tuple(own.get(name, ())))

    return RouteGroup(
        prefix,
        [
            route("{device_id}/status", DeviceStatus, handlers.device_status, "status"),
            route("{device_id}/telemetry", Telemetry, handlers.telemetry, "telemetry"),
            route("{device_id}/relay/{relay:int}/status", RelayStatus, handlers.relay_status, "relay"),
            route("{device_id}/display/interaction", DisplayInteraction, handlers.display_interaction, "display"),
            route("{device_id}/system/{kind}", SystemMessage, handlers.system_message, "system"),
        ],
        middleware=tuple(middleware),
    )


ROUTE_NAMES = ("status", "telemetry", "relay", "display", "system")


def build_router(
    prefix: str,
    middleware: Sequence[Middleware] = (),
    route_middleware: Mapping[str, Sequence[Middleware]] | None = None,
    own_topics: Sequence[str] = (),
) -> Router:
    """`own_topics`: prefixes of what the service publishes itself (alerts): never routed."""
    return Router([device_routes(prefix, middleware, route_middleware)], own_topics)
