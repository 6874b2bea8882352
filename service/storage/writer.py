"""BatchWriter: collects processed messages, commits them in batches, then lets them be acknowledged.

* Group commit: an idle writer commits what it has at once; while a commit is in flight, arrivals
  gather and go in the next one (at most `writer_batch_size`), so batches grow with the load by
  themselves. `writer_linger_ms` (default 0) makes the writer wait that long after a batch's first
  message for more (fewer, larger transactions at low rates, for latency).
* One transaction in flight at a time, on the writer's own connection: the order of commits is the
  order of arrival, which keeps per-device state, connectivity and acknowledgements in order.
* One transaction per batch; after COMMIT returned, each after-commit observer (`observe()`) is
  called with the batch, in the order they were registered. The ingestor registers first, so a
  batch is acknowledged before anything else reacts to it; an observer that raises is logged and
  counted and cannot keep the others from running.
* Transient failure (connection lost, server restarting, serialization): the batch is retried
  with backoff and stays unacknowledged; `healthy` is False meanwhile.
* Permanent failure (the data itself is refused): the batch is split in halves until the
  refused messages are alone; those become dead letters (stage "storage"), the rest commit. A
  dead letter the database refuses too is logged (payload included) and dropped, not retried.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service import metrics
from service.errors import StorageRejected
from service.mqtt.backoff import full_jitter
from service.mqtt.message import InboundMessage
from service.pipeline import dead_letter
from service.records import Record
from service.rules import engine as rules_engine
from service.stats.store import SMALL_BATCH, Folded, Stats, StatsRaced
from service.storage import json_rows
from service.storage import statements as sql
from service.watch.liveness import Watch

log = logging.getLogger(__name__)

# SQLSTATE classes that mean "this data can never be stored": data exception, integrity
# violation, program limit (e.g. a value too large). Everything else is retried.
_PERMANENT_CLASSES = ("22", "23", "54")
_MAX_LAST_SEEN_CACHE = 200_000
_TRANSACTION_TIMEOUT = 30.0
_LOGGED_PAYLOAD = 4096  # bytes of a dropped message's payload put in the log
_STATS_RACES = 5  # attempts of a batch whose new stats rows another writer keeps creating first


@dataclass(slots=True)
class Pending:
    message: InboundMessage
    records: Sequence[Record]
    route: str | None


@dataclass(slots=True, frozen=True)
class Committed:
    """A committed batch as its observers see it: the messages, and what the writer made of them (so
    that no observer groups the batch again). Read only: every observer is given the same one."""

    messages: list[Pending]
    records: sql.Grouped  # the records as stored, by table (a refused message's: its dead letter)
    touched: list[tuple[str, float]]  # (device, seen) of every last_seen touch the commit wrote
    # The devices rows of the batch's status devices as it left them (statements.device_columns()).
    devices: Sequence[Any] = ()

    @classmethod
    def of(cls, messages: list[Pending]) -> Committed:
        """As committed by a writer that had written nothing before (tests, benchmarks)."""
        g = sql.group([(p.message.received_at, p.records) for p in messages])
        return cls(messages, g, last_seen_touches(g, {}, 0.0))


def last_seen_touches(g: sql.Grouped, written: dict[str, float], resolution: float) -> list[tuple[str, float]]:
    """Devices whose last_seen must be written, given the last_seen `written` so far: new ones, and
    any that moved on by `resolution`.

    Devices with a status in the batch are left out: the status upsert writes their row (and creates
    it) anyway, and one update per row and batch is cheaper than two.
    """
    status = {s.device_id for s in g.status}
    out = []
    for device, seen in g.seen.items():
        if device in status:
            continue
        before = written.get(device)
        if before is None or seen - before >= resolution:
            out.append((device, seen))
    return out


CommitObserver = Callable[[Committed], None]


class ValueRefused(Exception):
    """A value its column cannot hold, found while encoding rows for COPY (before PostgreSQL sees them)."""


def driver_error(exc: BaseException) -> BaseException:
    """The driver's own error behind SQLAlchemy's wrapper (or its adapter's), else `exc` itself."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None:
        exc = exc.orig
    cause = exc.__cause__
    if not isinstance(exc, asyncpg.PostgresError) and isinstance(cause, asyncpg.PostgresError):
        exc = cause
    return exc


def is_permanent(exc: BaseException) -> bool:
    if isinstance(exc, ValueRefused):
        return True
    exc = driver_error(exc)
    state = getattr(exc, "sqlstate", None) or ""
    return isinstance(exc, asyncpg.PostgresError) and state[:2] in _PERMANENT_CLASSES


class BatchWriter:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        batch_size: int,
        linger: float,
        retry_first_delay: float = 0.05,
        retry_max_delay: float = 30.0,
        last_seen_resolution: float = 1.0,
        on_batch: Callable[[int, float], None] = lambda _size, _seconds: None,
        watch: Watch | None = None,
        stats: Stats | None = None,
    ) -> None:
        self._engine = engine
        self.batch_size = batch_size
        self.linger = linger
        self._retry_first = retry_first_delay
        self._retry_max = retry_max_delay
        self._resolution = last_seen_resolution
        self._observers: list[CommitObserver] = []
        # (records, touches) of each transaction the batch being committed took (more than one
        # when refused messages were split off)
        self._parts: list[tuple[sql.Grouped, list[tuple[str, float]], list[asyncpg.Record]]] = []
        self._pending: list[Pending] = []
        self._first_at = 0.0
        self._nonempty = asyncio.Event()
        self._full = asyncio.Event()
        # device -> last_seen we committed: a device is written at most once per resolution.
        self._last_seen: dict[str, float] = {}
        self._sa_conn: AsyncConnection | None = None
        self._raw: asyncpg.Connection | None = None
        self.healthy = True
        self.last_error: str | None = None
        self.in_commit = 0
        self._on_batch = on_batch  # (messages, seconds) per committed transaction
        # Liveness, alerts and critical relays, derived in the batch's own transaction.
        self._watch = watch or Watch()
        # Statistics and anomalies of the inserted telemetry, in the same transaction (None: off).
        self._stats = stats

    def observe(self, observer: CommitObserver) -> None:
        """Call `observer(committed)` after every commit, after the observers registered before it.

        Observers run on the writer's task between two commits: each must be cheap (hand work to a
        task of its own) and must not block.
        """
        self._observers.append(observer)

    @property
    def backlog(self) -> int:
        """Messages waiting for, or inside, a commit (all unacknowledged)."""
        return len(self._pending) + self.in_commit

    def add(self, item: Pending) -> None:
        self.add_many([item])

    def add_many(self, items: list[Pending]) -> None:
        if not items:
            return
        if not self._pending:
            self._first_at = time.monotonic()
            self._nonempty.set()
        self._pending.extend(items)
        if len(self._pending) >= self.batch_size:
            self._full.set()

    async def run(self) -> None:
        while True:
            await self._nonempty.wait()
            if self.linger > 0:
                wait = self._first_at + self.linger - time.monotonic()
                if wait > 0 and len(self._pending) < self.batch_size:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._full.wait(), timeout=wait)
            # Group commit: whatever arrived while the previous commit was in flight goes now.
            await self.flush_once()

    async def flush_once(self) -> None:
        batch = self._pending[: self.batch_size]
        del self._pending[: self.batch_size]
        if self._pending:
            self._first_at = time.monotonic()
        else:
            self._nonempty.clear()
        if len(self._pending) < self.batch_size:
            self._full.clear()
        if batch:
            self.in_commit = len(batch)
            try:
                await self._commit_with_retry(batch)
            finally:
                self.in_commit = 0
            self._notify(self._committed(batch))

    def _committed(self, batch: list[Pending]) -> Committed:
        parts, self._parts = self._parts, []
        if len(parts) == 1:
            return Committed(batch, *parts[0])
        # Split around refused messages (rare): their dead letters replaced their records.
        g = sql.group([(p.message.received_at, p.records) for p in batch])
        return Committed(batch, g, [t for _g, touches, _d in parts for t in touches],
                         [r for _g, _t, devices in parts for r in devices])  # fmt: skip

    def _notify(self, committed: Committed) -> None:
        for observer in self._observers:
            try:
                observer(committed)
            except Exception:
                metrics.ERRORS.labels("commit_observer").inc()
                log.exception("after-commit observer %r failed", observer)

    async def drain(self) -> None:
        """Commit everything pending (used at shutdown)."""
        while self._pending or self.in_commit:
            if self.in_commit:
                await asyncio.sleep(0.01)
            else:
                await self.flush_once()

    # -- committing ------------------------------------------------------------------------

    async def _commit_with_retry(self, batch: list[Pending]) -> None:
        attempt = 0
        while True:
            self._parts = []  # a failed attempt may have committed part of the batch: written again
            try:
                await self._write(batch)
            except Exception as exc:
                delay = full_jitter(attempt, self._retry_first, self._retry_max)
                attempt += 1
                self.healthy = False
                self.last_error = f"{exc.__class__.__name__}: {exc}"
                metrics.ERRORS.labels("database_write").inc()
                log.warning(
                    "database write of %d messages failed (attempt %d: %s); retrying in %.2fs, "
                    "messages stay unacknowledged",
                    len(batch),
                    attempt,
                    self.last_error,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            if not self.healthy:
                log.info("database writes recovered after %d failed attempts", attempt)
            self.healthy = True
            self.last_error = None
            return

    async def _write(self, batch: list[Pending]) -> None:
        """Commit the batch; isolate and dead-letter messages the database refuses for good."""
        try:
            await self._transaction(batch)
            return
        except Exception as exc:
            if not is_permanent(exc):
                raise
            if len(batch) > 1:
                mid = len(batch) // 2
                await self._write(batch[:mid])
                await self._write(batch[mid:])
                return
            refused = batch[0]
            log.warning("database refused message on %r: %s", refused.message.topic, exc)
            refused.records = [dead_letter(refused.message, StorageRejected(f"{exc.__class__.__name__}: {exc}"))]
            try:
                await self._transaction([refused])
            except Exception as again:
                if not is_permanent(again):
                    raise
                self._give_up(refused, again)

    def _give_up(self, refused: Pending, exc: BaseException) -> None:
        # The dead letter itself is refused (say, a constraint an operator added). Retrying would
        # block every message behind this one for good; the log keeps what we could not store.
        message = refused.message
        metrics.ERRORS.labels("dead_letter_refused").inc()
        log.error(
            "database refused the dead letter too; message dropped: topic %r, qos %d, %d bytes, "
            "payload (base64, first %d bytes) %s: %s: %s",
            message.topic,
            message.qos,
            len(message.payload),
            _LOGGED_PAYLOAD,
            base64.b64encode(message.payload[:_LOGGED_PAYLOAD]).decode(),
            exc.__class__.__name__,
            exc,
        )

    async def _transaction(self, batch: list[Pending]) -> None:
        g = sql.group([(p.message.received_at, p.records) for p in batch])
        touch = last_seen_touches(g, self._last_seen, self._resolution)
        started = time.perf_counter()
        copy = True
        devices: list[asyncpg.Record] = []
        for again in range(_STATS_RACES):
            try:
                devices = await self._attempt(g, touch, copy=copy)
                break
            except _Redelivered as exc:
                # Some rows are stored already (the broker redelivered what we had not acknowledged):
                # COPY cannot skip them, the ON CONFLICT statements can.
                log.debug("%s: a row of the batch is stored already; writing it again with ON CONFLICT", exc)
                copy = False
            except StatsRaced as exc:
                # Rolled back; the rows the other writer created exist now, and are locked next time.
                if again == _STATS_RACES - 1:
                    raise
                log.debug("%s; writing the batch again", exc)
        self._on_batch(len(batch), time.perf_counter() - started)
        self._parts.append((g, touch, devices))
        for device, seen in touch:
            self._last_seen[device] = seen
        if len(self._last_seen) > _MAX_LAST_SEEN_CACHE:
            self._last_seen.clear()

    async def _attempt(self, g: sql.Grouped, touch: list[tuple[str, float]], *, copy: bool) -> list[asyncpg.Record]:
        try:
            # A connection that stops answering (half-open) must not hold the batch forever.
            async with asyncio.timeout(_TRANSACTION_TIMEOUT):
                conn = await self._connection()
                async with conn.transaction():
                    return await self._execute(conn, g, touch, copy=copy)
        except (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError):  # TimeoutError is an OSError
            await self._drop_connection()
            raise

    async def write_in(self, conn: asyncpg.Connection, batch: list[Pending]) -> None:
        """Write these messages' records inside the caller's transaction (replays: nothing to acknowledge)."""
        g = sql.group([(p.message.received_at, p.records) for p in batch])
        await self._execute(conn, g, list(g.seen.items()), copy=False)

    async def _connection(self) -> asyncpg.Connection:
        """The writer's own connection, held across batches (a pool checkout would ping every time)."""
        if self._sa_conn is None or self._sa_conn.closed or self._raw is None or self._raw.is_closed():
            await self._drop_connection()
            self._sa_conn = await self._engine.connect()
            raw = await self._sa_conn.get_raw_connection()
            self._raw = raw.driver_connection
        return self._raw

    async def _drop_connection(self) -> None:
        sa_conn, self._sa_conn, self._raw = self._sa_conn, None, None
        if sa_conn is not None:
            with contextlib.suppress(Exception):
                await sa_conn.invalidate()
            with contextlib.suppress(Exception):
                await sa_conn.close()

    async def close(self) -> None:
        await self._drop_connection()

    async def _execute(
        self, conn: asyncpg.Connection, g: sql.Grouped, touch: list[tuple[str, float]], *, copy: bool
    ) -> list[asyncpg.Record]:
        """The batch's statements; returns the status devices' rows as written (Committed.devices)."""
        devices = await self._watch.devices(conn, g.status, g.seen, touch) if touch or g.status else []
        inserted: Sequence[Sequence[Any]] = ()
        ahead: Folded | None = None
        if g.telemetry:
            if copy:
                ahead = await self._copy_telemetry(conn, g.telemetry)
                inserted = g.telemetry  # COPY stores every row or fails
            elif self._stats is not None:
                inserted = await conn.fetch(sql.INSERT_TELEMETRY_RETURNING, *sql.columns(g.telemetry, 8))
            else:
                await conn.execute(sql.INSERT_TELEMETRY, *sql.columns(g.telemetry, 8))
        if g.relays:
            if copy:
                pieces = sql.relay_history_pieces(g.relays)
                await _copy_pieces(conn, "relay_state_history", sql.RELAY_HISTORY_COLUMNS, pieces)
            else:
                await conn.execute(sql.INSERT_RELAY_HISTORY, *sql.columns(g.relays, 6))
            await self._watch.relays(conn, g.relays)  # locks and compares critical relays first
            await conn.execute(sql.UPSERT_RELAYS, json_rows.rows(sql.newest_relays(g.relays)))
        if g.display:
            await conn.execute(sql.INSERT_DISPLAY, *sql.columns(g.display, 9))
        if g.system:
            await conn.execute(sql.INSERT_SYSTEM, *sql.columns(g.system, 6))
        if g.dead:
            await conn.execute(sql.INSERT_DEAD_LETTERS, *sql.columns(sql.merged_dead_letters(g.dead), 9))
        if g.rules:
            await rules_engine.apply(conn, g.rules, self._watch.outbox)  # alerts notify where the watch's do
        if inserted and self._stats is not None:
            # Last: a writer holding stats rows waits for no other lock of the batch (no deadlock).
            await self._stats.apply(conn, inserted, ahead)
        return devices

    async def _copy_telemetry(self, conn: asyncpg.Connection, rows: Sequence[Any]) -> Folded | None:
        """COPY the rows; with statistics on, fold them meanwhile (Stats.fold_ahead). One step of
        the COPY's task packs and sends all its pieces, so PostgreSQL stores the rows on the other
        core while the fold runs here: the two overlap on the batch's critical path."""
        stats = self._stats
        if stats is None or len(rows) <= SMALL_BATCH:
            await _copy_pieces(conn, "telemetry", sql.TELEMETRY_COLUMNS, sql.telemetry_copy_pieces(rows))
            return None
        fixed: list[bytes] = []  # the rows' readings as packed, for the fold (complete unless a row is odd)
        pieces = sql.telemetry_copy_pieces(rows, fixed=fixed)
        copying = asyncio.ensure_future(_copy_pieces(conn, "telemetry", sql.TELEMETRY_COLUMNS, pieces))
        try:
            await asyncio.sleep(0)  # the task's first step: the COPY is on its way
            ahead = stats.fold_ahead(rows, b"".join(fixed))
        except BaseException:
            copying.cancel()
            with contextlib.suppress(BaseException):
                await copying
            raise
        await copying
        return ahead


class _Redelivered(Exception):
    """COPY met a row that is stored already: the batch goes again with ON CONFLICT statements."""


# COPY costs PostgreSQL about 5 µs a row where INSERT … SELECT FROM unnest … ON CONFLICT costs 8
# (bench/, 2000-row batches), on a box where the database and the service share the CPUs.
async def _copy_pieces(conn: asyncpg.Connection, table: str, columns: Sequence[str], pieces: Iterator[bytes]) -> None:
    """Binary COPY of data packed piece by piece as it is sent: PostgreSQL stores a piece while
    the next is packed. A value the column cannot hold ends the data after the last whole piece
    (no CopyFail, whose cancel request could hit a later statement); the transaction is then
    rolled back by the ValueRefused raised here."""
    refused: list[Exception] = []

    async def source() -> AsyncIterator[bytes]:
        sent = False
        while True:
            try:
                piece = next(pieces)
            except StopIteration:
                return
            except (ValueError, TypeError, OverflowError, struct.error) as exc:
                refused.append(exc)
                if not sent:
                    yield sql.COPY_HEADER  # PostgreSQL refuses binary data without one
                return
            sent = True
            yield piece

    try:
        await conn.copy_to_table(table, source=source(), columns=columns, format="binary")
    except asyncpg.UniqueViolationError as exc:
        raise _Redelivered(table) from exc
    if refused:
        raise ValueRefused(f"invalid input for {table}: {refused[0]}") from refused[0]
