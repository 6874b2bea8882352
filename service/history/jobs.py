"""The history jobs inside the service: partition upkeep and retention, and the rollup sweep.

Each runs on a connection of its own under a session advisory lock taken with
pg_try_advisory_lock: with several replicas, one runs a job while the others skip that round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.config import Settings
from service.history import partitions, retention, rollups
from service.tasks import cancel_and_wait

log = logging.getLogger(__name__)

# Any constants, distinct from the migration lock (service/storage/migrate.py).
MAINTENANCE_LOCK = 0x6175746F636F0001
ROLLUP_LOCK = 0x6175746F636F0002
# Partition upkeep runs at least this often even when retention runs more rarely: the partitions
# made AHEAD_DAYS ahead must never run out.
_MAX_UPKEEP_INTERVAL = 3600.0


@contextlib.asynccontextmanager
async def exclusive(engine: AsyncEngine, key: int) -> AsyncIterator[AsyncConnection | None]:
    """A connection holding the advisory lock `key`, or None when another process holds it."""
    async with engine.connect() as conn:
        got = (await conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key})).scalar()
        await conn.commit()
        if not got:
            yield None
            return
        try:
            yield conn
        finally:
            with contextlib.suppress(Exception):
                if conn.in_transaction():
                    await conn.rollback()
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                await conn.commit()


async def maintain(engine: AsyncEngine, settings: Settings) -> retention.Report | None:
    """Partitions ahead, then retention; None when another replica is doing it."""
    async with exclusive(engine, MAINTENANCE_LOCK) as conn:
        if conn is None:
            log.debug("maintenance: another replica holds the lock")
            return None
        await partitions.ensure(conn)
        await partitions.summarize(conn)
        return await retention.run(conn, settings)


async def roll_up(
    engine: AsyncEngine, settings: Settings, summarized: dict[str, int] | None = None
) -> rollups.Sweep | None:
    """One rollup sweep, after summarizing the BRIN ranges filled since the last one (the sweep
    finds its rows through them); None when another replica is sweeping. `summarized`: how far
    each index was looked at, kept by the caller (partitions.summarize_filled)."""
    async with exclusive(engine, ROLLUP_LOCK) as conn:
        if conn is None:
            return None
        await partitions.summarize_filled(conn, {} if summarized is None else summarized)
        return await rollups.sweep(conn, settings.rollup_settle_seconds)


class HistoryJobs:
    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self._tasks: list[asyncio.Task[None]] = []
        self.last_error: str | None = None
        self._summarized: dict[str, int] = {}  # BRIN index -> block up to which its ranges were summarized

    async def start(self) -> None:
        """One maintenance pass now (partitions exist before the first message), then the loops."""
        await self._guarded("maintenance", lambda: maintain(self.engine, self.settings))
        interval = min(self.settings.retention_interval_seconds, _MAX_UPKEEP_INTERVAL)
        self._tasks.append(
            asyncio.create_task(self._every(interval, "maintenance", self._maintain), name="history-maintenance")
        )
        if self.settings.rollup_interval_seconds > 0:
            self._tasks.append(
                asyncio.create_task(
                    self._every(self.settings.rollup_interval_seconds, "rollups", self._roll_up, first=0.0),
                    name="history-rollups",
                )
            )

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks = []

    async def _maintain(self) -> None:
        await maintain(self.engine, self.settings)

    async def _roll_up(self) -> None:
        await roll_up(self.engine, self.settings, self._summarized)

    async def _every(
        self, interval: float, name: str, job: Callable[[], Awaitable[object]], first: float | None = None
    ) -> None:
        await asyncio.sleep(interval if first is None else first)
        while True:
            await self._guarded(name, job)
            await asyncio.sleep(interval)

    async def _guarded(self, name: str, job: Callable[[], Awaitable[object]]) -> None:
        # A failed round (the database away) is logged and retried next round; it never stops
        # ingestion or the service.
        try:
            await job()
            self.last_error = None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.last_error = f"{name}: {exc.__class__.__name__}"
            log.warning("%s failed: %s: %s", name, exc.__class__.__name__, exc)
