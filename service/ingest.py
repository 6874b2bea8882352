"""The data path, wired: transport -> pipeline -> writer -> acknowledgement.

The transport calls `submit()` synchronously for each PUBLISH (no task per message); one
worker runs the pipeline over the inbox and feeds the writer, which commits batches and then
acknowledges their messages. The inbox is bounded by the broker's Receive Maximum: it can hold
no more than the unacknowledged messages the broker lets us have.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import islice
from operator import attrgetter
from typing import cast

from service import metrics
from service.mqtt.message import InboundMessage
from service.pipeline import Pipeline
from service.records import DeadLetterRecord
from service.storage.writer import BatchWriter, Committed, Pending
from service.tasks import cancel_and_wait

log = logging.getLogger(__name__)

_message_of = attrgetter("message")
_route_of = attrgetter("route")


@dataclass
class IngestStats:
    messages_processed: int = 0  # committed (stored or dead-lettered) and acknowledged
    dead_letters: int = 0
    errors: int = 0
    last_message_time: float | None = None
    per_route: Counter[str] = field(default_factory=Counter)  # committed messages by route name


class Ingestor:
    def __init__(
        self,
        pipeline: Pipeline,
        writer: BatchWriter,
        *,
        ack: Callable[[Sequence[InboundMessage]], int],
        hold_reading: Callable[[bool], None] = lambda _hold: None,
        window: int = 65535,
    ) -> None:
        self.pipeline = pipeline
        self.writer = writer
        self._ack = ack
        # Flow control: at `window` unacknowledged messages, ask the transport to stop reading;
        # resume below three quarters of it.
        self.window = window
        self._resume_below = max(1, window * 3 // 4)
        self._hold_reading = hold_reading
        self._holding = False
        self.stats = IngestStats()
        self._inbox: deque[InboundMessage] = deque()
        self._arrived = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # First observer of the writer: a committed batch is acknowledged before anything else runs.
        writer.observe(self._committed)

    @property
    def in_flight(self) -> int:
        return len(self._inbox) + self.writer.backlog

    def submit(self, message: InboundMessage) -> None:
        inbox = self._inbox
        if not inbox:
            # A non-empty inbox is being worked through: the loop takes this one before it waits again.
            self._arrived.set()
        inbox.append(message)
        # Checked on every message, not only on the transition: a connection made while we were
        # holding (after a reconnect) must be held too.
        if len(inbox) + self.writer.backlog >= self.window:
            self._holding = True
            self._hold_reading(True)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._process_loop(), name="ingest-pipeline"),
            asyncio.create_task(self.writer.run(), name="ingest-writer"),
        ]

    async def drain(self, grace: float) -> bool:
        """Process and commit what was received so far; True if it all got committed in time."""
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not self._inbox and not self.writer.backlog:
                return True
            await asyncio.sleep(0.01)
        return not self._inbox and not self.writer.backlog

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks = []

    async def _process_loop(self) -> None:
        inbox, process, add = self._inbox, self.pipeline.process_batch, self.writer.add_many
        chunk = self.writer.batch_size
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            if not inbox:
                continue
            self.stats.last_message_time = inbox[-1].received_at
            while inbox:
                # What has arrived, a writer batch at most: batch-aware middleware (a rate limit on
                # Redis) costs one round trip per chunk. The inbox keeps them until they are
                # handed on, so they count as in flight meanwhile.
                batch = list(islice(inbox, chunk))
                results = await process(batch)
                if len(inbox) == len(batch):
                    inbox.clear()  # nothing arrived meanwhile (the common case): not one popleft each
                else:
                    for _ in range(len(batch)):
                        inbox.popleft()
                add([Pending(msg, records, route) for msg, (route, records) in zip(batch, results, strict=True)])
            metrics.LAST_MESSAGE.set(self.stats.last_message_time)
            metrics.IN_FLIGHT.set(self.in_flight)

    def _committed(self, committed: Committed) -> None:
        batch = committed.messages
        sent = self._ack(list(map(_message_of, batch)))
        # Counted per batch, not per message: C-level passes, then one increment per label.
        received: Counter[str | None] = Counter(map(_route_of, batch))
        dead: Counter[str] = Counter()
        if committed.records.dead:
            stored: Counter[str] = Counter()
            for p in batch:
                first = p.records[0] if p.records else None
                if type(first) is DeadLetterRecord:
                    dead[first.stage] += 1
                elif p.route is not None:
                    stored[p.route] += 1
        else:  # every message stored (a message without a route is a dead letter)
            stored = cast("Counter[str]", received)
        for route, n in received.items():
            metrics.MESSAGES_RECEIVED.labels(route or "unrouted").inc(n)
            self.stats.per_route[route or "unrouted"] += n
        for route, n in stored.items():
            metrics.MESSAGES_STORED.labels(route).inc(n)
        for stage, n in dead.items():
            metrics.DEAD_LETTERS.labels(stage).inc(n)
        if self._holding and self.in_flight < self._resume_below:
            self._holding = False
            self._hold_reading(False)
        n_dead = sum(dead.values())
        self.stats.messages_processed += len(batch)
        self.stats.dead_letters += n_dead
        self.stats.errors += n_dead
        metrics.IN_FLIGHT.set(self.in_flight)
        if sent < len(batch):
            log.debug(
                "%d committed messages belonged to a lost connection; the broker redelivers them",
                len(batch) - sent,
            )
