"""The outbox sender: delivers notification rows after their commit, at least once.

* Claims a bounded page of due rows with FOR UPDATE SKIP LOCKED and leases them (next_attempt_at
  moves past the send), so replicas never send the same row at once and a process that dies
  mid-send leaves the row to be retried once the lease is over.
* In row order per target: a page is sent in waves, each the next rows up to the first whose target
  is already in the wave, so a target's next row goes only once its last one was delivered. A
  channel takes a wave at once (MQTT: one pipelined write, the PUBACKs awaited together). A failure
  postpones the rest of its channel's page (one group per broker, per webhook URL); other groups go
  on. Retries back off exponentially (capped) and end NOTIFY_MAX_AGE_SECONDS after the row was
  written: then it is marked failed and counted.
* Per page one pooled connection and two statements (claim, mark); rows past their age are never
  claimed, and are marked failed at most once per poll interval. A rule firing's status is read
  off its rows (service/rules/queries.py): nothing else to settle.
* It reads pages from the table, never an in-memory queue: a dead webhook costs a row update per
  retry, not memory, and it runs on its own task and connection, off the ingestion path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from service import metrics
from service.notify.channels import Channel, Delivery
from service.notify.outbox import MQTT
from service.tasks import cancel_and_wait
from service.watch.sweep import raw_connection

log = logging.getLogger(__name__)

EXPIRE = """
UPDATE notifications SET status = 'failed', next_attempt_at = now(),
       last_error = coalesce(last_error, 'never delivered') || ' (gave up: older than NOTIFY_MAX_AGE_SECONDS)'
WHERE status = 'pending' AND next_attempt_at <= now() AND created_at < now() - make_interval(secs => $1)
RETURNING channel
"""

# Rows claimed by a sender that stopped before it finished with them: due again at once.
RELEASE = "UPDATE notifications SET next_attempt_at = now() WHERE id = ANY($1::bigint[]) AND status = 'pending'"

# One statement, so its own transaction. Rows past NOTIFY_MAX_AGE_SECONDS are left to EXPIRE.
CLAIM = """
UPDATE notifications n SET next_attempt_at = now() + make_interval(secs => $2), attempts = n.attempts + 1
WHERE n.id IN (SELECT id FROM notifications WHERE status = 'pending' AND next_attempt_at <= now()
                 AND created_at >= now() - make_interval(secs => $3)
               ORDER BY next_attempt_at, id LIMIT $1 FOR UPDATE SKIP LOCKED)
RETURNING n.id, n.event_id, n.channel, n.target, n.body, n.attempts, n.qos, n.retain
"""

MARK_SENT = "UPDATE notifications SET status = 'sent', sent_at = now() WHERE id = ANY($1::int8[])"

MARK_FAILED = """
UPDATE notifications n
SET last_error = u.error,
    status = CASE WHEN n.created_at < now() - make_interval(secs => $4) THEN 'failed' ELSE 'pending' END,
    next_attempt_at = now() + make_interval(secs => u.delay)
