"""Liveness inside the batch's transaction: which devices are online, since when, and why.

The ordering rule (docs/fleet-watch.md, "Liveness"):

* Two clocks, never compared with each other. `status_ts` is the device's clock (the newest
  *stamped* status applied); `last_seen` and `state_changed_at` are ours (receive times).
* A stamped status applies when it is newer than `status_ts` (cause `status`): redeliveries and
  out-of-order copies are older and change nothing.
* An unstamped status is ordered by receive order: it applies when nothing from the device was
  received after it (cause `status`). It does not move `status_ts`.
* An `offline` status received after everything else from the device applies even when its own
  timestamp is old or missing: that is how a last will looks (the broker publishes it only once the
  device's connection is gone). Cause `will`. A redelivered copy (MQTT DUP) never counts as
  received last: it was first received earlier.
* A retained status is history: it applies only on the device's clock (stamped and newer than
  `status_ts`), or, unstamped, only to a device whose state is unknown. Cause `retained`. It is never
  a will and does not count as hearing from the device.
* A device silent for DEVICE_OFFLINE_AFTER_SECONDS (our clock) is offline (cause `timeout`, the
  sweep); any message received after the change takes an offline device back online (cause
  `message`).

Every decision is made against the stored row, locked (rows in device_id order, so writers of the
same devices never deadlock): a redelivery, an out-of-order message or another replica never
produces a change that did not happen. That is the device's current state (and its alerts and
notifications). The connectivity events are the transitions of the ordered status history
(service/watch/history.py), so a status committed after a newer one still has its place in them.
"""

from __future__ import annotations

import fnmatch
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from service import metrics
from service.notify.outbox import Event, Outbox, emit_events
from service.records import RelayRecord, StatusRecord
from service.storage import json_rows
from service.storage import statements as sql
from service.watch.alerts import OFFLINE, UNKNOWN_DEVICE, AlertSpec, change_alerts
from service.watch.history import HistoryRow
from service.watch.history import record as record_history

_from_epoch = datetime.fromtimestamp
_US = 1e-6

# Every device row a status batch writes is locked by one statement, in device_id order, whether it
# exists (the upsert locks the row; WHERE false writes nothing) or not (the insert holds its key):
# two replicas writing overlapping devices then always wait in the same order. (Locking the stored
# rows first and inserting the missing ones after was a deadlock: another replica could create a
# missing row and lock it in between, then wait for one of ours.) RETURNING names the created ones.
LOCK_OR_CREATE = f"""
INSERT INTO devices AS d (device_id, first_seen, last_seen, known)
SELECT u.d, to_timestamp(u.s), to_timestamp(u.s), $2 FROM {json_rows.table(1, "d text, s float8")} AS u
ORDER BY u.d
ON CONFLICT (device_id) DO UPDATE SET known = d.known WHERE false
RETURNING device_id
"""

# Read after the lock above (a statement of its own: it sees what the replica we waited for committed).
LOCKED_DEVICES = """
SELECT device_id, is_online, status_ts, extract(epoch FROM last_seen)::float8 AS last_seen,
       extract(epoch FROM state_changed_at)::float8 AS changed, connectivity_cause AS cause
FROM devices WHERE device_id = ANY($1::text[])
"""

# last_seen for devices without a status in the batch; an offline device heard from after its
# change comes back online. Only new and revived devices come back (usually none).
TOUCH = """
WITH t AS (
    INSERT INTO devices AS d (device_id, first_seen, last_seen, known)
    SELECT device_id, to_timestamp(seen), to_timestamp(seen), $2
    FROM {rows} AS u
    ON CONFLICT (device_id) DO UPDATE
    SET last_seen = EXCLUDED.last_seen,
        is_online = CASE WHEN {revive} THEN true ELSE d.is_online END,
        state_changed_at = CASE WHEN {revive} THEN EXCLUDED.last_seen ELSE d.state_changed_at END,
        connectivity_cause = CASE WHEN {revive} THEN 'message' ELSE d.connectivity_cause END
    WHERE d.last_seen < EXCLUDED.last_seen
    RETURNING d.device_id, d.last_seen, (d.xmax = 0) AS created,
              coalesce(d.is_online AND d.state_changed_at = d.last_seen, false) AS revived
)
SELECT device_id, extract(epoch FROM last_seen)::float8 AS seen, created, revived FROM t WHERE created OR revived
""".format(
    rows=json_rows.table(1, "device_id text, seen float8"),
    # Offline by timeout, will or a retained status, and heard from since: the device is back.
    # (Offline by its own status holds until it says otherwise.)
    revive="d.is_online = false AND d.connectivity_cause IN ('timeout', 'will', 'retained') "
    "AND d.state_changed_at < EXCLUDED.last_seen"
)

