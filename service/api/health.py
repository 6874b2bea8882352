"""Health that tells the truth: liveness, readiness, and the monitor's own status.

"Connected but silent" is the failure operators of tools like this meet most: a feed with known
devices and no message for HEALTH_STALE_AFTER_SECONDS turns the status "degraded".
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from service.api.deps import RuntimeDep
from service.runtime import Runtime
from service.storage import queries

router = APIRouter(tags=["health"])


class MonitorHealth(BaseModel):
    status: Literal["healthy", "degraded", "unhealthy"]
    reasons: list[str]
    monitor_enabled: bool
    broker_connected: bool
    subscriptions_granted: bool
    subscriptions: dict[str, int | None]
    database_ok: bool
    last_message_time: str | None
    seconds_since_last_message: float | None
    messages_processed: int
    errors_count: int
    messages_in_flight: int
    uptime_seconds: float
    connection_uptime_seconds: float | None
    last_error: str | None
    session_taken_over: bool = False
    rate_limit_backend: str | None = None
    rate_limit_backend_ok: bool | None = None


class Readiness(BaseModel):
    ready: bool
    reasons: list[str]


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def _problems(rt: Runtime) -> list[str]:
    """What makes the service unable to do its job right now (empty when it can)."""
    problems = []
    conn = rt.connection
    if conn is not None:
        if not conn.connected:
            # With the cause (TLS, credentials, MQTT 5...): a bare "not connected" helps nobody.
            why = f": {conn.last_error}" if conn.last_error else ""
            problems.append(f"not connected to the MQTT broker{why}")
        elif not conn.all_subscribed:
            refused = [f for f, q in conn.subscriptions.items() if q is None]
            problems.append(f"subscriptions not granted: {', '.join(refused)}")
        if conn.taken_over(time.time()):
            problems.append(
                f"another client uses MQTT client id {rt.settings.client_id!r} ({conn.takeover}): "
                "give each process its own MQTT_CLIENT_ID"
            )
    if not rt.db_ok:
        problems.append("database does not answer")
    elif not rt.ingestor.writer.healthy:
        problems.append("database writes are failing (messages held unacknowledged)")
    return problems


async def _devices_known(rt: Runtime) -> bool:
    """Whether silence means something: with no device known yet, no message is expected."""
    try:
        async with asyncio.timeout(3), rt.sessions() as session:
            return await queries.devices_known(session)
    except Exception:  # the ping just passed; if the database went away since, that shows next time
        return False


async def monitor_health(rt: Runtime) -> MonitorHealth:
    await rt.check_database()
    stats = rt.ingestor.stats
    conn = rt.connection
    now = time.time()
    last = stats.last_message_time
    reasons = _problems(rt)
    status: Literal["healthy", "degraded", "unhealthy"] = "unhealthy" if reasons else "healthy"
    window = rt.settings.health_stale_after_seconds
    if status == "healthy" and conn is not None and window > 0:
        quiet_since = last or conn.connected_since or rt.started_at
        if now - quiet_since > window and rt.db_ok and await _devices_known(rt):
            status = "degraded"
            reasons.append(f"no message for {now - quiet_since:.0f}s (HEALTH_STALE_AFTER_SECONDS={window:g})")
    limiter = rt.middleware.rate_limiter
    if limiter is not None and not limiter.backend_ok:
        if status == "healthy":
            status = "degraded"
        reasons.append(f"rate-limit backend {limiter.backend.name} unavailable: messages pass unlimited")
    since = conn.connected_since if conn else None
    return MonitorHealth(
        status=status,
        reasons=reasons,
        monitor_enabled=conn is not None,
        broker_connected=bool(conn and conn.connected),
        subscriptions_granted=bool(conn and conn.all_subscribed),
        subscriptions=dict(conn.subscriptions) if conn else {},
        database_ok=rt.db_ok and rt.ingestor.writer.healthy,
        last_message_time=_iso(last),
        seconds_since_last_message=round(now - last, 3) if last is not None else None,
        messages_processed=stats.messages_processed,
        errors_count=stats.errors,
        messages_in_flight=rt.ingestor.in_flight,
        uptime_seconds=round(now - rt.started_at, 3),
        connection_uptime_seconds=round(now - since, 3) if since else None,
        last_error=rt.ingestor.writer.last_error or (conn.last_error if conn else None),
        session_taken_over=bool(conn and conn.taken_over(now)),
        rate_limit_backend=limiter.backend.name if limiter is not None else None,
        rate_limit_backend_ok=limiter.backend_ok if limiter is not None else None,
    )


@router.get(
    "/health/mqtt-monitor",
    response_model=MonitorHealth,
    responses={503: {"model": MonitorHealth, "description": "degraded or unhealthy"}},
)
async def mqtt_monitor_health(runtime: RuntimeDep) -> Any:
    body = await monitor_health(runtime)
    return JSONResponse(body.model_dump(), status_code=200 if body.status == "healthy" else 503)


@router.get("/health/live")
async def live() -> dict[str, str]:
    """The process and its event loop answer (nothing else is checked: restarting would not help)."""
    return {"status": "alive"}


@router.get("/health/ready", response_model=Readiness, responses={503: {"model": Readiness}})
async def ready(runtime: RuntimeDep) -> Any:
    """Broker connected, every subscription granted, database answering: safe to count on."""
    await runtime.check_database()
    reasons = _problems(runtime)
    body = Readiness(ready=not reasons, reasons=reasons)
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)
