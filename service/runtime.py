"""Builds the data path and runs it: engine -> writer -> pipeline -> transport up, reverse order down."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from service import metrics
from service.config import Settings
from service.history.jobs import HistoryJobs
from service.ingest import Ingestor
from service.mqtt.message import InboundMessage
from service.mqtt.transport import ConnectionState, MqttTransport
from service.pipeline import Pipeline
from service.routes import DEFAULT_MIDDLEWARE, build_router
from service.routing.router import Router
from service.storage.db import create_engine, ping
from service.storage.migrate import upgrade_to_head
from service.storage.writer import BatchWriter

log = logging.getLogger(__name__)

# A health probe must answer in time even while the database hangs (a half-open connection).
_PING_TIMEOUT = 3.0


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    router: Router
    ingestor: Ingestor
    transport: MqttTransport | None
    started_at: float = field(default_factory=time.time)
    db_ok: bool = True
    # Partition upkeep, retention and rollups (service/history/); None when not built by `build`.
    history: HistoryJobs | None = None
    # Sessions of the HTTP API's reads (one per request); the writer keeps its own connection.
    sessions: async_sessionmaker[AsyncSession] = field(init=False)

    def __post_init__(self) -> None:
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        engine = create_engine(settings)
        router = build_router(settings.mqtt_topic_prefix)
        writer = BatchWriter(
            engine,
            batch_size=settings.writer_batch_size,
            linger=settings.writer_linger_ms / 1000,
            retry_first_delay=0.05,
            retry_max_delay=settings.writer_retry_max_delay,
            last_seen_resolution=settings.device_last_seen_resolution,
            on_batch=_observe_batch,
        )
        transport: MqttTransport | None = None
        if settings.mqtt_monitor_enabled:
            transport = MqttTransport(settings, router.subscriptions(), on_state_change=_ConnectionMetrics())
        # The ingestor is the writer's first after-commit observer (acknowledgements); anything else
        # that reacts to committed batches registers with `writer.observe()` after it.
        ingestor = Ingestor(
            Pipeline(router, DEFAULT_MIDDLEWARE),
            writer,
            ack=transport.ack if transport is not None else _no_ack,
            hold_reading=transport.hold_reading if transport is not None else _no_hold,
            window=settings.mqtt_receive_maximum,
        )
        return cls(settings, engine, router, ingestor, transport, history=HistoryJobs(engine, settings))

    async def start(self) -> None:
        if self.settings.db_migrate_on_start:
            await upgrade_to_head(self.engine, self.settings.database_schema)
        # Start-up objects (modules, models, schemas, the engine) live forever: freezing them keeps
        # each garbage-collector pass proportional to the messages in flight (measured: -12% CPU
        # per message).
        if self.history is not None:
            # Before the first message: today's partition exists, so nothing lands in the default one.
            await self.history.start()
        gc.freeze()
        # Per-message objects live until their batch commits, thousands of messages later: at the
        # default young-generation threshold (700) each is scanned, promoted and scanned again
        # before it dies. Scanning once per 50 000 allocations measured about -10% CPU per
        # message at the same peak RSS (bench/, telemetry, 400 000 messages).
        gc.set_threshold(50_000, 20, 100)
        self.ingestor.start()
        if self.transport is not None:
            self.transport.start(self.ingestor.submit)
        else:
            log.info("MQTT_MONITOR_ENABLED=false: serving HTTP without the subscriber")

    async def stop(self) -> None:
        grace = self.settings.shutdown_grace_seconds
        if self.transport is not None:
            # Take nothing new; commit and acknowledge what we hold, then disconnect.
            self.transport.pause()
            drained = await self.ingestor.drain(grace)
            if not drained:
                log.warning(
                    "shutdown grace period over with %d messages uncommitted; the broker redelivers them",
                    self.ingestor.in_flight,
                )
            await self.transport.stop()
        await self.ingestor.stop()
        if self.history is not None:
            await self.history.stop()
        await self.ingestor.writer.close()
        await self.engine.dispose()

    async def check_database(self) -> bool:
        try:
            self.db_ok = await asyncio.wait_for(ping(self.engine), _PING_TIMEOUT)
        except TimeoutError:
            self.db_ok = False
        return self.db_ok

    @property
    def connection(self) -> ConnectionState | None:
        return self.transport.state if self.transport else None


def _no_ack(_messages: Sequence[InboundMessage]) -> int:
    return 0


def _no_hold(_hold: bool) -> None:
    pass


def _observe_batch(size: int, seconds: float) -> None:
    metrics.BATCH_SIZE.observe(size)
    metrics.DB_WRITE_SECONDS.observe(seconds)


class _ConnectionMetrics:
    """Mirrors the transport's connection state into the gauges and counters.

    The transport reports its state more often than it changes (a stop after a lost connection
    reports "disconnected" twice), so the counters follow its own tallies, not the calls.
    """

    def __init__(self) -> None:
        self.connects = 0
        self.disconnects = 0

    def __call__(self, state: ConnectionState) -> None:
        metrics.MQTT_CONNECTED.set(1 if state.connected and state.all_subscribed else 0)
        metrics.MQTT_CONNECTED_SINCE.set(state.connected_since or 0)
        if state.connects > self.connects:
            metrics.MQTT_CONNECTS.inc(state.connects - self.connects)
        if state.disconnects > self.disconnects:
            metrics.MQTT_DISCONNECTS.inc(state.disconnects - self.disconnects)
        self.connects, self.disconnects = state.connects, state.disconnects
