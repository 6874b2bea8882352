"""`GET /metrics`: the Prometheus text format (the metrics are defined in service/metrics.py)."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service import metrics
from service.api.deps import RuntimeDep
from service.storage import queries, watch_queries

router = APIRouter(tags=["metrics"])

# A scrape must answer within Prometheus's timeout (10 s by default) even while the database hangs.
_QUERY_TIMEOUT = 2.0
_KINDS_SEEN: set[str] = {"offline", "unknown_device"}


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
            open_alerts = await watch_queries.open_alert_counts(session)
            pending = await watch_queries.pending_notification_counts(session)
        # Kinds seen before and now closed go back to 0 rather than keep their last value.
        for kind in {*open_alerts, *_KINDS_SEEN}:
            metrics.ALERTS_OPEN.labels(kind).set(open_alerts.get(kind, 0))
        _KINDS_SEEN.update(open_alerts)
        for channel in ("mqtt", "webhook"):
            metrics.NOTIFICATIONS_PENDING.labels(channel).set(pending.get(channel, 0))
    except Exception:
        # The gauge keeps its last value; the error counter says it is not fresh.
        metrics.ERRORS.labels("metrics_query").inc()
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
