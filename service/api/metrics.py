from __future__ import annotations

import time

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service import metrics
from service.api.deps import RuntimeDep
from service.storage import queries

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def prometheus_metrics(runtime: RuntimeDep) -> Response:
    # Values that are cheaper to read at scrape time than to keep current on the hot path.
    conn = runtime.connection
    since = conn.connected_since if conn is not None else None
    metrics.MQTT_CONNECTION_UPTIME.set(time.time() - since if since else 0)
    metrics.IN_FLIGHT.set(runtime.ingestor.in_flight)
    try:
        metrics.DEVICES_ONLINE.set(await queries.devices_online(runtime.engine))
    except Exception:
        metrics.ERRORS.labels("metrics_query").inc()
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
