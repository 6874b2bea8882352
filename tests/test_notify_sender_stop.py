"""A sender stopped while a delivery is in flight hands its claimed rows back at once: the next
sender (a restart, another replica) delivers them without waiting for the lease to run out."""

from __future__ import annotations

from typing import Any

import asyncpg

from service.notify.outbox import WEBHOOK, Outbox
from service.notify.sender import Sender
from service.notify.webhook import WebhookChannel
from service.watch.alerts import open_alert
from tests.conftest import eventually
from tests.support.receiver import Receiver


def sender(engine: Any) -> Sender:
    # A lease of 2 x 20 + 5 s: far longer than the test, so only the release can make the row due.
    return Sender(engine, {WEBHOOK: WebhookChannel(None, 20.0)}, page=10, poll=0.1, max_age=600,
                  first_delay=0.05, max_delay=0.1, send_timeout=20.0)  # fmt: skip


async def test_stop_mid_send_releases_the_claimed_rows(
    db: asyncpg.Connection, engine: Any, receiver: Receiver
) -> None:
    outbox = Outbox([(WEBHOOK, receiver.url)])
    async with db.transaction():
        await open_alert(db, outbox, "D1", "anomaly", "temperature", "warning", "hot")
    receiver.hold()
    first = sender(engine)
    first.start()
    try:
        await eventually(lambda: receiver.waiting == 1)  # the webhook request is in flight, unanswered
        row = await db.fetchrow("SELECT attempts, next_attempt_at > now() AS leased FROM notifications")
        assert row is not None and (row["attempts"], row["leased"]) == (1, True)
    finally:
        await first.stop()
    row = await db.fetchrow("SELECT status, next_attempt_at <= now() AS due FROM notifications")
    assert row is not None and (row["status"], row["due"]) == ("pending", True)
    receiver.release()  # the cancelled request may still arrive: what counts is what the next sender does

    second = sender(engine)
    try:
        assert await second.deliver_once() == 1  # due now, not in 45 s
    finally:
        await second.stop()
    assert await db.fetchval("SELECT status FROM notifications") == "sent"
    assert receiver.keys()[-1] == receiver.keys()[0]  # the same notification (one Idempotency-Key)
