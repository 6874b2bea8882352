"""The fleet: devices, their telemetry, relays and connectivity history."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query
from pydantic import AfterValidator

from service.api.deps import EngineDep
from service.api.schemas import (
    Aggregate,
    ConnectivityChange,
    DeviceDetail,
    DevicePublic,
    Page,
    RelayChange,
    RelayPublic,
    TelemetryBucket,
    TelemetryBuckets,
    TelemetryPublic,
)
from service.storage import queries

router = APIRouter(prefix="/devices", tags=["devices"])

_BUCKET = re.compile(r"^([1-9][0-9]{0,4})(s|m|h|d)$")
_UNIT = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _utc(value: datetime | None) -> datetime | None:
    # Naive times in a query are UTC, as everywhere in this API.
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def _bucket(value: str | None) -> str | None:
    if value is None:
        return None
    found = _BUCKET.match(value)
    if not found:
        raise ValueError("use a number and a unit: 30s, 1m, 5m, 1h, 1d")
    width = timedelta(**{_UNIT[found[2]]: int(found[1])})
    if not timedelta(seconds=1) <= width <= timedelta(days=366):
        raise ValueError("bucket must be between 1s and 366d")
    return value


def _width(bucket: str) -> timedelta:
    found = _BUCKET.match(bucket)
    assert found is not None
    return timedelta(**{_UNIT[found[2]]: int(found[1])})


Time = Annotated[datetime | None, AfterValidator(_utc)]
DeviceId = Annotated[str, Path(min_length=1, max_length=128)]
Limit = Annotated[int, Query(ge=1, le=1000)]


def _check_window(start: datetime | None, end: datetime | None) -> None:
    if start is not None and end is not None and end <= start:
        raise HTTPException(422, "'to' must be later than 'from'")


async def _existing(engine: EngineDep, device_id: str) -> dict[str, Any]:
    row = await queries.device(engine, device_id)
    if row is None:
        raise HTTPException(404, f"unknown device {device_id!r}")
    return row


@router.get("", response_model=Page[DevicePublic])
async def list_devices(
    engine: EngineDep,
    online: Annotated[bool | None, Query(description="only online (true) or offline (false) devices")] = None,
    seen_since: Annotated[Time, Query(description="last seen at or after this time")] = None,
    q: Annotated[str | None, Query(max_length=128, description="substring of the device id")] = None,
    sort: Literal["device_id", "last_seen", "-last_seen"] = "device_id",
    limit: Limit = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> Any:
    rows, total = await queries.device_page(
        engine, online=online, seen_since=seen_since, q=q, sort=sort, limit=limit, offset=offset
    )
    return Page[DevicePublic](items=[DevicePublic(**r) for r in rows], total=total, limit=limit, offset=offset)


@router.get("/{device_id}", response_model=DeviceDetail, responses={404: {"description": "unknown device"}})
async def get_device(engine: EngineDep, device_id: DeviceId) -> Any:
    row = await _existing(engine, device_id)
    latest = await queries.latest_telemetry(engine, device_id)
    return DeviceDetail(
        **row,
        latest_telemetry=TelemetryPublic(**latest) if latest else None,
        relays=[RelayPublic(**r) for r in await queries.relays(engine, device_id)],
    )


@router.get(
    "/{device_id}/telemetry",
    response_model=list[TelemetryPublic] | TelemetryBuckets,
    responses={404: {"description": "unknown device"}},
)
async def get_telemetry(
    engine: EngineDep,
    device_id: DeviceId,
    start: Annotated[Time, Query(alias="from", description="inclusive, ISO 8601 (UTC if no zone)")] = None,
    end: Annotated[Time, Query(alias="to", description="exclusive")] = None,
    bucket: Annotated[
        str | None,
        Query(description="aggregate per time bucket (e.g. 1m, 5m, 1h): avg/min/max/count per metric"),
        AfterValidator(_bucket),
    ] = None,
    limit: Limit = 1000,
) -> Any:
    _check_window(start, end)
    await _existing(engine, device_id)
    if bucket is None:
        return [TelemetryPublic(**r) for r in await queries.telemetry(engine, device_id, start, end, limit)]
    rows = await queries.telemetry_buckets(engine, device_id, _width(bucket), start, end, limit)
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


@router.get("/{device_id}/relays", response_model=list[RelayPublic], responses={404: {"description": "unknown device"}})
async def get_relays(engine: EngineDep, device_id: DeviceId) -> Any:
    await _existing(engine, device_id)
    return [RelayPublic(**r) for r in await queries.relays(engine, device_id)]


@router.get(
    "/{device_id}/relays/{relay}/history",
    response_model=list[RelayChange],
    responses={404: {"description": "unknown device"}},
)
async def get_relay_history(
    engine: EngineDep,
    device_id: DeviceId,
    relay: Annotated[int, Path(ge=0, le=65535)],
    start: Annotated[Time, Query(alias="from")] = None,
    end: Annotated[Time, Query(alias="to")] = None,
    limit: Limit = 1000,
) -> Any:
    _check_window(start, end)
    await _existing(engine, device_id)
    return [RelayChange(**r) for r in await queries.relay_history(engine, device_id, relay, start, end, limit)]


@router.get(
    "/{device_id}/connectivity",
    response_model=list[ConnectivityChange],
    responses={404: {"description": "unknown device"}},
)
async def get_connectivity(
    engine: EngineDep,
    device_id: DeviceId,
    start: Annotated[Time, Query(alias="from")] = None,
    end: Annotated[Time, Query(alias="to")] = None,
    limit: Limit = 1000,
) -> Any:
    _check_window(start, end)
    await _existing(engine, device_id)
    return [ConnectivityChange(**r) for r in await queries.connectivity(engine, device_id, start, end, limit)]
