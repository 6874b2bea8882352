"""The fleet: devices, their telemetry, relays and connectivity history."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator
from sqlalchemy.ext.asyncio import AsyncSession

from service.api.deps import RuntimeDep, SessionDep, TokenDep
from service.api.fleet_answers import fresh_or_cached, respond
from service.api.params import NO_NUL, DeviceId, From, Limit, Offset, Time, To
from service.api.schemas import (
    Aggregate,
    AlertPublic,
    ConnectivityChange,
    DeviceDetail,
    DevicePage,
    DevicePublic,
    MetricStats,
    Problem,
    RelayChange,
    RelayPublic,
    TelemetryBucket,
    TelemetryBuckets,
    TelemetryPublic,
)
from service.fleet_cache import FleetCache
from service.runtime import Runtime
from service.stats.read import device_stats
from service.storage import queries, watch_queries
from service.watch.alerts import UNKNOWN_DEVICE, resolve_alerts
from service.watch.sweep import raw_connection

router = APIRouter(
    prefix="/devices", tags=["devices"], responses={503: {"model": Problem, "description": "database unavailable"}}
)
_UNKNOWN: dict[int | str, dict[str, Any]] = {404: {"model": Problem, "description": "unknown device"}}

_BUCKET = re.compile(r"^([1-9][0-9]{0,4})(s|m|h|d)$")
_UNIT = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_WIDEST = timedelta(days=366)


def _width(bucket: str) -> timedelta:
    found = _BUCKET.match(bucket)
    if not found:
        raise ValueError("use a whole number and a unit (s, m, h, d): 30s, 1m, 5m, 1h, 1d")
    width = timedelta(**{_UNIT[found[2]]: int(found[1])})
    if width > _WIDEST:
        raise ValueError("at most 366d")
    return width


def _bucket(value: str | None) -> str | None:
    if value is not None:
        _width(value)
    return value


Bucket = Annotated[
    str | None,
    Query(description="aggregate per time bucket, 1s to 366d (30s, 1m, 5m, 1h, 1d…): avg/min/max/count per metric"),
    AfterValidator(_bucket),
]
Relay = Annotated[int, Path(ge=0, le=65535)]


def _check_window(start: datetime | None, end: datetime | None) -> None:
    if start is not None and end is not None and end <= start:
        # Shaped like FastAPI's own validation errors, so every 422 names its parameter the same way.
        error = {"type": "value_error", "loc": ("query", "to"), "msg": "must be later than 'from'", "input": end}
        raise RequestValidationError([error])


async def _existing(session: AsyncSession, device_id: str) -> dict[str, Any]:
    row = await queries.device(session, device_id)
    if row is None:
        raise HTTPException(404, f"unknown device {device_id!r}")
    return row


_CACHED = "from the fleet cache while the database does not answer (docs/security.md)"


@router.get("", response_model=DevicePage, responses={200: {"description": f"fresh, or {_CACHED}"}})
async def list_devices(
    runtime: RuntimeDep,
    session: SessionDep,
    online: Annotated[
        bool | None,
        Query(
            description="only devices whose last status is online (true) or offline (false); "
            "a device that never sent a status matches neither"
        ),
    ] = None,
    seen_since: Annotated[Time, Query(description="last seen at or after this time")] = None,
    q: Annotated[
        str | None, Query(max_length=128, pattern=NO_NUL, description="substring of the device id, any case")
    ] = None,
    sort: Annotated[
        Literal["device_id", "last_seen", "-last_seen"], Query(description="ties are broken by device_id")
    ] = "device_id",
    known: Annotated[
        bool | None, Query(description="false: devices waiting for review (DEVICE_REGISTRATION=review)")
    ] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Any:
    """Devices, one page at a time: `total` counts every match, `offset` + `limit` pick the page."""
    filters: dict[str, Any] = {"online": online, "seen_since": seen_since, "q": q, "sort": sort, "limit": limit,
                               "offset": offset, "known": known}  # fmt: skip

    async def fresh() -> tuple[list[dict[str, Any]], int]:
        return await queries.device_page(session, **filters)

    (rows, total), answer = await fresh_or_cached(runtime, fresh, lambda: _fleet(runtime).device_page(**filters))
    page = DevicePage(items=[DevicePublic(**r) for r in rows], total=total, limit=limit, offset=offset)
    return respond(page.model_dump(mode="json", exclude={"stale", "as_of", "broker_connected"}), answer)


def _fleet(runtime: Runtime) -> FleetCache:
    assert runtime.fleet is not None  # fresh_or_cached asks the cache only when there is one
    return runtime.fleet


Rows = list[dict[str, Any]]
Detail = tuple[dict[str, Any] | None, dict[str, Any] | None, Rows, Rows, Rows]


@router.get("/{device_id}", response_model=DeviceDetail, responses={**_UNKNOWN, 200: {"description": _CACHED}})
async def get_device(runtime: RuntimeDep, session: SessionDep, device_id: DeviceId) -> Any:
    """Current state: online, last seen, IP, firmware, uptime, the newest telemetry row, every relay,
    its open alerts and per-metric statistics (not while answering from the cache)."""

    async def fresh() -> Detail:
        row = await queries.device(session, device_id)
        if row is None:
            return None, None, [], [], []
        return (
            row,
            await queries.latest_telemetry(session, device_id),
            await queries.relays(session, device_id),
            await watch_queries.open_alerts_of(session, device_id),
            await device_stats(session, device_id),
        )

    def cached() -> Detail:
        fleet = _fleet(runtime)
        return fleet.device(device_id), fleet.latest_telemetry(device_id), fleet.relays(device_id), [], []

    (row, latest, relays, alerts, stats), answer = await fresh_or_cached(runtime, fresh, cached)
    if row is None:
        raise HTTPException(404, f"unknown device {device_id!r}")
    detail = DeviceDetail(
        **row,
        latest_telemetry=TelemetryPublic(**latest) if latest else None,
        relays=[RelayPublic(**r) for r in relays],
        open_alerts=[AlertPublic(**a) for a in alerts],
        stats=[MetricStats(**m) for m in stats],
    )
    return respond(detail.model_dump(mode="json", exclude={"stale", "as_of", "broker_connected"}), answer)


@router.post(
    "/{device_id}/accept",
    response_model=DevicePublic,
    dependencies=[TokenDep],
    responses={
        **_UNKNOWN,
        401: {"model": Problem, "description": "missing or wrong token"},
        403: {"model": Problem, "description": "API_TOKEN is not set: mutating endpoints are disabled"},
    },
)
async def accept_device(runtime: RuntimeDep, session: SessionDep, device_id: DeviceId) -> Any:
    """Mark a device known (reviewed); its `unknown_device` alert is resolved (and notified). Idempotent."""
    async with raw_connection(runtime.engine) as conn, conn.transaction():
        found = await conn.fetchval(
            "UPDATE devices SET known = true WHERE device_id = $1 RETURNING device_id", device_id
        )
        if found is None:
            raise HTTPException(404, f"unknown device {device_id!r}")
        await resolve_alerts(conn, runtime.outbox, [(device_id, UNKNOWN_DEVICE, "")])
    if runtime.sender is not None and runtime.outbox.take_written():
        runtime.sender.wake()
    if runtime.fleet is not None:
        runtime.fleet.read_again([device_id])
    return DevicePublic(**await _existing(session, device_id))


@router.get("/{device_id}/telemetry", response_model=list[TelemetryPublic] | TelemetryBuckets, responses=_UNKNOWN)
async def get_telemetry(
    session: SessionDep,
    runtime: RuntimeDep,
    device_id: DeviceId,
    start: From = None,
    end: To = None,
    bucket: Bucket = None,
    limit: Limit = 1000,
) -> Any:
    """Raw rows, oldest first; with `bucket`, aggregates per bucket computed by PostgreSQL (`date_bin`,
    buckets aligned on 2000-01-01T00:00:00Z). `limit` counts rows, or buckets. A bucket of whole
    minutes or hours is read from the one-minute or one-hour rollups where they are complete (the
    same figures as from the raw rows, cheaper on long windows: docs/retention.md)."""
    _check_window(start, end)
    await _existing(session, device_id)
    if bucket is None:
        return [TelemetryPublic(**r) for r in await queries.telemetry(session, device_id, start, end, limit)]
    rows = await queries.telemetry_buckets(
        session, device_id, _width(bucket), start, end, limit,
        use_rollups=runtime.settings.rollup_interval_seconds > 0,
    )  # fmt: skip
    items = [
        TelemetryBucket(
            start=r["start"],
            count=r["n"],
            metrics={
                m: Aggregate(avg=r[f"{m}_avg"], min=r[f"{m}_min"], max=r[f"{m}_max"], count=r[f"{m}_count"])
                for m in queries.METRICS
            },
        )
        for r in rows
    ]
    return TelemetryBuckets(bucket=bucket, items=items)


@router.get("/{device_id}/stats", response_model=list[MetricStats], responses=_UNKNOWN)
async def get_stats(session: SessionDep, device_id: DeviceId) -> Any:
    """Per numeric metric: count, min, max, the newest value, the moving average and deviation, and
    whether an anomaly is open (docs/statistics.md)."""
    await _existing(session, device_id)
    return [MetricStats(**m) for m in await device_stats(session, device_id)]


@router.get(
    "/{device_id}/relays", response_model=list[RelayPublic], responses={**_UNKNOWN, 200: {"description": _CACHED}}
)
async def get_relays(runtime: RuntimeDep, session: SessionDep, device_id: DeviceId) -> Any:
    """Each relay's current state (the newest change by the device's clock). From the cache, the answer
    carries a `Warning: 110` header (a list has no room for `stale`)."""

    async def fresh() -> tuple[bool, list[dict[str, Any]]]:
        if await queries.device(session, device_id) is None:
            return False, []
        return True, await queries.relays(session, device_id)

    def cached() -> tuple[bool, list[dict[str, Any]]]:
        fleet = _fleet(runtime)
        return fleet.device(device_id) is not None, fleet.relays(device_id)

    (known, relays), answer = await fresh_or_cached(runtime, fresh, cached)
    if not known:
        raise HTTPException(404, f"unknown device {device_id!r}")
    return respond([RelayPublic(**r).model_dump(mode="json") for r in relays], answer, annotate_body=False)


@router.get(
    "/{device_id}/relays/{relay}/history",
    response_model=list[RelayChange],
    responses={404: {"model": Problem, "description": "unknown device, or no such relay on it"}},
)
async def get_relay_history(
    session: SessionDep, device_id: DeviceId, relay: Relay, start: From = None, end: To = None, limit: Limit = 1000
) -> Any:
    """One relay's changes, oldest first."""
    _check_window(start, end)
    await _existing(session, device_id)
    if not await queries.relay_exists(session, device_id, relay):
        raise HTTPException(404, f"device {device_id!r} has no relay {relay}")
    return [RelayChange(**r) for r in await queries.relay_history(session, device_id, relay, start, end, limit)]


@router.get("/{device_id}/connectivity", response_model=list[ConnectivityChange], responses=_UNKNOWN)
async def get_connectivity(
    session: SessionDep, device_id: DeviceId, start: From = None, end: To = None, limit: Limit = 1000
) -> Any:
    """Online/offline changes by the device's clock, oldest first."""
    _check_window(start, end)
    await _existing(session, device_id)
    return [ConnectivityChange(**r) for r in await queries.connectivity(session, device_id, start, end, limit)]
