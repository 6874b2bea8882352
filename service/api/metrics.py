"""`GET /metrics`: the Prometheus text format (the metrics are defined in service/metrics.py)."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service import metrics
from service.api.deps import RuntimeDep
from service.storage import queries

router = APIRouter(tags=["metrics"])

# A scrape must answer within Prometheus's timeout (10 s by default) even while the database hangs.
_QUERY_TIMEOUT = 2.0


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def prometheus_metrics(runtime: RuntimeDep) -> Response:
    # Values that are cheaper to read at scrape time than to keep current on the hot path.
    conn = runtime.connection
    since = conn.connected_since if conn is not None else None
    metrics.MQTT_CONNECTION_UPTIME.set(time.time() - since if since else 0)
    metrics.IN_FLIGHT.set(runtime.ingestor.in_flight)
    metrics.PENDING_COMMIT.set(runtime.ingestor.writer.backlog)
    try:
        async with asyncio.timeout(_QUERY_TIMEOUT), runtime.sessions() as session:
            metrics.DEVICES_ONLINE.set(await queries.devices_online(session))
    except Exception:
        # The gauge keeps its last value; the error counter says it is not fresh.
        metrics.ERRORS.labels("metrics_query").inc()
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
