"""The inactivity sweep: one indexed statement per period marks silent devices offline (cause `timeout`).

It never runs while the broker link is down, nor before the link has been up for one full window
(after a restart or a broker outage every device looks silent; give each a window to speak), nor
while the writer cannot commit (last_seen would be stale). Several replicas may sweep at once:
rows are claimed with FOR UPDATE SKIP LOCKED and the condition is checked again on the locked row,
so a device is timed out once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from service import metrics
from service.mqtt.transport import ConnectionState
from service.notify.outbox import Outbox
from service.storage import json_rows
from service.tasks import cancel_and_wait
from service.watch import history
from service.watch.alerts import open_alerts
from service.watch.liveness import offline_alert

log = logging.getLogger(__name__)

_PAGE = 10_000  # devices timed out per statement (a whole fleet at once would be one huge transaction)

SWEEP = """
WITH gone AS (
    UPDATE devices d SET is_online = false, state_changed_at = d.last_seen, connectivity_cause = 'timeout'
    WHERE d.device_id IN (
            SELECT device_id FROM devices
            WHERE is_online IS NOT FALSE AND last_seen < to_timestamp($1)
            ORDER BY last_seen LIMIT $2 FOR UPDATE SKIP LOCKED)
      AND d.is_online IS NOT FALSE AND d.last_seen < to_timestamp($1)
    RETURNING d.device_id, d.last_seen
), ev AS (
    -- The history the events are derived from (service/watch/history.py; recomputed below).
    INSERT INTO connectivity_history (device_id, at, received_at, is_online, cause)
    SELECT device_id, $3::timestamptz, $3::timestamptz, false, 'timeout' FROM gone
    ON CONFLICT DO NOTHING
)
SELECT device_id, last_seen FROM gone
"""

# The timed-out devices' events from their history (the rows are locked by the sweep).
RECOMPUTE = history.RECOMPUTE


@contextlib.asynccontextmanager
async def raw_connection(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
    async with engine.connect() as sa_conn:
        raw = await sa_conn.get_raw_connection()
        conn: asyncpg.Connection = raw.driver_connection
        yield conn


class Sweeper:
    def __init__(
        self,
        engine: AsyncEngine,
        outbox: Outbox,
        *,
        offline_after: float,
        interval: float,
        connection: Callable[[], ConnectionState | None],
        writer_healthy: Callable[[], bool],
        on_notified: Callable[[], None] = lambda: None,
        on_changed: Callable[[list[str]], None] = lambda _ids: None,
    ) -> None:
        self._engine = engine
        self._outbox = outbox
        self.offline_after = offline_after
        self.interval = interval
        self._connection = connection
        self._writer_healthy = writer_healthy
        self._on_notified = on_notified
        self._on_changed = on_changed  # device ids timed out, after their commit
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.offline_after > 0:
            self._task = asyncio.create_task(self._run(), name="liveness-sweep")

    async def stop(self) -> None:
        await cancel_and_wait([self._task])
        self._task = None

    def gate(self, now: float) -> str | None:
        """Why a sweep must not run now (None: it may)."""
        state = self._connection()
        if state is None or not state.connected or state.connected_since is None:
            return "broker_disconnected"
        if now - state.connected_since < self.offline_after:
            return "window_not_full"
        if not self._writer_healthy():
            return "writer_failing"
        return None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            reason = self.gate(time.time())
            if reason is not None:
                metrics.SWEEPS_SKIPPED.labels(reason).inc()
                continue
            try:
                await self.sweep_once()
            except Exception:
                metrics.ERRORS.labels("liveness_sweep").inc()
                log.exception("inactivity sweep failed; trying again in %.1fs", self.interval)

    async def sweep_once(self, now: float | None = None) -> int:
        """Time out the devices silent for a full window; returns how many."""
        now = time.time() if now is None else now
        total = 0
        async with raw_connection(self._engine) as conn:
            while True:
                started = time.perf_counter()
                async with conn.transaction():
                    # One timestamp for the history row, its recompute and the alert: to_timestamp()
                    # of the float could round to the next microsecond, and the recompute, starting
                    # after the row, would then never write its event.
                    at = datetime.fromtimestamp(now, UTC)
                    rows = await conn.fetch(SWEEP, now - self.offline_after, _PAGE, at)
                    if rows:
                        ids = sorted(r["device_id"] for r in rows)
                        await conn.fetchrow(RECOMPUTE, json_rows.rows([(i, at) for i in ids]))
                    await open_alerts(conn, self._outbox, [offline_alert(r["device_id"], "timeout", at) for r in rows])
                metrics.SWEEP_SECONDS.observe(time.perf_counter() - started)
                if rows:
                    self._on_changed([r["device_id"] for r in rows])
                total += len(rows)
                if len(rows) < _PAGE:
                    break
        if total:
            metrics.CONNECTIVITY_CHANGES.labels("timeout", "false").inc(total)
            log.info("%d devices timed out (silent for %.0fs)", total, self.offline_after)
            if self._outbox.take_written():
                self._on_notified()
        return total
