"""The fleet's current state in memory, from what this process committed: answers while the database is away.

* Filled from the database at start (`load()`), then fed by the writer's after-commit hook
  (`BatchWriter.observe`), which hands over the batch's records as the writer grouped and stored
  them. What is cheap and certain is applied from them with the rules of the statements that wrote
  them: a device's last_seen moves on with the writer's touches (the commit's own list, so at most
  once per DEVICE_LAST_SEEN_RESOLUTION), a relay takes only a newer change, the latest telemetry
  row is the one with the newest timestamp (the first stored of equal ones). Times are the
  microseconds `to_timestamp()` stores.
* A device's liveness state (online, why, status fields, review state) is decided by the fleet
  watch against the locked row (service/watch/liveness.py): wills, retained messages, revivals and
  timeouts. The cache does not guess it: the devices whose state a commit may have changed (a
  status in the batch, a device new to the cache or held offline and heard from, the sweep's
  timeouts, an accept) are read again from the database right after the commit, by one task, in
  commit order, one query per batch that has such devices: their devices rows only (their
  relays and telemetry of this process's commits are mirrored from the batch; reading those again
  too cost the mixed scenario 5 % of the service's CPU, and a telemetry probe per device). Rows
  read merge monotonically (last_seen, telemetry and relays only move forward), so a read that
  raced a later commit never moves the cache backwards.
* Bounded: at most FLEET_CACHE_MAX_DEVICES devices, each with its device row, its newest
  telemetry row and at most `MAX_RELAYS` relays (about 1 KB a device with 8 relays). A fleet
  beyond the bound makes the list unanswerable from the cache (503, not a partial list); a device
  beyond the relay bound likewise for its own answers.
* What it does not see: commits of other replicas (shared subscriptions), and dead-letter replays
  (they commit in a request's transaction: `refresh()` reloads their devices afterwards).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.storage import statements as sql
from service.storage.pgtime import from_micros, micros_of, pg_micros
from service.storage.writer import Committed
from service.tasks import cancel_and_wait

log = logging.getLogger(__name__)

MAX_RELAYS = 64
_BACKLOG_LIMIT = 10_000  # batches kept while loading; beyond, the load starts over
_LOAD_RETRY = 5.0

_LOAD_DEVICES = f"SELECT {sql.device_columns('d')} FROM devices d ORDER BY device_id LIMIT :n"
_LOAD_RELAYS = "SELECT device_id, relay_index, state, triggered_by, ts FROM relays"
# One index probe per device (the primary key is (device_id, ts)), not a scan of the table.
_LOAD_TELEMETRY = (
    "SELECT d.device_id, t.ts, t.temperature, t.humidity, t.voltage, t.memory_free, t.extra, t.received_at "
    "FROM devices d CROSS JOIN LATERAL (SELECT * FROM telemetry WHERE device_id = d.device_id "
    "ORDER BY ts DESC LIMIT 1) t"
)


class NotCached(Exception):
    """The cache cannot answer this truthfully (not filled yet, over its bound)."""


class _Device:
    __slots__ = (
        "cause",
        "device_id",
        "firmware_version",
        "first_seen",
        "ip_address",
        "is_online",
        "known",
        "last_seen",
        "overflow",
        "relays",
        "status_ts",
        "telemetry",
        "uptime",
    )  # fmt: skip

    def __init__(self, device_id: str, first_seen: int, last_seen: int) -> None:
        self.device_id = device_id
        self.first_seen = first_seen  # microseconds since 2000-01-01 UTC, as stored
        self.last_seen = last_seen
        self.is_online: bool | None = None
        self.status_ts: datetime | None = None
        self.ip_address: str | None = None
        self.firmware_version: str | None = None
        self.uptime: int | None = None
        self.known: bool | None = True
        self.cause: str | None = None  # why is_online last changed (connectivity_cause)
        # The newest row: a TelemetryRecord as committed (received_at epoch seconds, extra JSON text),
        # or the same fields as loaded (received_at a datetime, extra a dict).
        self.telemetry: tuple[Any, ...] | None = None
        self.relays: dict[int, tuple[bool, str | None, datetime]] = {}
        self.overflow = False  # more relays than MAX_RELAYS: its answers are not ours to give

    def row(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "is_online": self.is_online,
            "first_seen": from_micros(self.first_seen),
            "last_seen": from_micros(self.last_seen),
            "status_ts": self.status_ts,
            "ip_address": self.ip_address,
            "firmware_version": self.firmware_version,
            "uptime": self.uptime,
            "known": self.known,
            "connectivity_cause": self.cause,
        }


class FleetCache:
    def __init__(
        self,
        *,
        max_devices: int,
        engine: AsyncEngine | None = None,
        on_connectivity: Callable[[dict[str, Any]], None] = lambda _row: None,
    ) -> None:
        """`on_connectivity(row)`: a device's online state as the database now says, when a read-back
        finds it changed (a status, a will, a timeout, a revival): the live page's device events."""
        self.max_devices = max_devices
        self._engine = engine  # None: nothing is read again (a cache fed by hand, in unit tests)
        self._on_connectivity = on_connectivity
        self._stale: set[str] = set()  # devices to read again from the database
        self._refresher: asyncio.Task[None] | None = None
        self._refresh_failing = False
        self._devices: dict[str, _Device] = {}
        self._complete = True  # every device of the database is here
        self.loaded = False
        self.as_of: float | None = None  # epoch seconds of the newest commit applied (or of the load)
        self._backlog: list[Committed] | None = []
        self._restart_load = False
        self._task: asyncio.Task[None] | None = None

    # -- filling -----------------------------------------------------------------------------

    async def load(self, engine: AsyncEngine) -> None:
        """Fill from the database (once, at start; batches committed meanwhile are applied after)."""
        while True:
            self._restart_load = False
            devices = await self._read(engine)
            if self._restart_load:
                continue
            self._devices = devices
            backlog, self._backlog = self._backlog or [], None
            for committed in backlog:
                self._apply(committed)  # idempotent: what the snapshot holds already stays as it is
            self.loaded = True
            if self.as_of is None:
                self.as_of = time.time()
            log.info("fleet cache filled: %d devices%s", len(devices), "" if self._complete else " (over its bound)")
            return

    def start_loading(self, engine: AsyncEngine) -> None:
        """Load in the background, retrying while the database does not answer."""

        async def keep_trying() -> None:
            while True:
                try:
                    await self.load(engine)
                    return
                except Exception as exc:
                    log.warning("fleet cache not filled yet (%s: %s); retrying in %.0fs",
                                exc.__class__.__name__, exc, _LOAD_RETRY)  # fmt: skip
                    await asyncio.sleep(_LOAD_RETRY)

        self._task = asyncio.create_task(keep_trying(), name="fleet-cache-load")

    async def stop(self) -> None:
        await cancel_and_wait([self._refresher, self._task])

    async def _read(self, engine: AsyncEngine) -> dict[str, _Device]:
        devices: dict[str, _Device] = {}
        async with asyncio.timeout(120), engine.connect() as conn:
            # One snapshot for the three reads.
            await conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
            rows = (await conn.execute(text(_LOAD_DEVICES), {"n": self.max_devices + 1})).mappings().all()
            self._complete = len(rows) <= self.max_devices
            for r in rows[: self.max_devices]:
                d = _Device(r["device_id"], micros_of(r["first_seen"]), micros_of(r["last_seen"]))
                d.is_online, d.status_ts, d.ip_address = r["is_online"], r["status_ts"], r["ip_address"]
                d.firmware_version, d.uptime = r["firmware_version"], r["uptime"]
                d.known, d.cause = r["known"], r["connectivity_cause"]
                devices[d.device_id] = d
            for r in (await conn.execute(text(_LOAD_RELAYS))).mappings():
                dev = devices.get(r["device_id"])
                if dev is not None:
                    _set_relay(dev, r["relay_index"], (r["state"], r["triggered_by"], r["ts"]))
            for r in (await conn.execute(text(_LOAD_TELEMETRY))).mappings():
                dev = devices.get(r["device_id"])
                if dev is not None:
                    dev.telemetry = _loaded_telemetry(r)
            await conn.rollback()
        return devices

    async def refresh(self, engine: AsyncEngine, device_ids: Iterable[str], *, rows_only: bool = False) -> None:
        """Reload these devices (after a commit the writer did not make: a dead-letter replay). With
        `rows_only`, their devices rows alone: what the fleet watch decides (read_again()); their
        relays and telemetry of this process's commits are mirrored from the batch already."""
        ids = sorted(set(device_ids))
        if not ids or not self.loaded:
            return
        relays: Sequence[Any] = ()
        latest: Sequence[Any] = ()
        async with asyncio.timeout(10), engine.connect() as conn:
            where = " WHERE device_id = ANY(:ids)"
            rows = (await conn.execute(text(_LOAD_DEVICES.replace(" ORDER BY", where + " ORDER BY")),
                                       {"n": len(ids), "ids": ids})).mappings().all()  # fmt: skip
            if not rows_only:
                relays = (await conn.execute(text(_LOAD_RELAYS + where), {"ids": ids})).mappings().all()
                latest = (await conn.execute(text(_LOAD_TELEMETRY + " WHERE d.device_id = ANY(:ids)"),
                                             {"ids": ids})).mappings().all()  # fmt: skip
        changed = self._merge_devices(rows)
        for r in relays:
            d = self._devices.get(r["device_id"])
            if d is not None:
                have = d.relays.get(r["relay_index"])
                if have is None or have[2] < r["ts"]:
                    _set_relay(d, r["relay_index"], (r["state"], r["triggered_by"], r["ts"]))
        for r in latest:
            d = self._devices.get(r["device_id"])
            if d is not None and (d.telemetry is None or d.telemetry[1] < r["ts"]):
                d.telemetry = _loaded_telemetry(r)
        self._announce(changed)

    def _merge_devices(self, rows: Iterable[Any]) -> list[dict[str, Any]]:
        """Devices rows as stored (the columns of _LOAD_DEVICES) into the cache; returns the rows of
        the devices whose connectivity changed."""
        changed: list[dict[str, Any]] = []
        for r in rows:
            d = self._devices.get(r["device_id"])
            if d is None:
                if len(self._devices) >= self.max_devices:
                    self._complete = False
                    continue
                d = self._devices[r["device_id"]] = _Device(r["device_id"], 0, 0)
            # What only moves forward merges (a read that raced a later commit must not undo it);
            # the liveness state is the database's.
            was = d.is_online
            d.first_seen, d.last_seen = micros_of(r["first_seen"]), max(d.last_seen, micros_of(r["last_seen"]))
            d.is_online, d.status_ts, d.ip_address = r["is_online"], r["status_ts"], r["ip_address"]
            d.firmware_version, d.uptime = r["firmware_version"], r["uptime"]
            d.known, d.cause = r["known"], r["connectivity_cause"]
            if d.is_online is not None and d.is_online != was:
                changed.append(d.row())
        return changed

    def _announce(self, changed: list[dict[str, Any]]) -> None:
        for row in changed:
            try:
                self._on_connectivity(row)
            except Exception:  # a listener's bug must not stop the cache from following the database
                log.exception("fleet cache: connectivity listener failed")

    def read_again(self, device_ids: Iterable[str]) -> None:
        """Read these devices from the database soon (their state changed outside the batch rules
        mirrored here: a status, a revival, a timeout, an accept). One task, in order; non-blocking."""
        if self._engine is None:
            return
        self._stale.update(device_ids)
        if self._stale and (self._refresher is None or self._refresher.done()):
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_loop(), name="fleet-cache-refresh")

    @property
    def settled(self) -> bool:
        """Nothing left to read again (what tests wait for before comparing with the database)."""
        return not self._stale and (self._refresher is None or self._refresher.done())

    async def _refresh_loop(self) -> None:
        assert self._engine is not None
        while self._stale:
            ids, self._stale = self._stale, set()
            try:
                await self.refresh(self._engine, ids, rows_only=True)
            except Exception as exc:
                # The database is away: the cache answers with what it has; try again shortly.
                if not self._refresh_failing:
                    log.warning("fleet cache: %d devices not read again yet (%s)", len(ids), exc.__class__.__name__)
                self._refresh_failing = True
                self._stale |= ids
                await asyncio.sleep(_LOAD_RETRY)
                continue
            self._refresh_failing = False

    # -- the after-commit hook -----------------------------------------------------------------

    def observe(self, committed: Committed) -> None:
        """`BatchWriter.observe` hook: apply a committed batch (a few dictionary updates per message)."""
        self.as_of = time.time()
        backlog = self._backlog
        if backlog is not None:  # still loading
            if len(backlog) >= _BACKLOG_LIMIT:
                backlog.clear()
                self._restart_load = True
            backlog.append(committed)
            return
        self._apply(committed)

    def _device(self, device_id: str, seen: int) -> _Device | None:
        d = self._devices.get(device_id)
        if d is None:
            if len(self._devices) >= self.max_devices:
                self._complete = False
                return None
            d = self._devices[device_id] = _Device(device_id, seen, seen)
        return d

    def _apply(self, committed: Committed) -> None:
        g, touches = committed.records, committed.touched
        devices = self._devices
        # A status device's row as the batch wrote it came with the commit; without it (a batch
        # written outside the writer) the row is read again. Its relays and telemetry are mirrored below.
        changed = self._merge_devices(committed.devices)
        again: set[str] = {rec.device_id for rec in g.status} - {r["device_id"] for r in committed.devices}
        for device_id in again:
            if device_id not in devices:
                self._device(device_id, pg_micros(g.seen[device_id]))
        for device_id, seen in touches:  # the writer's last_seen touch
            us = pg_micros(seen)
            d = devices.get(device_id)
            if d is None:
                self._device(device_id, us)
                again.add(device_id)  # new: registered as known or for review, maybe alerted
            else:
                if d.last_seen < us:
                    d.last_seen = us
                if d.is_online is False:
                    again.add(device_id)  # heard from while offline: the watch may have revived it
        for t in g.telemetry:  # newest timestamp wins; of equal ones, the first stored stays
            d = devices.get(t.device_id)
            if d is not None and (d.telemetry is None or t.ts > d.telemetry[1]):
                d.telemetry = t
        if g.relays:  # UPSERT_RELAYS: a newer change only
            for device_id, index, ts, state, triggered_by in sql.newest_relays(g.relays):
                d = devices.get(device_id)
                if d is not None:
                    have = d.relays.get(index)
                    if have is None or have[2] < ts:
                        _set_relay(d, index, (state, triggered_by, ts))
        self._announce(changed)
        if again:
            self.read_again(again)

    # -- answers (the shapes of service/storage/queries.py) -------------------------------------

    def _ready(self) -> None:
        if not self.loaded:
            raise NotCached("the fleet cache is not filled yet (the database has not answered since start)")

    def device_page(
        self,
        *,
        online: bool | None,
        seen_since: datetime | None,
        q: str | None,
        sort: str,
        limit: int,
        offset: int,
        known: bool | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        self._ready()
        if known is not None:
            raise NotCached("the cache does not hold the review state (known=)")
        if not self._complete:
            raise NotCached(f"the fleet is larger than the cache (FLEET_CACHE_MAX_DEVICES={self.max_devices})")
        found: Iterable[_Device] = self._devices.values()
        if online is not None:
            found = [d for d in found if d.is_online is online]
        if seen_since is not None:
            since = micros_of(seen_since)
            found = [d for d in found if d.last_seen >= since]
        if q:
            needle = q.lower()
            found = [d for d in found if needle in d.device_id.lower()]
        # device_id compares byte-wise (collation "C"): code point order is UTF-8 byte order.
        if sort == "device_id":
            ordered = sorted(found, key=lambda d: d.device_id)
        elif sort == "last_seen":
            ordered = sorted(found, key=lambda d: (d.last_seen, d.device_id))
        else:
            ordered = sorted(found, key=lambda d: (-d.last_seen, d.device_id))
        return [d.row() for d in ordered[offset : offset + limit]], len(ordered)

    def _get(self, device_id: str) -> _Device | None:
        self._ready()
        d = self._devices.get(device_id)
        if d is None and not self._complete:
            raise NotCached(f"device {device_id!r} is not in the cache (FLEET_CACHE_MAX_DEVICES={self.max_devices})")
        if d is not None and d.overflow:
            raise NotCached(f"device {device_id!r} has more relays than the cache keeps ({MAX_RELAYS})")
        return d

    def device(self, device_id: str) -> dict[str, Any] | None:
        d = self._get(device_id)
        return d.row() if d is not None else None

    def latest_telemetry(self, device_id: str) -> dict[str, Any] | None:
        d = self._get(device_id)
        if d is None or d.telemetry is None:
            return None
        _device, ts, temperature, humidity, voltage, memory_free, extra, received_at = d.telemetry
        if isinstance(received_at, float):
            received_at = from_micros(pg_micros(received_at))
        return {
            "ts": ts,
            "temperature": temperature,
            "humidity": humidity,
            "voltage": voltage,
            "memory_free": memory_free,
            "extra": json.loads(extra) if isinstance(extra, str) else extra,
            "received_at": received_at,
        }

    def relays(self, device_id: str) -> list[dict[str, Any]]:
        d = self._get(device_id)
        if d is None:
            return []
        return [
            {"relay_index": i, "state": s, "triggered_by": t, "ts": ts} for i, (s, t, ts) in sorted(d.relays.items())
        ]

    @property
    def size(self) -> int:
        return len(self._devices)


def _loaded_telemetry(r: Any) -> tuple[Any, ...]:
    return (r["device_id"], r["ts"], r["temperature"], r["humidity"], r["voltage"], r["memory_free"], r["extra"],
            r["received_at"])  # fmt: skip


def _set_relay(d: _Device, index: int, value: tuple[bool, str | None, datetime]) -> None:
    if index not in d.relays and len(d.relays) >= MAX_RELAYS:
        d.overflow = True
        return
    d.relays[index] = value
