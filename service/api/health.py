from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from service.runtime import Runtime

router = APIRouter(tags=["health"])


class MonitorHealth(BaseModel):
    status: Literal["healthy", "degraded", "unhealthy"]
    monitor_enabled: bool
    broker_connected: bool
    subscriptions_granted: bool
    database_ok: bool
    last_message_time: str | None
    seconds_since_last_message: float | None
    messages_processed: int
    errors_count: int
    messages_in_flight: int
    uptime_seconds: float
    last_error: str | None


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def monitor_health(rt: Runtime) -> MonitorHealth:
    stats = rt.ingestor.stats
    conn = rt.connection
    writer = rt.ingestor.writer
    connected = bool(conn and conn.connected)
    subscribed = bool(conn and conn.all_subscribed)
    db_ok = rt.db_ok and writer.healthy
    if rt.transport is None:
        status = "healthy" if db_ok else "unhealthy"
    elif connected and subscribed and db_ok:
        status = "healthy"
    else:
        status = "unhealthy"
    now = time.time()
    last = stats.last_message_time
    return MonitorHealth(
        status=status,
        monitor_enabled=rt.transport is not None,
        broker_connected=connected,
        subscriptions_granted=subscribed,
        database_ok=db_ok,
        last_message_time=_iso(last),
        seconds_since_last_message=round(now - last, 3) if last is not None else None,
        messages_processed=stats.messages_processed,
        errors_count=stats.errors,
        messages_in_flight=rt.ingestor.in_flight,
        uptime_seconds=round(now - rt.started_at, 3),
        last_error=writer.last_error or (conn.last_error if conn else None),
    )


@router.get(
    "/health/mqtt-monitor",
    response_model=MonitorHealth,
    responses={503: {"model": MonitorHealth, "description": "not healthy"}},
)
async def mqtt_monitor_health(request: Request) -> Any:
    rt: Runtime = request.app.state.runtime
    await rt.check_database()
    body = monitor_health(rt)
    return JSONResponse(body.model_dump(), status_code=200 if body.status == "healthy" else 503)
