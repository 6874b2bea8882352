"""Reads of rule state and firings for the API (bound parameters only)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from service.config import redact_url

_COUNTS = """
SELECT rule, count(*) AS fired, max(recorded_at) AS last_fired_at FROM rule_firings
WHERE rule = ANY(:names) GROUP BY rule
"""
_STATES = """
SELECT rule, device_id, relay, value, changed_at, since, fired_at FROM rule_state
WHERE rule = ANY(:names) AND changed_at IS NOT NULL ORDER BY rule, device_id, relay LIMIT :limit
"""
# A firing's status (of `rule_firings f`), read off its outbox rows so that it is never behind them:
# pending while one is, then failed if one gave up, else done (at once without any: an alert only).
FIRING_STATUS = """(SELECT CASE WHEN bool_or(n.status = 'pending') THEN 'pending'
                        WHEN bool_or(n.status = 'failed') THEN 'failed' ELSE 'done' END
                   FROM notifications n WHERE n.firing_id = f.id)"""
_FIRINGS = f"""
SELECT f.id, f.rule, f.device_id, f.relay, f.since, f.ts, f.severity, f.actions, f.context,
       {FIRING_STATUS} AS status, f.recorded_at
FROM rule_firings f
WHERE f.rule = :rule AND (CAST(:device AS text) IS NULL OR f.device_id = :device)
ORDER BY f.id DESC LIMIT :limit OFFSET :offset
"""
_FIRINGS_TOTAL = (
    "SELECT count(*) FROM rule_firings WHERE rule = :rule AND (CAST(:device AS text) IS NULL OR device_id = :device)"
)


# What the outbox did with each firing's publish and webhook actions (notifications.firing_id).
_DELIVERIES = """
SELECT firing_id, event_id::text AS idempotency_key, channel, target, status, attempts, sent_at, last_error
FROM notifications WHERE firing_id = ANY(:ids) ORDER BY id
"""


async def summaries(
    session: AsyncSession, names: Sequence[str], state_limit: int
) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    counts = {r["rule"]: dict(r) for r in (await session.execute(text(_COUNTS), {"names": list(names)})).mappings()}
    states: dict[str, list[dict[str, Any]]] = {}
    rows = await session.execute(text(_STATES), {"names": list(names), "limit": state_limit})
    for r in rows.mappings():
        states.setdefault(r["rule"], []).append(dict(r))
    return counts, states


async def firings(
    session: AsyncSession, rule: str, device: str | None, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    params = {"rule": rule, "device": device, "limit": limit, "offset": offset}
    rows = [dict(r) for r in (await session.execute(text(_FIRINGS), params)).mappings()]
    total = (await session.execute(text(_FIRINGS_TOTAL), params)).scalar_one()
    deliveries: dict[int, list[dict[str, Any]]] = {r["id"]: [] for r in rows}
    if rows:
        for d in (await session.execute(text(_DELIVERIES), {"ids": list(deliveries)})).mappings():
            item = dict(d)
            firing = item.pop("firing_id")
            if item["channel"] == "webhook":
                item["target"] = redact_url(item["target"])
            deliveries[firing].append(item)
    for r in rows:
        r["deliveries"] = deliveries[r["id"]]
    return rows, int(total)
