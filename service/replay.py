"""Replaying a dead letter: its stored bytes through the route again, the outcome recorded on the row.

One transaction per dead letter, holding the row's lock (two replays of one row cannot both run):
a replay that stores the message writes its rows and resolves the dead letter together (the row is
kept, with `resolved_at`); one that fails again records the new error. Nothing is acknowledged: the
message was acknowledged when it became a dead letter.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from service import metrics
from service.mqtt.message import InboundMessage
from service.records import DeadLetterRecord
from service.runtime import Runtime
from service.storage.writer import Pending, is_permanent

log = logging.getLogger(__name__)

# A database that stops answering must not hold the request (and the row's lock) for ever.
_TIMEOUT = 30.0
_MAX_ERROR_TEXT = 2_000  # as much of an error as a dead letter keeps

_LOCK = "SELECT topic, payload, qos, received_at, resolved_at FROM dead_letters WHERE id = $1 FOR UPDATE"
_RESOLVED = (
    "UPDATE dead_letters SET replays = replays + 1, last_replay_at = now(), last_replay_error = NULL, "
    "resolved_at = now() WHERE id = $1"
)
_FAILED = "UPDATE dead_letters SET replays = replays + 1, last_replay_at = now(), last_replay_error = $2 WHERE id = $1"


class NoDeadLetter(LookupError):
    """No dead letter has this id."""


class AlreadyResolved(Exception):
    """The dead letter was resolved already: its message is stored."""

    def __init__(self, resolved_at: datetime) -> None:
        super().__init__(f"resolved at {resolved_at.isoformat()}")
        self.resolved_at = resolved_at


@dataclass
class Outcome:
    id: int
    resolved: bool
    stage: str | None = None
    error: str | None = None


async def replay(runtime: Runtime, dead_letter_id: int) -> Outcome:
    async with asyncio.timeout(_TIMEOUT), runtime.engine.connect() as sa_conn:
        conn: asyncpg.Connection = (await sa_conn.get_raw_connection()).driver_connection
        async with conn.transaction():
            row = await conn.fetchrow(_LOCK, dead_letter_id)
            if row is None:
                raise NoDeadLetter(dead_letter_id)
            if row["resolved_at"] is not None:
                raise AlreadyResolved(row["resolved_at"])
            message = InboundMessage(
                row["topic"], bytes(row["payload"]), row["qos"], False, row["received_at"].timestamp()
            )
            route, records = await runtime.ingestor.pipeline.process(message)
            failed = next((r for r in records if isinstance(r, DeadLetterRecord)), None)
            if failed is None:
                try:
                    # A savepoint: if the database refuses the rows, the error is still recorded below.
                    async with conn.transaction():
                        await runtime.ingestor.writer.write_in(conn, [Pending(message, records, route)])
                        await conn.execute(_RESOLVED, dead_letter_id)
                except Exception as exc:
                    if not is_permanent(exc):
                        raise
                    reason = str(exc)[:_MAX_ERROR_TEXT]
                    failed = DeadLetterRecord(0.0, "", b"", 0, "storage", exc.__class__.__name__, reason, b"")
            if failed is None:
                outcome = Outcome(dead_letter_id, True)
            else:
                outcome = Outcome(dead_letter_id, False, failed.stage, f"{failed.error_class}: {failed.error_message}")
                await conn.execute(_FAILED, dead_letter_id, outcome.error)
    if outcome.resolved and runtime.fleet is not None:
        # Committed outside the writer: the fleet cache reads these devices back.
        try:
            await runtime.fleet.refresh(runtime.engine, {r[0] for r in records if not isinstance(r, DeadLetterRecord)})
        except Exception as exc:
            log.warning("fleet cache not refreshed after replay %d: %s", dead_letter_id, exc.__class__.__name__)
    metrics.DEAD_LETTER_REPLAYS.labels("resolved" if outcome.resolved else "failed").inc()
    log.info(
        "dead letter %d replayed on %r: %s",
        dead_letter_id,
        row["topic"],
        "stored" if outcome.resolved else outcome.error,
    )
    return outcome
