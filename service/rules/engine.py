"""Rule state per (rule, device, relay), derived in the writer's transaction against the stored state.

`apply()` runs inside the batch's transaction (BatchWriter._execute), so a firing is committed with
the messages that caused it or not at all. Three statements per batch with changes, none without:
the state rows of the batch's keys are created if missing and locked, in key order (`INSERT … ON
CONFLICT DO UPDATE` with a no-op update: a concurrent writer of the same key waits for our commit);
each change is then applied in device-time order:

* a change older than (or as old as) the stored change point is refused: a redelivery, a restart's
  replay or a late message never moves the state back, never fires twice;
* false -> true records the episode's start (`since`) and, without `for:`, fires;
* with `for:`, a report at `since + for` or later of the same episode fires (once: `fired_at`);
* true -> false ends the episode.

The changed (rule, device) keys are then announced with `pg_notify` (delivered at commit) so that
other replicas' caches learn of them (service/rules/peers.py).

A firing is a `rule_firings` row with its rendered actions and status `pending`, unique per
(rule, device, relay, since): the seam where the notification outbox (issue 11) takes over. Nothing
here sends anything.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from service.records import RuleRecord
from service.rules import metrics, peers

# Creates the batch's missing state rows and locks all of them, in key order, in one statement: the
# no-op DO UPDATE takes the row lock (as FOR UPDATE would) and RETURNING gives the stored values.
LOCK_STATE = """
INSERT INTO rule_state AS s (rule, device_id, relay, value)
SELECT r, d, i, false FROM unnest($1::text[], $2::text[], $3::int4[]) AS u(r, d, i)
ORDER BY r, d, i
ON CONFLICT (rule, device_id, relay) DO UPDATE SET value = s.value
RETURNING s.rule, s.device_id, s.relay, s.value, s.changed_at, s.since, s.fired_at
"""

NOTIFY = "SELECT pg_notify($1 || ':' || current_schema(), $2)"

# The new states and the firings, in one statement.
WRITE = """
WITH updated AS (
    UPDATE rule_state s
    SET value = u.v, changed_at = u.c, since = u.s, fired_at = u.f, updated_at = now()
    FROM unnest($1::text[], $2::text[], $3::int4[], $4::bool[], $5::timestamptz[], $6::timestamptz[],
                $7::timestamptz[]) AS u(r, d, i, v, c, s, f)
    WHERE s.rule = u.r AND s.device_id = u.d AND s.relay = u.i
)
INSERT INTO rule_firings (rule, device_id, relay, since, ts, severity, actions, context)
SELECT * FROM unnest($8::text[], $9::text[], $10::int4[], $11::timestamptz[], $12::timestamptz[], $13::text[],
                     $14::jsonb[], $15::jsonb[])
ON CONFLICT (rule, device_id, relay, since) DO NOTHING
"""

Key = tuple[str, str, int]


class State:
    __slots__ = ("changed", "changed_at", "fired_at", "since", "value")

    def __init__(self, value: bool, changed_at: datetime | None, since: datetime | None, fired_at: datetime | None):
        self.value = value
        self.changed_at = changed_at
        self.since = since
        self.fired_at = fired_at
        self.changed = False


Firing = tuple[str, str, int, datetime, datetime, str, str, str]


def transitions(records: Sequence[RuleRecord], current: dict[Key, State]) -> list[Firing]:
    """Apply the batch's changes to the locked states (in place); the firings they cause."""
    items = sorted(
        ((rule.name, rec.device_id, rec.relay, rec.ts, value, rule, rec.context)
         for rec in records for rule, value in rec.changes),
        key=lambda item: item[:4],
    )  # fmt: skip
    firings: list[Firing] = []
    for name, device, relay, ts, value, rule, context in items:
        st = current[(name, device, relay)]
        if st.changed_at is not None and ts <= st.changed_at:
            continue  # not newer than the stored change point: already applied, or late
        fire = False
        if value != st.value:
            st.value, st.changed_at, st.changed = value, ts, True
            st.since, st.fired_at = (ts if value else None), None
            fire = value and not rule.hold
        elif value and st.fired_at is None and rule.hold and st.since is not None and ts - st.since >= rule.hold:
            fire = True
        if fire and st.since is not None:
            st.fired_at, st.changed = ts, True
            ctx = _plain(context or {})
            firings.append((name, device, relay, st.since, ts, rule.severity, json.dumps(rule.render(ctx)),
                            json.dumps(ctx)))  # fmt: skip
    return firings


async def apply(conn: asyncpg.Connection, records: Sequence[RuleRecord]) -> None:
    """The batch's rule changes against the stored state, in the caller's transaction."""
    keys = sorted({(rule.name, rec.device_id, rec.relay) for rec in records for rule, _ in rec.changes})
    if not keys:
        return
    current = {
        (r["rule"], r["device_id"], r["relay"]): State(r["value"], r["changed_at"], r["since"], r["fired_at"])
        for r in await conn.fetch(LOCK_STATE, *[list(c) for c in zip(*keys, strict=True)])
    }
    firings = transitions(records, current)
    changed = [(*k, s.value, s.changed_at, s.since, s.fired_at) for k, s in current.items() if s.changed]
    if changed:
        await conn.execute(WRITE, *_columns(changed, 7), *_columns(firings, 8))
        # Delivered at commit (and never if we roll back): other replicas' caches learn of it.
        for payload in peers.payloads(records[0].origin, sorted({(k[0], k[1]) for k in changed})):
            await conn.execute(NOTIFY, peers.CHANNEL, payload)
    if firings:
        metrics.count_firings(firings)


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    return [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


def _plain(context: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready: times as ISO 8601, anything else unusual as text."""
    out: dict[str, Any] = {}
    for k, v in context.items():
        if v is None or isinstance(v, bool | int | float | str):
            out[k] = v
        elif isinstance(v, datetime):
            out[k] = v.isoformat()
        else:
            out[k] = str(v)
    return out
