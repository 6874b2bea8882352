"""`GET /routes`: the route table the subscriber serves, with what each route received so far."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.api.deps import RuntimeDep
from service.api.schemas import RoutePublic
from service.routing.middleware import describe

router = APIRouter(tags=["routes"])


@router.get("/routes", response_model=list[RoutePublic])
async def list_routes(runtime: RuntimeDep) -> Any:
    """The route table: topic pattern, MQTT filter, QoS, payload model and its fields, and the messages
    received on each route and committed (stored or dead-lettered) since the service started."""
    counts = runtime.ingestor.stats.per_route
    return [
        RoutePublic(
            name=r.name,
            pattern=r.template,
            mqtt_filter=r.filter,
            qos=r.qos,
            model=r.model.__name__,
            fields=r.model.model_json_schema().get("properties", {}),
            messages=counts.get(r.name, 0),
            middleware=[describe(mw, r.name) for mw in r.middleware],
        )
        for r in runtime.router.routes
    ]
