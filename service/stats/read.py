"""Reads of the statistics for the HTTP API."""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

_STATS = text(
    """
SELECT metric, count, min, max, last_value, last_ts, n AS samples, mean AS average, var AS variance,
       anomalous, last_z
FROM telemetry_stats WHERE device_id = :d ORDER BY metric
"""
)


async def device_stats(session: AsyncSession, device_id: str) -> list[dict[str, Any]]:
    rows = (await session.execute(_STATS, {"d": device_id})).mappings().all()
    return [{**r, "deviation": math.sqrt(max(r["variance"], 0.0))} for r in rows]