# The rows as stored come back: the writer hands them to the fleet cache with the commit.
UPDATE_STATUS = f"""
UPDATE devices AS d
SET is_online = u.is_online, status_ts = u.status_ts,
    ip_address = COALESCE(u.ip::inet, d.ip_address),
    firmware_version = COALESCE(u.fw, d.firmware_version),
    uptime = COALESCE(u.uptime, d.uptime),
    last_seen = GREATEST(d.last_seen, to_timestamp(u.seen)),
    state_changed_at = to_timestamp(u.changed), connectivity_cause = u.cause
FROM {json_rows.table(1, "device_id text, is_online bool, status_ts timestamptz, ip text, fw text, uptime int8, "
                         "seen float8, changed float8, cause text")} AS u
WHERE d.device_id = u.device_id
RETURNING {sql.device_columns('d')}
"""

# The newest stamped offline each device said (stored in its history; see walk()).
SAID_OFFLINE = """
SELECT device_id, max(stamp) AS said FROM connectivity_history
WHERE device_id = ANY($1::text[]) AND stamp IS NOT NULL AND NOT is_online AND cause = 'status'
GROUP BY device_id
"""

LOCK_RELAYS = """
SELECT r.device_id, r.relay_index, r.state, r.ts FROM relays r
JOIN unnest($1::text[], $2::int4[]) AS u(d, i) ON r.device_id = u.d AND r.relay_index = u.i
ORDER BY r.device_id, r.relay_index FOR UPDATE OF r
"""


@dataclass(slots=True)
class _State:
    is_online: bool | None
    status_ts: datetime | None
    last_seen: float
    changed: float | None
    cause: str | None = None


def _state(r: asyncpg.Record) -> _State:
    return _State(r["is_online"], r["status_ts"], r["last_seen"], r["changed"], r["cause"])


# Offline for these reasons, a device heard from again is back online (cause "message"); offline by
# its own status, it stays offline until a status says otherwise.
REVIVABLE = ("timeout", "will", "retained")

Change = tuple[str, datetime, bool, str]  # device, at, online, cause


