"""EventHub: committed batches -> numbered events -> a bounded queue per `/events` client.

* The writer calls `observe(batch)` after each commit. With nobody listening (and nobody for
  `resume_seconds`) it returns at once: one comparison per batch, nothing per message.
* Otherwise the batch is queued (a bounded number of batches) for the hub's own task, which turns
  messages into events outside the writer's task, at most `max_rate` message events per second
  (the rest are counted and announced in a `missed` event): the page never costs ingestion more
  than that.
* Each event gets an id `<stream>-<n>`, is kept in a ring of `ring_size` for `Last-Event-ID`
  resumes, and is offered to every client whose filter it matches. A client's queue holds at most
  `client_buffer` events: a client that does not keep up loses its oldest and is told how many
  (`event: missed`); one whose socket stops taking data is disconnected by the response's send
  timeout.
* `<stream>` changes whenever numbering restarts (service start, or after a spell with nobody
  listening, when nothing was recorded): a resume from another stream is told its gap is unknown.
* `device` events come from `device_changed(row)`, wired to the fleet cache's read-back: the
  online state the database holds after the fleet watch decided, never a status record's claim.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service.records import DeadLetterRecord
from service.tasks import cancel_and_wait
from service.web.filters import StreamFilter

if TYPE_CHECKING:
    from service.storage.writer import Committed, Pending

log = logging.getLogger(__name__)

HealthProbe = Callable[[], Awaitable[dict[str, Any]]]

# Health fields that change by themselves every second: a change of only these is not news.
_VOLATILE = ("uptime_seconds", "connection_uptime_seconds", "seconds_since_last_message")
# Committed messages waiting for the hub's task (whole batches); more means it cannot keep up. Bounds
# what the hub holds of the writer's batches (their payloads) whatever the message rate.
_INBOX_MESSAGES = 20_000
_ONLINE_LIMIT = 100_000  # devices whose last published state is remembered (for dedup)
_client_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    kind: str
    topic: str | None
    device_id: str | None
    outcome: str | None
    frame: bytes  # the encoded SSE event, shared by every client that gets it


def frame(kind: str, data: dict[str, Any], event_id: str | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    # json.dumps escapes newlines inside strings, so the data is always one line.
    return f"{head}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def missed_frame(count: int | None, reason: str) -> bytes:
    return frame("missed", {"count": count, "reason": reason})


class Client:
    """One `/events` connection: its filter and a bounded queue of encoded events."""

    def __init__(self, stream_filter: StreamFilter, buffer: int) -> None:
        self.id = next(_client_ids)
        self.filter = stream_filter
        self.connected_at = time.time()
        self._buffer = buffer
        self._queue: deque[bytes] = deque()
        self._notices: list[bytes] = []
        self.dropped = 0  # events lost since the last delivery (announced with the next one)
        self.dropped_total = 0
        self.delivered = 0
        self.closed = False
        self._wake = asyncio.Event()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def offer(self, entry: Entry) -> None:
        if not self.filter.matches(entry.kind, entry.topic, entry.device_id, entry.outcome):
            return
        if len(self._queue) >= self._buffer:
            self._queue.popleft()
            self.dropped += 1
            self.dropped_total += 1
        self._queue.append(entry.frame)
        self._wake.set()

    def notice(self, encoded: bytes) -> None:
        """A frame for this client only, sent before its queued events (hello, missed, health)."""
        self._notices.append(encoded)
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def next_chunk(self) -> bytes:
        """Everything queued, as one chunk; b"" once the client is closed."""
        while not (self._queue or self._notices or self.dropped):
            if self.closed:
                return b""
            self._wake.clear()
            await self._wake.wait()
        parts = self._notices
        self._notices = []
        if self.dropped:
            parts.append(missed_frame(self.dropped, "slow_client"))
            self.dropped = 0
        parts.extend(self._queue)
        self.delivered += len(self._queue)
        self._queue.clear()
        return b"".join(parts)


class EventHub:
    def __init__(
        self,
        *,
        topic_prefix: str,
        max_clients: int = 50,
        ring_size: int = 10_000,
        client_buffer: int = 1_000,
        max_rate: float = 1_000.0,
        payload_max_bytes: int = 2_048,
        resume_seconds: float = 60.0,
        health_interval: float = 2.0,
        heartbeat: float = 15.0,
        health: HealthProbe | None = None,
    ) -> None:
        self.max_clients = max_clients
        self.client_buffer = client_buffer
        self.max_rate = max_rate
        self.payload_max = payload_max_bytes
        self.resume_seconds = resume_seconds
        self.health_interval = health_interval
        self.heartbeat = heartbeat
        self._device_level = topic_prefix.count("/") + 1
        self._prefix = topic_prefix + "/"
        self._health = health
        self.clients: dict[int, Client] = {}
        self._ring: deque[Entry] = deque(maxlen=ring_size)
        self._seq = 0
        self.stream = secrets.token_hex(4)
        self._idle_until = 0.0  # monotonic: record until then although nobody listens
        self._inbox: deque[list[Pending]] = deque()
        self._inbox_size = 0
        self._inbox_lost = 0
        self._wake = asyncio.Event()
        self._online: dict[str, bool] = {}  # device -> online, as the events last said
        self._budget = max_rate
        self._window_end = 0.0
        self._rate_skipped = 0
        self._health_entry: Entry | None = None
        self._health_seen: dict[str, Any] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.published = 0

    # -- life -------------------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(), name="events-fanout")]
        if self._health is not None and self.health_interval > 0:
            self._tasks.append(asyncio.create_task(self._health_loop(), name="events-health"))

    async def stop(self) -> None:
        for client in list(self.clients.values()):
            client.close()
        await cancel_and_wait(self._tasks)
        self._tasks = []

    @property
    def recording(self) -> bool:
        return bool(self.clients) or time.monotonic() < self._idle_until

    # -- clients ----------------------------------------------------------------------------------

    def subscribe(self, stream_filter: StreamFilter, last_event_id: str | None = None) -> Client | None:
        """A new client (None when `max_clients` are connected already), with what it missed."""
        if len(self.clients) >= self.max_clients:
            return None
        if not self.recording:
            self._restart_numbering()
        client = Client(stream_filter, self.client_buffer)
        self.clients[client.id] = client
        client.notice(frame("hello", {"stream": self.stream, "heartbeat": self.heartbeat, "client": client.id}))
        if last_event_id:
            self._resume(client, last_event_id)
        elif self._health_entry is not None and stream_filter.matches("health", None, None, None):
            client.notice(self._health_entry.frame)  # the current health, without waiting for a change
        return client

    def unsubscribe(self, client: Client) -> None:
        client.close()
        if self.clients.pop(client.id, None) is not None and not self.clients:
            self._idle_until = time.monotonic() + self.resume_seconds

    def _resume(self, client: Client, last_event_id: str) -> None:
        stream, _, number = last_event_id.strip().rpartition("-")
        if stream != self.stream or not number.isdigit():
            client.notice(missed_frame(None, "stream_restarted"))
            return
        last = int(number)
        oldest = self._ring[0].seq if self._ring else self._seq + 1
        if last + 1 < oldest:
            # Counted over every kind: the filter may have wanted fewer of them.
            client.notice(missed_frame(oldest - last - 1, "beyond_resume_buffer"))
        for entry in itertools.islice(self._ring, max(0, last + 1 - oldest), None):
            client.offer(entry)

    def _restart_numbering(self) -> None:
        # Nothing was recorded while nobody listened: resumes from before must hear so.
        self.stream = secrets.token_hex(4)
        self._ring.clear()
        self._online.clear()
        self._health_seen = None

    # -- publishing -------------------------------------------------------------------------------

    def observe(self, committed: Committed) -> None:
        """The writer's after-commit hook: O(1), never blocks."""
        if not self.clients and time.monotonic() >= self._idle_until:
            return
        batch = committed.messages
        while self._inbox and self._inbox_size + len(batch) > _INBOX_MESSAGES:
            lost = len(self._inbox.popleft())
            self._inbox_size -= lost
            self._inbox_lost += lost
        self._inbox.append(batch)
        self._inbox_size += len(batch)
        self._wake.set()

    def publish(
        self,
        kind: str,
        data: dict[str, Any],
        *,
        topic: str | None = None,
        device_id: str | None = None,
        outcome: str | None = None,
    ) -> Entry:
        self._seq += 1
        entry = Entry(self._seq, kind, topic, device_id, outcome, frame(kind, data, f"{self.stream}-{self._seq}"))
        self._ring.append(entry)
        self.published += 1
        for client in self.clients.values():
            client.offer(entry)
        return entry

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._inbox:
                batch = self._inbox.popleft()
                self._inbox_size -= len(batch)
                try:
                    self._fan_out(batch)
                except Exception:  # a bug here must not end the stream for good
                    log.exception("events: could not publish a batch")
                await asyncio.sleep(0)  # let ingestion run between batches
            if self._inbox_lost:
                self.publish("missed", {"count": self._inbox_lost, "reason": "hub_behind"})
                self._inbox_lost = 0

    def _fan_out(self, batch: Sequence[Pending]) -> None:
        now = time.monotonic()
        if now >= self._window_end:
            if self._rate_skipped:
                self.publish("missed", {"count": self._rate_skipped, "reason": "rate_limit"})
                self._rate_skipped = 0
            self._window_end = now + 1.0
            self._budget = self.max_rate
        for pending in batch:
            if self._budget >= 1:
                self._budget -= 1
                self._message(pending)
            else:
                self._rate_skipped += 1

    def _device_of(self, topic: str) -> str | None:
        if not topic.startswith(self._prefix):
            return None
        levels = topic.split("/")
        return levels[self._device_level] if len(levels) > self._device_level else None

    def _message(self, pending: Pending) -> None:
        msg = pending.message
        records = pending.records
        dead = records[0] if records and type(records[0]) is DeadLetterRecord else None
        device_id = self._device_of(msg.topic)
        payload = msg.payload[: self.payload_max]
        try:
            text: str | None = payload.decode()
        except UnicodeDecodeError:
            text = None
        data: dict[str, Any] = {
            "t": msg.received_at,
            "topic": msg.topic,
            "route": pending.route,
            "device_id": device_id,
            "outcome": "dead_letter" if dead is not None else "stored",
            "qos": msg.qos,
            "size": len(msg.payload),
            "payload": text,
            "truncated": len(msg.payload) > self.payload_max,
        }
        if dead is not None:
            data["stage"] = dead.stage
            data["error"] = dead.error_message[:300]
        self.publish("message", data, topic=msg.topic, device_id=device_id, outcome=data["outcome"])

    def device_changed(self, row: dict[str, Any]) -> None:
        """A device's online state as the database decided it (the fleet cache's read-back after a
        status, will, timeout or revival): not what one status record claimed, which the fleet
        watch may have overruled (older than what is stored, a retained status, an expired one)."""
        if not self.recording:
            return
        device_id, online = row["device_id"], row["is_online"]
        if self._online.get(device_id) == online:
            return
        if len(self._online) >= _ONLINE_LIMIT:
            self._online.clear()
        self._online[device_id] = online
        status_ts = row.get("status_ts")
        self.publish(
            "device",
            {
                "device_id": device_id,
                "is_online": online,
                "ts": status_ts.isoformat() if status_ts is not None else None,
                "cause": row.get("connectivity_cause"),
                "ip_address": row.get("ip_address"),
                "firmware_version": row.get("firmware_version"),
            },
            device_id=device_id,
        )

    # -- health -----------------------------------------------------------------------------------

    async def _health_loop(self) -> None:
        assert self._health is not None
        last_count: int | None = None
        last_at = time.monotonic()
        while True:
            await asyncio.sleep(self.health_interval)
            if not self.clients:
                last_count = None
                continue
            try:
                body = await self._health()
            except Exception:
                log.exception("events: health check failed")
                continue
            now = time.monotonic()
            count = body.get("messages_processed")
            if isinstance(count, int) and last_count is not None and now > last_at:
                body["messages_per_second"] = round((count - last_count) / (now - last_at), 1)
            else:
                body["messages_per_second"] = None
            last_count, last_at = count if isinstance(count, int) else None, now
            seen = {k: v for k, v in body.items() if k not in _VOLATILE}
            if seen != self._health_seen:
                self._health_seen = seen
                self._health_entry = self.publish("health", body)
