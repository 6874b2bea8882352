"""The fleet: devices, their telemetry, relays and connectivity history."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator
from sqlalchemy.ext.asyncio import AsyncSession

from service.api.deps import RuntimeDep, SessionDep
from service.api.params import NO_NUL, DeviceId, From, Limit, Offset, Time, To
from service.api.schemas import (
    Aggregate,
    ConnectivityChange,
    DeviceDetail,
    DevicePublic,
    Page,
    Problem,
    RelayChange,
    RelayPublic,
    TelemetryBucket,
    TelemetryBuckets,
    TelemetryPublic,
)
from service.storage import queries

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


@router.get("", response_model=Page[DevicePublic])
async def list_devices(
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
    limit: Limit = 100,
    offset: Offset = 0,
) -> Any:
    """Devices, one page at a time: `total` counts every match, `offset` + `limit` pick the page."""
    rows, total = await queries.device_page(
        session, online=online, seen_since=seen_since, q=q, sort=sort, limit=limit, offset=offset
    )
    return Page[DevicePublic](items=[DevicePublic(**r) for r in rows], total=total, limit=limit, offset=offset)


@router.get("/{device_id}", response_model=DeviceDetail, responses=_UNKNOWN)
async def get_device(session: SessionDep, device_id: DeviceId) -> Any:
    """Current state: online, last seen, IP, firmware, uptime, the newest telemetry row, every relay."""
    row = await _existing(session, device_id)
    latest = await queries.latest_telemetry(session, device_id)
    return DeviceDetail(
        **row,
        latest_telemetry=TelemetryPublic(**latest) if latest else None,
        relays=[RelayPublic(**r) for r in await queries.relays(session, device_id)],
    )


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


@router.get("/{device_id}/relays", response_model=list[RelayPublic], responses=_UNKNOWN)
async def get_relays(session: SessionDep, device_id: DeviceId) -> Any:
    """Each relay's current state (the newest change by the device's clock)."""
    await _existing(session, device_id)
    return [RelayPublic(**r) for r in await queries.relays(session, device_id)]


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
