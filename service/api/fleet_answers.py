"""Fresh from the database, or from the fleet cache when the database does not answer.

GET /devices, /devices/{id} and /devices/{id}/relays use this; history (telemetry ranges, relay
history, connectivity, dead letters) is not in the cache and still answers 503.

* From the cache: 200, a `Warning: 110` header, and in object bodies `"stale": true` and
  `"as_of"` (the time of the newest commit the cache holds).
* Broker not connected: the answer is fresh but says so (`"broker_connected": false` in object
  bodies, a `Warning: 199` header on every answer), so nobody mistakes a silent fleet for a quiet one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
from fastapi import HTTPException
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc

from service import metrics
from service.fleet_cache import NotCached
from service.runtime import Runtime
from service.storage.writer import driver_error, is_permanent

log = logging.getLogger(__name__)

T = TypeVar("T")

# A database that hangs (half-open connection, failover) must not hold the answer for the pool's
# connect timeout: after this long the cache answers.
FRESH_TIMEOUT = 5.0
_DATABASE_ERRORS = (sa_exc.SQLAlchemyError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError)


@dataclass
class Answer:
    stale: bool = False
    as_of: float | None = None
    why: str | None = None  # why the database did not answer (stale answers)
    broker_connected: bool | None = None  # None: no subscriber (MQTT_MONITOR_ENABLED=false)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


async def fresh_or_cached(
    runtime: Runtime, fresh: Callable[[], Awaitable[T]], cached: Callable[[], T]
) -> tuple[T, Answer]:
    conn = runtime.connection
    answer = Answer(broker_connected=conn.connected if conn is not None else None)
    try:
        async with asyncio.timeout(FRESH_TIMEOUT):
            return await fresh(), answer
    except _DATABASE_ERRORS as exc:
        if is_permanent(exc) or runtime.fleet is None:
            raise
        reason = f"{exc.__class__.__name__}: {(str(driver_error(exc)).splitlines() or [''])[0]}".rstrip(": ")
    try:
        value = cached()
    except NotCached as miss:
        metrics.ERRORS.labels("api_database").inc()
        raise HTTPException(503, f"database unavailable ({reason}), and {miss}") from None
    metrics.ERRORS.labels("api_database").inc()
    log.warning("database unavailable for a fleet read (%s); answered from the cache", reason)
    answer.stale, answer.as_of, answer.why = True, runtime.fleet.as_of, reason
    return value, answer


def respond(body: Any, answer: Answer, *, annotate_body: bool = True) -> JSONResponse:
    """The JSON answer, with the staleness and broker fields only where they say something."""
    content = jsonable_encoder(body)
    headers = {}
    warnings = []
    if answer.stale:
        as_of = _iso(answer.as_of) if answer.as_of is not None else "unknown"
        warnings.append(f'110 autocore-monitor "Response is Stale: database unavailable; fleet state as of {as_of}"')
        if annotate_body:
            content["stale"] = True
            content["as_of"] = as_of if answer.as_of is not None else None
    if answer.broker_connected is False:
        warnings.append('199 autocore-monitor "not connected to the MQTT broker: devices may have sent more"')
        if annotate_body:
            content["broker_connected"] = False
    if warnings:
        headers["Warning"] = ", ".join(warnings)
    return JSONResponse(content, headers=headers)
