"""Connectivity events derived from the stored, ordered status history (docs/fleet-watch.md).

The device row (service/watch/liveness.py) is the *current* state, decided against what is stored
when a batch commits. The events are the *history*: they must not depend on which replica committed
first, nor on a status reaching the database after a newer one (another replica was faster, or it
was redelivered after a crash). So every status is kept in `connectivity_history`, with every
change the watch made on our clock (a will, a timeout, a revival by a message), and the events are
the transitions of that history in order: by `at` (the device's clock for a stamped status, ours
for the rest) then by receive time.

A status, will or retained row sets the state by itself ("decisive"). A timeout or a revival only
holds where the state it changed was the one it saw: a revival after an `offline` the device said
itself is no change (offline by its own status holds until a status says otherwise), and so is a
timeout then. Each batch that adds rows recomputes its devices' events from its earliest new row
on (from the decisive row before it), inserting what is missing and removing what a late earlier
status made wrong, inside the batch's transaction and under the device rows' locks (every caller
holds them), so two replicas never recompute one device at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from service.storage import json_rows

# device, at, received_at (epoch s), online, cause, stamp (the device's timestamp, if it sent one)
HistoryRow = tuple[str, datetime, float, bool, str, datetime | None]

# A redelivered or retained copy of a stamped status has its stamp: the unique (device, stamp,
# online) index skips it; rows on our clock are written once (by the change that made them).
# A stamped `offline` older than all the device's history is not placed: that is a will stamped
# at connect time (the will itself is its own row, at its receive time) or a replay of something
# from before all we know, and as the device's first state it would invent an offline before the
# online that followed it. Any later offline has a place (the state before it is known).
# (`earlier`, `later`: the batch has a row of the device before or after this one; a statement
# does not see the rows it inserts itself.)
INSERT_HISTORY = f"""
INSERT INTO connectivity_history (device_id, at, received_at, is_online, cause, stamp)
SELECT d, a, to_timestamp(r), o, c, s
FROM {json_rows.table(1, "d text, a timestamptz, r float8, o bool, c text, s timestamptz, earlier bool, later bool")}
     AS u
WHERE o OR s IS NULL OR earlier
   OR EXISTS (SELECT 1 FROM connectivity_history h WHERE h.device_id = u.d AND h.at < u.a)
   OR NOT (later OR EXISTS (SELECT 1 FROM connectivity_history h WHERE h.device_id = u.d AND h.at > u.a))
ON CONFLICT DO NOTHING
"""

_RELATIVE = "('timeout', 'message')"
_ORDER = "ORDER BY at, received_at, cause"

RECOMPUTE = f"""
WITH b AS (
    SELECT device_id, lo FROM {json_rows.table(1, "device_id text, lo timestamptz")} AS b
), s AS (
    -- Start at the decisive row before the first new one (the state there is its own), else at the
    -- last row before it (no decisive row at all: each row's state is its own), else at the new row.
    SELECT b.device_id, b.lo, coalesce(
        (SELECT max(h.at) FROM connectivity_history h
         WHERE h.device_id = b.device_id AND h.at < b.lo AND h.cause NOT IN {_RELATIVE}),
        (SELECT max(h.at) FROM connectivity_history h WHERE h.device_id = b.device_id AND h.at < b.lo),
        b.lo) AS start
    FROM b
), w AS (
    SELECT h.device_id, h.at, h.received_at, h.is_online, h.cause, s.lo,
           count(*) FILTER (WHERE h.cause NOT IN {_RELATIVE})
               OVER (PARTITION BY h.device_id {_ORDER} ROWS UNBOUNDED PRECEDING) AS grp
    FROM s JOIN connectivity_history h ON h.device_id = s.device_id AND h.at >= s.start
), e AS (
    SELECT device_id, at, received_at, cause, lo,
           CASE WHEN cause NOT IN {_RELATIVE} OR grp = 0 THEN is_online
                -- after an offline the device said itself, a timeout or a message changes nothing
                WHEN first_value(cause) OVER g = 'status' AND NOT first_value(is_online) OVER g THEN false
                ELSE is_online END AS online
    FROM w WINDOW g AS (PARTITION BY device_id, grp {_ORDER})
), t AS (
    SELECT device_id, at, received_at, cause, lo, online,
           lag(online) OVER (PARTITION BY device_id {_ORDER}) AS before
    FROM e
), want AS (
    SELECT DISTINCT ON (device_id, at) device_id, at, online, cause
    FROM t WHERE at >= lo AND online IS DISTINCT FROM before
    ORDER BY device_id, at, received_at DESC, cause DESC
), stale AS (
    -- The events from lo on that the history no longer has. One index range per device (OFFSET 0
    -- keeps the planner from turning it into a scan of the whole table), deleted by their ctid.
    SELECT x.ctid AS tid FROM b CROSS JOIN LATERAL (
        SELECT ev.ctid, ev.ts FROM connectivity_events ev WHERE ev.device_id = b.device_id AND ev.ts >= b.lo
        OFFSET 0) x
    WHERE NOT EXISTS (SELECT 1 FROM want w WHERE w.device_id = b.device_id AND w.at = x.ts)
), gone AS (
    DELETE FROM connectivity_events WHERE ctid = ANY (ARRAY(SELECT tid FROM stale))
    RETURNING 1
), put AS (
    INSERT INTO connectivity_events AS ev (device_id, ts, is_online, cause)
    SELECT device_id, at, online, cause FROM want
    ON CONFLICT (device_id, ts) DO UPDATE SET is_online = EXCLUDED.is_online, cause = EXCLUDED.cause
    WHERE (ev.is_online, ev.cause) IS DISTINCT FROM (EXCLUDED.is_online, EXCLUDED.cause)
    RETURNING 1
)
SELECT (SELECT count(*) FROM gone) AS removed, (SELECT count(*) FROM put) AS written
"""


async def record(conn: asyncpg.Connection, rows: Sequence[HistoryRow]) -> None:
    """Store `rows` and bring the events of their devices in line with the history.

    The caller holds the devices' rows locked (FOR UPDATE or an upsert) for the transaction.
    """
    if not rows:
        return
    lo: dict[str, datetime] = {}
    hi: dict[str, datetime] = {}
    for device, at, *_ in rows:
        if device not in lo or at < lo[device]:
            lo[device] = at
        if device not in hi or at > hi[device]:
            hi[device] = at
    earlier = [at > lo[device] for device, at, *_ in rows]
    later = [at < hi[device] for device, at, *_ in rows]
    flagged = [(*row, e, la) for row, e, la in zip(rows, earlier, later, strict=True)]
    await conn.execute(INSERT_HISTORY, json_rows.rows(flagged))
    devices = sorted(lo)
    await conn.fetchrow(RECOMPUTE, json_rows.rows([(d, lo[d]) for d in devices]))
