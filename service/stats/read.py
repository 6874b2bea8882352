"""Reads of the statistics for the HTTP API."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from service.stats.ewma import K, view
from service.stats.store import unpack

_STATS = text("SELECT metrics, state FROM telemetry_stats WHERE device_id = :d")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def decode(metrics: list[str], state: bytes) -> list[dict[str, Any]]:
    """Per metric (by name), the figures of GET /devices/{id}/stats."""
    values = unpack(state)
    out = []
    for i, metric in enumerate(metrics):
        f = view(values, i * K)
        ts = f["last_ts"]
        out.append({
            "metric": metric,
            "count": f["count"],
            "min": f["min"],
            "max": f["max"],
            "last_value": f["last_value"],
            "last_ts": None if ts is None else _EPOCH + timedelta(microseconds=ts),
            "samples": f["n"],
            "average": f["mean"],
            "variance": f["var"],
            "deviation": math.sqrt(max(f["var"], 0.0)),
            "anomalous": f["anomalous"],
            "last_z": f["last_z"],
        })  # fmt: skip
    return sorted(out, key=lambda m: m["metric"])


async def device_stats(session: AsyncSession, device_id: str) -> list[dict[str, Any]]:
    row = (await session.execute(_STATS, {"d": device_id})).first()
    return [] if row is None else decode(list(row[0]), bytes(row[1]))