def walk(
    device: str,
    recs: Sequence[StatusRecord],
    state: _State,
    other_seen: float | None,
    history: list[HistoryRow] | None = None,
    said_offline: datetime | None = None,
) -> tuple[_State, dict[str, Any], list[Change]]:
    """Apply one device's statuses (in receive order) to its stored state, by the ordering rule.

    `other_seen`: when the newest non-status message of the device in this batch was received
    (None if none came after its statuses). Returns the new state, the fields to set and the
    changes; appends to `history` the rows of the connectivity history (service/watch/history.py):
    every live stamped status at its own time, whether or not it is news now (committed after a
    newer one, it still has its place in the history), and what applied on our clock (a will, an
    unstamped or retained status, a revival).

    `said_offline`: the newest stamp of a stamped `offline` the device sent that is stored (None if
    unknown or none). A stamped `offline` no newer than it is not a will, however late it comes: the
    device said `offline` after this one's stamp, so this is an older status delivered late (another
    replica's queued share), not the will of its current connection (stamped at connect, which is
    after every `offline` of its earlier connections).
    """
    fields: dict[str, Any] = {}
    changes: list[Change] = []
    if history is None:
        history = []
    online, status_ts, changed, why = state.is_online, state.status_ts, state.changed, state.cause
    # The newest receive time after each status (other messages, later live statuses).
    after: list[float] = []
    after_status: list[float] = []  # the same, later live statuses only
    newest = other_seen or 0.0
    newest_status = 0.0
    for r in reversed(recs):
        after.append(newest)
        after_status.append(newest_status)
        if not r.retained:
            newest = max(newest, r.received_at)
            newest_status = max(newest_status, r.received_at)
    after.reverse()
    after_status.reverse()
    heard = max([r.received_at for r in recs if not r.retained] + ([other_seen] if other_seen else []), default=None)
    for r, later_at, later_status in zip(recs, after, after_status, strict=True):
        # A redelivery (DUP) was first received earlier: it cannot be the last thing we heard.
        # (Stored times are whole microseconds: to_timestamp() may round this very message's up.)
        fresh = not r.redelivered and state.last_seen <= r.received_at + _US
        received_last = fresh and later_at <= r.received_at
        # An unstamped "online" followed in the same batch by the device's other messages is not
        # contradicted by them (they say it is alive): only a later status or stored news outranks
        # it. Without this, whether it applied would depend on how messages fell into batches.
        online_not_outranked = fresh and r.is_online and later_status <= r.received_at
        newer_on_device_clock = r.stamped and (status_ts is None or r.ts > status_ts)
        cause: str | None = None
        if r.retained:
            if newer_on_device_clock or (not r.stamped and online is None and status_ts is None):
                cause = "retained"
        elif newer_on_device_clock:
            cause = "status"
        elif received_last and not r.is_online and not (r.stamped and said_offline and r.ts <= said_offline):
            cause = "will"
        elif (received_last or online_not_outranked) and not r.stamped:
            cause = "status"
        if cause == "will":
            # The will happened when it was received (its timestamp, if any, is the connect time).
            history.append((device, _from_epoch(r.received_at, UTC), r.received_at, False, "will", None))
        if r.stamped and not r.retained:
            # At its own time too: the same bytes may be a status delivered late (another replica's
            # share); the history decides whether it has a place there (history.INSERT_HISTORY).
            history.append((device, r.ts, r.received_at, r.is_online, "status", r.ts))
        elif cause is not None and cause != "will":
            at = r.ts if r.stamped else _from_epoch(r.received_at, UTC)
            history.append((device, at, r.received_at, r.is_online, cause, r.ts if r.stamped else None))
        if r.stamped and not r.retained and not r.is_online and (said_offline is None or r.ts > said_offline):
            said_offline = r.ts
        if cause is None:
            continue  # stale: older than what we know
        if newer_on_device_clock:
            status_ts = r.ts
        if r.ip_address is not None:
            fields["ip"] = r.ip_address
        if r.firmware_version is not None:
            fields["fw"] = r.firmware_version
        if r.uptime is not None:
            fields["uptime"] = r.uptime
        if r.is_online != online:
            at = r.ts if cause in ("status", "retained") and r.stamped else _from_epoch(r.received_at, UTC)
            changes.append((device, at, r.is_online, cause))
            online, changed, why = r.is_online, r.received_at, cause
    if online is False and why in REVIVABLE and other_seen is not None and other_seen > (changed or 0.0) + _US:
        # Heard from after it went offline: back online.
        changes.append((device, _from_epoch(other_seen, UTC), True, "message"))
        history.append((device, _from_epoch(other_seen, UTC), other_seen, True, "message", None))
        online, changed, why = True, other_seen, "message"
    seen = max(state.last_seen, heard) if heard is not None else state.last_seen
    return _State(online, status_ts, seen, changed, why), fields, changes


