"""Other replicas' rule changes: NOTIFY from the writer's transaction, LISTEN here.

Each process decides from its own cache which reports are worth sending to the database (stage.py).
When another replica changed a device's rule state, that cache is behind: engine.apply() sends
`pg_notify` with the changed (rule, device) keys in the batch's transaction (delivered at commit),
and this listener makes those devices' values unknown in every other process, so their next reports
go to the database, which decides. Without a listening connection (lost, or not yet back), the
caches are rebuilt from the stored state when it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from service.tasks import cancel_and_wait

log = logging.getLogger(__name__)

CHANNEL = "autocore_rule_state"


def new_origin() -> str:
    """Names a rules instance in the payload's first line: its own notifications are not news to it."""
    return f"{os.getpid()}-{uuid.uuid4().hex[:8]}"

_RETRY = 2.0


def payloads(origin: str, keys: list[tuple[str, str]], limit: int = 7000) -> list[str]:
    """NOTIFY payloads (at most 8000 bytes each in PostgreSQL): the origin, then one `rule<TAB>device` a line."""
    out: list[str] = []
    lines = [origin]
    size = len(origin)
    for rule, device in keys:
        line = f"{rule}\t{device}"
        if size + len(line) + 1 > limit and len(lines) > 1:
            out.append("\n".join(lines))
            lines, size = [origin], len(origin)
        lines.append(line)
        size += len(line) + 1
    if len(lines) > 1:
        out.append("\n".join(lines))
    return out


class PeerListener:
    def __init__(
        self,
        engine: AsyncEngine,
        origin: str,
        changed: Callable[[list[tuple[str, str]]], None],
        resync: Callable[[], Awaitable[None]],
    ) -> None:
        self._engine = engine
        self._origin = origin
        self._changed = changed
        self._resync = resync  # after a gap in listening: rebuild the caches from the stored state
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="rules-peer-listener")

    async def stop(self) -> None:
        await cancel_and_wait([self._task])
        self._task = None

    async def _run(self) -> None:
        first = True
        while True:
            try:
                await self._listen(first)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("rules: listening for other replicas' changes failed (%s); retrying", exc)
            first = False
            self.listening.clear()
            await asyncio.sleep(_RETRY)

    async def _listen(self, first: bool) -> None:
        # A connection of the pool's, never handed back: a LISTEN must not stay on a pooled one.
        sa_conn = await self._engine.connect()
        try:
            conn: asyncpg.Connection = (await sa_conn.get_raw_connection()).driver_connection
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _c: lost.set())
            schema = await conn.fetchval("SELECT current_schema()")
            await conn.add_listener(f"{CHANNEL}:{schema}", self._notified)
            if not first:
                await self._resync()  # what changed while nobody listened
            self.listening.set()
            await lost.wait()
        finally:
            with contextlib.suppress(Exception):
                await sa_conn.invalidate()
            with contextlib.suppress(Exception):
                await sa_conn.close()

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        sender, _, body = payload.partition("\n")
        if sender == self._origin or not body:
            return
        keys = [(rule, device) for rule, _, device in (line.partition("\t") for line in body.split("\n"))]
        self._changed(keys)
