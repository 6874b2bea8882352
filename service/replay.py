"""Replaying a dead letter: its stored bytes through the route again, the outcome recorded on the row.

A replay that stores the message resolves the row (kept, with `resolved_at`) in the same transaction
as the message's rows; one that fails again records the new error. Nothing is acknowledged: a
dead letter was acknowledged when it was stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from service.mqtt.message import InboundMessage
from service.records import DeadLetterRecord
from service.runtime import Runtime
from service.storage.writer import Pending, is_permanent


@dataclass
class Outcome:
    id: int
    resolved: bool
    stage: str | None = None
    error: str | None = None


async def replay(runtime: Runtime, row: dict[str, Any]) -> Outcome:
    message = InboundMessage(row["topic"], bytes(row["payload"]), row["qos"], False, row["received_at"].timestamp())
    route, records = await runtime.ingestor.pipeline.process(message)
    failed = next((r for r in records if isinstance(r, DeadLetterRecord)), None)
    async with runtime.engine.connect() as sa_conn:
        conn: asyncpg.Connection = (await sa_conn.get_raw_connection()).driver_connection
        if failed is None:
            try:
                async with conn.transaction():
                    await runtime.ingestor.writer.write_in(conn, [Pending(message, records, route)])
                    await conn.execute(
                        "UPDATE dead_letters SET replays = replays + 1, last_replay_at = now(), "
                        "last_replay_error = NULL, resolved_at = now() WHERE id = $1",
                        row["id"],
                    )
                return Outcome(row["id"], True)
            except Exception as exc:
                if not is_permanent(exc):
                    raise
                failed = DeadLetterRecord(0.0, "", b"", 0, "storage", exc.__class__.__name__, str(exc), b"")
        error = f"{failed.error_class}: {failed.error_message}"
        await conn.execute(
            "UPDATE dead_letters SET replays = replays + 1, last_replay_at = now(), last_replay_error = $2 "
            "WHERE id = $1",
            row["id"],
            error,
        )
    return Outcome(row["id"], False, failed.stage, error)