class Watch:
    """What the writer calls inside its transaction for devices, statuses and relays."""

    def __init__(
        self,
        outbox: Outbox | None = None,
        *,
        registration: str = "auto",
        critical_relays: Sequence[tuple[str, int | None]] = (),
        offline_after: float = 0.0,
    ) -> None:
        self.outbox = outbox or Outbox()
        self.review = registration == "review"
        self._critical_rules = list(critical_relays)
        self._critical: dict[tuple[str, int], bool] = {}
        self.offline_after = offline_after

    # -- devices and statuses ------------------------------------------------------------------

    async def devices(
        self,
        conn: asyncpg.Connection,
        statuses: Sequence[StatusRecord],
        seen: dict[str, float],
        touch: list[tuple[str, float]],
    ) -> list[asyncpg.Record]:
        """The batch's device rows: created, touched, their statuses applied; returns the rows of
        the devices with a status as the batch leaves them (statements.device_columns())."""
        if statuses and touch:
            # A replay touches every device of its messages; a status device's row is the status path's.
            status_ids = {s.device_id for s in statuses}
            touch = [t for t in touch if t[0] not in status_ids]
        touch = sorted(touch)
        created: list[str] = []
        stored: dict[str, _State] = {}
        if statuses:
            # Every device row this transaction writes is locked here, by one statement in one order
            # (LOCK_OR_CREATE), so two replicas writing the same devices never wait on each other in
            # a cycle. The touch below then writes only rows held already.
            first = dict(touch)
            for st in statuses:
                if st.device_id not in first or st.received_at < first[st.device_id]:
                    first[st.device_id] = st.received_at
            lock = sorted(first)
            new = await conn.fetch(LOCK_OR_CREATE, json_rows.rows([(d, first[d]) for d in lock]), not self.review)
            created.extend(r["device_id"] for r in new)
            stored = {r["device_id"]: _state(r) for r in await conn.fetch(LOCKED_DEVICES, lock)}
        changes: list[Change] = []
        history: list[HistoryRow] = []
        if touch:
            back = await conn.fetch(TOUCH, json_rows.rows(touch), not self.review)
            for r in back:
                if r["created"]:
                    created.append(r["device_id"])
                elif r["revived"]:
                    at = _from_epoch(r["seen"], UTC)
                    changes.append((r["device_id"], at, True, "message"))
                    history.append((r["device_id"], at, r["seen"], True, "message", None))
        rows = await self._statuses(conn, statuses, seen, stored, changes, history) if statuses else []
        # The events follow the ordered history, not the order in which replicas committed.
        await record_history(conn, history)
        await self._record(conn, changes, created)
        return rows

    async def _statuses(
        self,
        conn: asyncpg.Connection,
        statuses: Sequence[StatusRecord],
        seen: dict[str, float],
        stored: dict[str, _State],
        changes: list[Change],
        history: list[HistoryRow],
    ) -> list[asyncpg.Record]:
        per_device: dict[str, list[StatusRecord]] = defaultdict(list)
        for s in sorted(statuses, key=lambda s: (s.device_id, s.received_at)):
            per_device[s.device_id].append(s)
        walked: dict[str, tuple[_State, dict[str, Any], list[Change], list[HistoryRow]]] = {}
        others: dict[str, float | None] = {}
        for device, recs in per_device.items():
            newest_status = max(r.received_at for r in recs)
            other = seen.get(device)
            others[device] = other if other is not None and other > newest_status else None
            rows_of: list[HistoryRow] = []
            walked[device] = (*walk(device, recs, stored[device], others[device], rows_of), rows_of)
        # A stamped offline taken for a will is checked against the offlines the device said (rare:
        # one indexed read, only then): an older status delivered late is not a will.
        suspects = sorted(d for d, (*_, rows_of) in walked.items()
                          if any(h[4] == "will" for h in rows_of)
                          and any(r.stamped and not r.is_online for r in per_device[d]))  # fmt: skip
        if suspects:
            said = {r["device_id"]: r["said"] for r in await conn.fetch(SAID_OFFLINE, suspects)}
            for device in suspects:
                if device in said:
                    rows_of = []
                    walked[device] = (*walk(device, per_device[device], stored[device], others[device], rows_of,
                                            said[device]), rows_of)  # fmt: skip
        rows: list[tuple[Any, ...]] = []
        for device, (state, fields, device_changes, rows_of) in walked.items():
            history.extend(rows_of)
            changes.extend(device_changes)
            rows.append((device, state.is_online, state.status_ts, fields.get("ip"), fields.get("fw"),
                         fields.get("uptime"), state.last_seen, state.changed, state.cause))  # fmt: skip
        return list(await conn.fetch(UPDATE_STATUS, json_rows.rows(rows)))

    async def _record(self, conn: asyncpg.Connection, changes: list[Change], created: list[str]) -> None:
        opens: list[AlertSpec] = []
        resolves: list[tuple[str, str, str]] = []
        if changes:
            for _device, _at, online, cause in changes:
                metrics.CONNECTIVITY_CHANGES.labels(cause, "true" if online else "false").inc()
            # The net change per device decides its alert (offline, then back: resolved).
            final: dict[str, tuple[bool, str, datetime]] = {}
            for device, at, online, cause in changes:
                final[device] = (online, cause, at)
            resolves = [(d, OFFLINE, "") for d, (on, _, _) in final.items() if on]
            opens = [offline_alert(d, cause, at) for d, (on, cause, at) in final.items() if not on]
        if created and self.review:
            opens += [unknown_device_alert(d) for d in created]
        # A device is either back or offline: no key is both resolved and opened (one statement).
        await change_alerts(conn, self.outbox, opens, resolves)

    # -- critical relays -----------------------------------------------------------------------

    def is_critical(self, device: str, relay: int) -> bool:
        key = (device, relay)
        hit = self._critical.get(key)
        if hit is None:
            hit = any((idx is None or idx == relay) and fnmatch.fnmatchcase(device, glob)
                      for glob, idx in self._critical_rules)  # fmt: skip
            if len(self._critical) > 100_000:
                self._critical.clear()
            self._critical[key] = hit
        return hit

    async def relays(self, conn: asyncpg.Connection, relays: Sequence[RelayRecord]) -> None:
        """Before the relays upsert: lock the stored state of critical relays and notify real changes."""
        if not self._critical_rules:
            return
        critical = [r for r in relays if self.is_critical(r.device_id, r.relay_index)]
        if not critical:
            return
        keys = sorted({(r.device_id, r.relay_index) for r in critical})
        rows = await conn.fetch(LOCK_RELAYS, [k[0] for k in keys], [k[1] for k in keys])
        state: dict[tuple[str, int], tuple[bool, datetime]] = {
            (r["device_id"], r["relay_index"]): (r["state"], r["ts"]) for r in rows
        }
        events: list[Event] = []
        for r in sorted(critical, key=lambda r: (r.device_id, r.relay_index, r.ts)):
            key = (r.device_id, r.relay_index)
            have = state.get(key)
            if have is not None and r.ts <= have[1]:
                continue  # a redelivery or an older copy: the stored state is newer
            if have is not None and have[0] != r.state:
                events.append(Event(
                    r.device_id, "critical_relay", str(r.relay_index), "warning", r.ts,
                    f"relay {r.relay_index} turned {'on' if r.state else 'off'}",
                    {"relay_index": r.relay_index, "state": r.state, "previous_state": have[0],
                     "triggered_by": r.triggered_by, "ts": r.ts.isoformat()},
                ))  # fmt: skip
            state[key] = (r.state, r.ts)
        await emit_events(conn, self.outbox, events)


def offline_alert(device: str, cause: str, at: datetime) -> AlertSpec:
    text = {"timeout": "no message within the inactivity window", "will": "last will received (connection lost)"}
    return AlertSpec(device, OFFLINE, "", "warning", f"device offline: {text.get(cause, 'reported offline')}",
                     {"cause": cause, "since": at.isoformat()})  # fmt: skip


def unknown_device_alert(device: str) -> AlertSpec:
    return AlertSpec(device, UNKNOWN_DEVICE, "", "warning", f"unknown device {device!r} registered; review it",
                     {"accept": f"POST /devices/{device}/accept"})  # fmt: skip