FROM unnest($1::int8[], $2::text[], $3::float8[]) AS u(id, error, delay)
WHERE n.id = u.id
RETURNING n.channel, n.status
"""


class Sender:
    def __init__(
        self,
        engine: AsyncEngine,
        channels: Mapping[str, Channel],
        *,
        page: int,
        poll: float,
        max_age: float,
        first_delay: float,
        max_delay: float,
        send_timeout: float,
    ) -> None:
        self._engine = engine
        self._channels = dict(channels)
        self.page = page
        self.poll = poll
        self.max_age = max_age
        self.first_delay = first_delay
        self.max_delay = max_delay
        # A claimed row is someone's for this long: longer than any send can take.
        self.lease = send_timeout * 2 + 5
        self._wake = asyncio.Event()
        self._claimed: set[int] = set()  # ids claimed and not yet marked sent or failed
        self._expire_due = 0.0  # loop time of the next EXPIRE
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """Deliver now rather than at the next poll (cheap: sets an event)."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="notify-sender")

    async def stop(self) -> None:
        await cancel_and_wait([self._task])
        self._task = None
        if self._claimed:
            # Stopped mid-send: hand the rows back now, not when their lease runs out, so the next
            # run (or another replica) delivers them at once. A failure here leaves the lease to expire.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2), raw_connection(self._engine) as conn:
                    await conn.execute(RELEASE, sorted(self._claimed))
            self._claimed = set()
        for channel in self._channels.values():
            with contextlib.suppress(Exception):
                await channel.close()

    async def _run(self) -> None:
        while True:
            try:
                handled = await self.deliver_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                metrics.ERRORS.labels("notify_sender").inc()
                log.warning("notification sender: %s: %s; trying again in %.1fs", exc.__class__.__name__, exc,
                            self.poll)  # fmt: skip
                handled = 0
            if handled >= self.page:
                continue  # more may be due
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll)
            self._wake.clear()

    def backoff(self, attempts: int) -> float:
        base = min(self.max_delay, self.first_delay * 2 ** min(attempts - 1, 30))
        return float(base * random.uniform(0.5, 1.0))  # spread retries of many rows apart

    async def deliver_once(self) -> int:
        """Deliver one page of due rows; returns how many rows were claimed."""
        async with raw_connection(self._engine) as conn:
            now = asyncio.get_running_loop().time()
            if now >= self._expire_due:
                self._expire_due = now + self.poll
                expired = await conn.fetch(EXPIRE, self.max_age)
                for r in expired:
                    metrics.NOTIFICATIONS_FAILED.labels(r["channel"]).inc()
            rows = await conn.fetch(CLAIM, self.page, self.lease, self.max_age)
            if not rows:
                return 0
            # The connection is kept for the marks: the sends take a page's round trip to the broker
            # (or a webhook's answer), and a second checkout would cost more than the rest.
            self._claimed = {r["id"] for r in rows}
            groups: dict[tuple[str, str], list[asyncpg.Record]] = defaultdict(list)
            for r in sorted(rows, key=lambda r: r["id"]):
                # Every MQTT row goes to the one broker: one group. Each webhook URL is its own.
                groups[(r["channel"], "" if r["channel"] == MQTT else r["target"])].append(r)
            outcomes = await asyncio.gather(*(self._send_group(g) for g in groups.values()))
            sent: list[int] = []
            failed: list[tuple[int, str, float]] = []
            for ok, bad in outcomes:
                sent.extend(ok)
                failed.extend(bad)
            if sent:
                await conn.execute(MARK_SENT, sent)
            if failed:
                result = await conn.fetch(MARK_FAILED, *[list(c) for c in zip(*failed, strict=True)], self.max_age)
                for r in result:
                    metrics.NOTIFICATION_ATTEMPTS_FAILED.labels(r["channel"]).inc()
                    if r["status"] == "failed":
                        metrics.NOTIFICATIONS_FAILED.labels(r["channel"]).inc()
            done = set(sent)
        self._claimed = set()
        by_channel: dict[str, int] = defaultdict(int)
        for r in rows:
            if r["id"] in done:
                by_channel[r["channel"]] += 1
        for channel, n in by_channel.items():
            metrics.NOTIFICATIONS_SENT.labels(channel).inc(n)
        return len(rows)

    async def _send_group(self, rows: list[Any]) -> tuple[list[int], list[tuple[int, str, float]]]:
        """One channel's rows (one broker, or one URL) in waves; see the module's docstring."""
        sent: list[int] = []
        failed: list[tuple[int, str, float]] = []
        name = rows[0]["channel"]
        channel = self._channels.get(name)
        down = None if channel is not None else f"channel {name!r} is not configured in this process"
        pos = 0
        while pos < len(rows) and down is None and channel is not None:
            wave: list[Any] = []
            targets: set[str] = set()
            while pos < len(rows) and rows[pos]["target"] not in targets:
                targets.add(rows[pos]["target"])
                wave.append(rows[pos])
                pos += 1
            items = [Delivery(r["target"], r["event_id"], r["body"], r["qos"], r["retain"]) for r in wave]
            try:
                errors = await channel.send_many(items)
            except Exception as exc:
                log.exception("notifications %s (%s): unexpected error", [r["id"] for r in wave], name)
                errors = [f"{exc.__class__.__name__}: {exc}"] * len(wave)
            for r, error in zip(wave, errors, strict=True):
                if error is None:
                    sent.append(r["id"])
                    continue
                failed.append((r["id"], error, self.backoff(r["attempts"])))
                if down is None:
                    down = error
                    log.info("notification %d (%s) not delivered: %s", r["id"], name, error)
        for r in rows[pos:]:
            failed.append((r["id"], down or "not sent", self.backoff(r["attempts"])))
        return sent, failed
