"""Builds the data path and runs it: engine -> writer -> pipeline -> transport up, reverse order down."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from service import metrics
from service.config import Settings
from service.fleet_cache import FleetCache
from service.history.jobs import HistoryJobs
from service.ingest import Ingestor
from service.mqtt import client_id
from service.mqtt.message import InboundMessage
from service.mqtt.transport import ConnectionState, MqttTransport, shared_filters
from service.notify.channels import Channel
from service.notify.mqtt import MqttChannel
from service.notify.outbox import MQTT, WEBHOOK, Outbox
from service.notify.sender import Sender
from service.notify.webhook import WebhookChannel
from service.pipeline import Pipeline
from service.routes import ROUTE_NAMES, build_router
from service.routing.middleware.setup import RoutingMiddleware, build_middleware
from service.routing.router import Router
from service.rules.active import ActiveRules
from service.rules.loader import RulesError
from service.stats.build import build_stats
from service.storage.db import create_engine, ping
from service.storage.migrate import upgrade_to_head
from service.storage.writer import BatchWriter, Committed
from service.watch.liveness import Watch
from service.watch.sweep import Sweeper
from service.web.hub import EventHub

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
    rules: ActiveRules
    outbox: Outbox = field(default_factory=Outbox)
    sender: Sender | None = None
    sweeper: Sweeper | None = None
    # The fleet's state from what this process committed: answers while the database is away.
    fleet: FleetCache | None = None
    middleware: RoutingMiddleware = field(default_factory=RoutingMiddleware)
    started_at: float = field(default_factory=time.time)
    db_ok: bool = True
    # Partition upkeep, retention and rollups (service/history/); None when not built by `build`.
    history: HistoryJobs | None = None
    # Committed batches and device changes as Server-Sent Events (service/web/); None when not built by `build`.
    events: EventHub | None = None
    # Sessions of the HTTP API's reads (one per request); the writer keeps its own connection.
    sessions: async_sessionmaker[AsyncSession] = field(init=False)
    _reloads: set[asyncio.Future[None]] = field(init=False, default_factory=set)
    _client_id_lock: IO[bytes] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def build(
        cls,
        settings: Settings,
        rules: ActiveRules | None = None,
        *,
        outbox: Outbox | None = None,
        health: Callable[[Runtime], Awaitable[dict[str, Any]]] | None = None,
    ) -> Runtime:
        """`health(runtime)`: the body of the live page's health events (the HTTP layer's answer).
        `outbox`: the notification channels (from the settings if not given; `rules` share them)."""
        engine = create_engine(settings)
        middleware = build_middleware(settings, ROUTE_NAMES)
        # Our own alert topic is not a device's: acknowledged, never routed or dead-lettered.
        router = build_router(
            settings.mqtt_topic_prefix, route_middleware=middleware.per_route, own_topics=[settings.alert_topic]
        )
        # Loaded before anything starts: a bad rules file stops start-up with one line (RulesError).
        outbox = outbox or Outbox.from_settings(settings)
        rules = rules if rules is not None else ActiveRules(settings.rules_file, router, outbox=outbox)
        # The rules' commands come back to us (we subscribe to `<prefix>/#`): ours, not routed.
        rules.observe(lambda loaded: router.set_commands(loaded.publish_topics))
        watch = Watch(
            outbox,
            registration=settings.device_registration,
            critical_relays=settings.critical_relay_rules,
            offline_after=settings.device_offline_after_seconds,
        )
        writer = BatchWriter(
            engine,
            batch_size=settings.writer_batch_size,
            linger=settings.writer_linger_ms / 1000,
            retry_first_delay=0.05,
            retry_max_delay=settings.writer_retry_max_delay,
            last_seen_resolution=settings.device_last_seen_resolution,
            on_batch=_observe_batch,
            watch=watch,
            stats=build_stats(settings, outbox),
        )
        transport: MqttTransport | None = None
        if settings.mqtt_monitor_enabled:
            transport = MqttTransport(
                settings,
                shared_filters(router.subscriptions(), settings.mqtt_shared_group),
                on_state_change=_ConnectionMetrics(),
            )
        # The ingestor is the writer's first after-commit observer (acknowledgements); anything else
        # that reacts to committed batches registers with `writer.observe()` after it.
        ingestor = Ingestor(
            Pipeline(router, after=rules.hooks),
            writer,
            ack=transport.ack if transport is not None else _no_ack,
            hold_reading=transport.hold_reading if transport is not None else _no_hold,
            window=settings.mqtt_receive_maximum,
        )
        channels: dict[str, Channel] = {}
        if transport is not None:
            channels[MQTT] = MqttChannel(transport.publish_many, timeout=settings.mqtt_connect_timeout)
        if settings.webhook_urls or settings.rules_file:  # rules' webhook actions go through it too
            channels[WEBHOOK] = WebhookChannel(settings.alert_webhook_secret, settings.alert_webhook_timeout_seconds)
        sender = Sender(
            engine,
            channels,
            page=settings.notify_batch_size,
            poll=settings.notify_poll_seconds,
            max_age=settings.notify_max_age_seconds,
            first_delay=settings.notify_retry_first_delay_seconds,
            max_delay=settings.notify_retry_max_delay_seconds,
            send_timeout=max(settings.alert_webhook_timeout_seconds, settings.mqtt_connect_timeout),
        )


        async def page_health() -> dict[str, Any]:
            assert health is not None
            return await health(runtime)

        events = _event_hub(settings, page_health if health is not None else None)
        fleet = None
        if settings.fleet_cache_max_devices:
            fleet = FleetCache(
                max_devices=settings.fleet_cache_max_devices,
                engine=engine,
                on_connectivity=events.device_changed,
            )
            writer.observe(fleet.observe)
        writer.observe(_WakeSender(outbox, sender))
        sweeper = Sweeper(
            engine,
            outbox,
            offline_after=settings.device_offline_after_seconds,
            interval=settings.device_sweep_interval_seconds,
            connection=lambda: transport.state if transport is not None else None,
            writer_healthy=lambda: writer.healthy,
            on_notified=sender.wake,
            on_changed=fleet.read_again if fleet is not None else lambda _ids: None,
        )
        writer.observe(rules.committed)
        writer.observe(events.observe)  # last: the page hears of a batch after everything else did
        runtime = cls(
            settings,
            engine,
            router,
            ingestor,
            transport,
            rules,
            outbox=outbox,
            sender=sender,
            sweeper=sweeper,
            fleet=fleet,
            middleware=middleware,
            history=HistoryJobs(engine, settings),
            events=events,
        )
        return runtime

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
        if self.transport is not None:
            s = self.settings
            if s.mqtt_shared_group and "{pid}" in s.mqtt_client_id and s.mqtt_session_expiry > 60:
                log.warning(
                    "MQTT_CLIENT_ID contains {pid}: every restart leaves the previous session behind, and "
                    "brokers that keep sending an absent member its share (Mosquitto, EMQX) hold those "
                    "messages for MQTT_SESSION_EXPIRY (%ds) and then drop them; prefer a stable id",
                    s.mqtt_session_expiry,
                )
            try:
                self._client_id_lock = client_id.claim(s.client_id, s.mqtt_broker_host, s.mqtt_broker_port)
            except client_id.ClientIdInUse as exc:
                log.error("not starting: %s", exc)  # one line to read above uvicorn's traceback
                raise
        if self.fleet is not None:
            # Filled before the first commit when the database answers; else in the background.
            try:
                await self.fleet.load(self.engine)
            except Exception as exc:
                log.warning("fleet cache: database unavailable at start (%s); filling it later", exc.__class__.__name__)
                self.fleet.start_loading(self.engine)
        await self.rules.start(self.engine)
        self._watch_sighup(True)
        self.ingestor.start()
        if self.transport is not None:
            self.transport.start(self.ingestor.submit)
        else:
            log.info("MQTT_MONITOR_ENABLED=false: serving HTTP without the subscriber")
        if self.sweeper is not None:
            self.sweeper.start()
        if self.sender is not None:
            self.sender.start()  # delivers what an earlier run left undelivered, too
        if self.events is not None:
            self.events.start()

    async def reload_rules(self) -> None:
        """SIGHUP: read RULES_FILE again; a bad file is logged and the old rules stay."""
        with contextlib.suppress(RulesError):
            await self.rules.reload(self.engine)

    def _watch_sighup(self, on: bool) -> None:
        if not self.settings.rules_file:
            return
        loop = asyncio.get_running_loop()
        # Not available off the main thread (or on Windows): reloading is then POST /rules/reload only.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            if on:
                loop.add_signal_handler(signal.SIGHUP, self._sighup)
            else:
                loop.remove_signal_handler(signal.SIGHUP)

    def _sighup(self) -> None:
        task = asyncio.ensure_future(self.reload_rules())
        self._reloads.add(task)  # held until done (the loop keeps only a weak reference)
        task.add_done_callback(self._reloads.discard)

    async def stop(self) -> None:
        if self.events is not None:
            await self.events.stop()  # closes the page's streams first: they would hold the server open
        self._watch_sighup(False)
        grace = self.settings.shutdown_grace_seconds
        if self.sweeper is not None:
            await self.sweeper.stop()
        if self.transport is not None:
            # Take nothing new; commit and acknowledge what we hold, then disconnect.
            self.transport.pause()
            drained = await self.ingestor.drain(grace)
            if not drained:
                log.warning(
                    "shutdown grace period over with %d messages uncommitted; the broker redelivers them",
                    self.ingestor.in_flight,
                )
        if self.sender is not None:
            # Undelivered rows stay in the outbox for the next run (or another replica).
            await self.sender.stop()
        if self.transport is not None:
            await self.transport.stop()
        await self.ingestor.stop()
        if self.history is not None:
            await self.history.stop()
        if self.fleet is not None:
            await self.fleet.stop()
        await self.rules.stop()
        await self.ingestor.writer.close()
        await self.middleware.close()
        await self.engine.dispose()
        if self._client_id_lock is not None:
            client_id.release(self._client_id_lock)
            self._client_id_lock = None

    async def check_database(self) -> bool:
        try:
            self.db_ok = await asyncio.wait_for(ping(self.engine), _PING_TIMEOUT)
        except TimeoutError:
            self.db_ok = False
        return self.db_ok

    @property
    def connection(self) -> ConnectionState | None:
        return self.transport.state if self.transport else None


def _event_hub(settings: Settings, health: Callable[[], Awaitable[dict[str, Any]]] | None) -> EventHub:
    return EventHub(
        topic_prefix=settings.mqtt_topic_prefix,
        max_clients=settings.events_max_clients,
        ring_size=settings.events_ring_size,
        client_buffer=settings.events_client_buffer,
        max_rate=settings.events_max_rate,
        payload_max_bytes=settings.events_payload_max_bytes,
        resume_seconds=settings.events_resume_seconds,
        health_interval=settings.events_health_interval_seconds,
        heartbeat=settings.events_heartbeat_seconds,
        health=health,
    )


def _no_ack(_messages: Sequence[InboundMessage]) -> int:
    return 0


def _no_hold(_hold: bool) -> None:
    pass


def _observe_batch(size: int, seconds: float) -> None:
    metrics.BATCH_SIZE.observe(size)
    metrics.DB_WRITE_SECONDS.observe(seconds)


class _WakeSender:
    """After-commit observer: wakes the sender when the batch wrote notification rows (cheap)."""

    def __init__(self, outbox: Outbox, sender: Sender) -> None:
        self._outbox = outbox
        self._sender = sender

    def __call__(self, _committed: Committed) -> None:
        if self._outbox.take_written():
            self._sender.wake()


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
