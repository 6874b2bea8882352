"""The broker connection: gmqtt over MQTT 5, our own reconnect loop, acknowledgements after commit.

gmqtt is used for the protocol (CONNECT, SUBSCRIBE, keepalive, PUBREL/PUBCOMP), with two of its
behaviours replaced, both pinned to gmqtt 0.8:

* Delivery. With `optimistic_acknowledgement=False` gmqtt wraps every PUBLISH in its own task and
  sends the PUBACK from that task's done-callback (one task per message: ~0.7x the broker's
  ceiling before any work). `_DeferredAckHandler` instead hands each PUBLISH to a plain callable
  and sends nothing; `Link.ack()` writes the PUBACKs of a whole committed batch in one write.
* Reconnect. gmqtt retries at a fixed delay, only after a first success, and never resubscribes.
  `_Client.reconnect()` only reports the loss; `MqttTransport.run()` reconnects with capped,
  jittered exponential backoff and subscribes every route filter on every connect.

Deferred acknowledgements only exist in MQTT 5 (gmqtt forces optimistic acks below it), so the
client always connects with `version=MQTTv50`. The broker's Receive Maximum, which we request in
CONNECT, bounds the unacknowledged messages we hold: that is the backpressure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gmqtt import Client, Subscription
from gmqtt.mqtt.connection import MQTTConnection
from gmqtt.mqtt.constants import MQTTv50
from gmqtt.mqtt.handler import MQTTConnectError, MqttPackageHandler
from gmqtt.mqtt.package import Package
from gmqtt.mqtt.protocol import MQTTProtocol

from service import metrics
from service.config import Settings
from service.mqtt.backoff import full_jitter
from service.mqtt.message import InboundMessage

log = logging.getLogger(__name__)

Sink = Callable[[InboundMessage], None]

_PUBACK = 0x40
# MQTT 5 DISCONNECT reason "Session taken over": another client connected with our client id.
SESSION_TAKEN_OVER = 0x8E
# A connection that dies this soon after its CONNACK counts as a failure for the backoff; three
# such in a row, without a reason code, are taken for a takeover too (two clients, one id).
SHORT_LIVED = 5.0
_SHORT_IN_A_ROW = 3
_PUBREC = 0x50
_pack_ack = struct.Struct("!BBH").pack
_unpack_u16 = struct.Struct("!H").unpack_from


class Link:
    """One broker connection. A message is acknowledged on the connection that delivered it;
    after a reconnect the broker redelivers whatever that connection left unacknowledged."""

    __slots__ = ("_client", "number")

    def __init__(self, client: Client, number: int) -> None:
        self._client = client
        self.number = number

    @property
    def open(self) -> bool:
        conn = self._client._connection
        return conn is not None and not conn.is_closing() and self._client._connack_received.is_set()

    def ack(self, messages: Iterable[InboundMessage]) -> int:
        """Send PUBACK (QoS 1) / PUBREC (QoS 2) for these messages in one write; returns how many."""
        if not self.open:
            return 0
        packets = [_pack_ack(_PUBACK if m.qos == 1 else _PUBREC, 2, m.mid) for m in messages if m.mid is not None]
        if packets:
            self._client._connection.send_package(b"".join(packets))
        return len(packets)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


class _DeferredAckHandler(MqttPackageHandler):  # type: ignore[misc]
    """gmqtt's packet handler, with PUBLISH handed to `sink` synchronously and never acknowledged here."""

    sink: Sink
    link: Link

    def __call__(self, package: Any) -> None:
        # PUBLISH straight to our parser; gmqtt's generic dispatch (debug log, handler lookup)
        # costs more than the parse itself at tens of thousands of messages a second.
        if package.cmd & 0xF0 == 0x30:
            try:
                self._handle_publish_packet(package.cmd, package.data)
            except Exception:
                log.exception("malformed PUBLISH packet dropped (it stays unacknowledged)")
            return
        super().__call__(package)

    def _handle_publish_packet(self, cmd: int, raw: bytes) -> None:
        qos = (cmd & 0x06) >> 1
        (topic_len,) = _unpack_u16(raw, 0)
        pos = 2 + topic_len
        topic = raw[2:pos].decode("utf-8", "replace")
        mid = None
        if qos:
            (mid,) = _unpack_u16(raw, pos)
            pos += 2
        # MQTT 5 properties. We never allow topic aliases (no Topic Alias Maximum in CONNECT),
        # so nothing in them changes how the message is routed.
        props_len, pos = _varint(raw, pos)
        self.sink(InboundMessage(topic, raw[pos + props_len :], qos, bool(cmd & 1), time.time(), mid, self.link))


class _Client(Client):  # type: ignore[misc]
    def __init__(self, *args: Any, on_lost: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_lost = on_lost

    async def reconnect(self, delay: bool = False) -> None:
        # gmqtt calls this when the connection drops or a CONNACK refuses us; the transport's
        # own loop reconnects with backoff instead.
        self._on_lost()


class _Connection(MQTTConnection):  # type: ignore[misc]
    """gmqtt's connection; its keepalive watchdog (closes after 2 x keepalive without a byte from the
    broker) leaves alone a socket we stopped reading on purpose (`hold_reading`): nothing can arrive
    then, which says nothing about the link (a link that died meanwhile is noticed once reading
    resumes). Our PINGREQs still go out, so the broker keeps us."""

    def _keep_connection(self) -> None:
        if not self._transport.is_reading() and not self._transport.is_closing():
            self._last_data_in = time.monotonic()
        super()._keep_connection()


class _Protocol(MQTTProtocol):  # type: ignore[misc]
    """gmqtt's protocol with a leaner packet loop: a PUBLISH goes straight to the handler's parser
    (no Package tuple, no per-packet dispatch or clock read); other packets take gmqtt's path."""

    def _read_packet(self, data: bytes) -> int:
        conn = self._connection
        handler = conn._handler
        if handler.current_connection is not conn:
            return int(super()._read_packet(data))  # a superseded connection: gmqtt drops its packets
        publish = handler._handle_publish_packet
        size = len(data)
        pos = 0
        while size - pos >= 2:
            cmd = data[pos]
            length, shift, i = 0, 0, pos + 1
            while True:  # remaining length: a variable byte integer of at most 4 bytes
                if i >= size:
                    length = -1
                    break
                byte = data[i]
                i += 1
                length |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    break
                shift += 7
                if shift > 21:
                    return -1  # malformed: gmqtt resets the connection
            end = i + length
            if length < 0 or end > size:
                break
            if cmd & 0xF0 == 0x30:
                try:
                    publish(cmd, data[i:end])
                except Exception:
                    log.exception("malformed PUBLISH packet dropped (it stays unacknowledged)")
            else:
                conn.put_package(Package(cmd, data[i:end]))
            pos = end
        if pos:
            conn._last_data_in = time.monotonic()
        return pos


@dataclass
class ConnectionState:
    """What the health endpoint reports about the broker side."""

    connected: bool = False
    connected_since: float | None = None
    connects: int = 0
    disconnects: int = 0
    failed_attempts: int = 0
    last_error: str | None = None
    next_attempt_in: float | None = None
    # filter -> granted QoS, or None when the broker refused it
    subscriptions: dict[str, int | None] = field(default_factory=dict)
    # Another client uses our client id: why we think so, and when the last loss of that kind was.
    takeover: str | None = None
    takeover_at: float | None = None
    takeovers: int = 0

    def taken_over(self, now: float) -> bool:
        """A takeover that still matters: not followed by a connection that has held for a while."""
        if self.takeover_at is None:
            return False
        since = self.connected_since
        return not (self.connected and since is not None and now - since >= 6 * SHORT_LIVED)

    @property
    def all_subscribed(self) -> bool:
        return bool(self.subscriptions) and all(q is not None for q in self.subscriptions.values())


class MqttTransport:
    def __init__(
        self,
        settings: Settings,
        filters: Sequence[tuple[str, int]],
        *,
        on_state_change: Callable[[ConnectionState], None] = lambda _state: None,
    ) -> None:
        self._settings = settings
        self._filters = list(filters)
        self._sink: Sink = _drop
        self.state = ConnectionState()
        self._client: _Client | None = None
        self._link: Link | None = None
        self._lost = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._links = 0
        self._on_state_change = on_state_change
        self._disconnect_reason: int | None = None  # of the broker's DISCONNECT, if it sent one
        self._short_losses = 0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, sink: Sink) -> None:
        """Connect (and keep reconnecting) and hand every PUBLISH received to `sink`."""
        self._sink = sink
        self._task = asyncio.create_task(self.run(), name="mqtt-transport")

    async def stop(self) -> None:
        """Disconnect cleanly (the broker keeps the session) and stop reconnecting."""
        self._stopping.set()
        client = self._client
        if client is not None and self.state.connected:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), timeout=5)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._set_disconnected(None)

    def pause(self) -> None:
        """Stop handing messages on; anything still arriving stays unacknowledged for redelivery."""
        self._sink = _drop

    def hold_reading(self, hold: bool) -> None:
        """Stop (or resume) reading the socket: TCP pushes back on the broker.

        The broker's Receive Maximum should bound what we hold, but Mosquitto 2.0 with
        `max_queued_messages 0` does not keep to it (measured: 51 000 unacknowledged with 2 000
        asked), so the ingestor also holds reading while its in-flight count is at the window.
        """
        client = self._client
        conn = client._connection if client is not None else None
        if conn is None or conn.is_closing():
            return
        if hold:
            conn._transport.pause_reading()
        else:
            conn._transport.resume_reading()

    # -- acknowledgements ------------------------------------------------------------------

    def ack(self, messages: Sequence[InboundMessage]) -> int:
        """Acknowledge committed messages; those from a connection since lost are left to redelivery."""
        sent = 0
        link = None
        group: list[InboundMessage] = []
        for m in messages:
            if m.link is not link:
                if link is not None:
                    sent += link.ack(group)
                link, group = m.link, []
            group.append(m)
        if link is not None:
            sent += link.ack(group)
        return sent

    # -- connection loop -------------------------------------------------------------------

    async def run(self) -> None:
        s = self._settings
        attempt = 0
        while not self._stopping.is_set():
            try:
                client = await self._connect()
            except (OSError, TimeoutError, MQTTConnectError) as exc:
                delay = full_jitter(attempt, s.mqtt_monitor_reconnect_delay, s.mqtt_reconnect_max_delay)
                attempt += 1
                self.state.failed_attempts = attempt
                metrics.ERRORS.labels("mqtt_connect").inc()
                self.state.last_error = f"{exc.__class__.__name__}: {str(exc) or 'no answer in time'}"
                self.state.next_attempt_in = delay
                level = logging.WARNING if attempt <= 3 or attempt % 10 == 0 else logging.INFO
                log.log(
                    level,
                    "cannot connect to MQTT broker %s:%s (attempt %d: %s); retrying in %.1fs",
                    s.mqtt_broker_host,
                    s.mqtt_broker_port,
                    attempt,
                    self.state.last_error,
                    delay,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=delay)
                continue
            self.state.failed_attempts = 0
            self.state.next_attempt_in = None
            await self._lost.wait()
            connected_for = time.time() - (self.state.connected_since or time.time())
            self._set_disconnected("connection lost")
            self._client = None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), timeout=2)
            if self._stopping.is_set():
                break
            if connected_for >= SHORT_LIVED:
                attempt = 0
            pause = self._after_loss(connected_for, attempt)
            if pause is None:
                log.warning("MQTT connection lost; reconnecting")
                continue
            # Lost right after connecting: back off as for a failed connect, or two clients with
            # one id would take the session from each other as fast as the broker lets them.
            attempt += 1
            self.state.next_attempt_in = pause
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=pause)

    async def _connect(self) -> _Client:
        s = self._settings
        self._lost.clear()
        self._links += 1
        client = _Client(
            s.client_id,
            clean_session=False,
            optimistic_acknowledgement=False,
            on_lost=self._lost.set,
            session_expiry_interval=s.mqtt_session_expiry,
            receive_maximum=s.mqtt_receive_maximum,
        )
        link = Link(client, self._links)
        handler = client._package_handler
        # Same object, our subclass: keeps every callback gmqtt wired into it.
        handler.__class__ = _DeferredAckHandler
        handler.sink = self._deliver
        handler.link = link
        if s.mqtt_username:
            password = s.mqtt_password.get_secret_value() if s.mqtt_password else None
            client.set_auth_credentials(s.mqtt_username, password)
        subacks: asyncio.Future[tuple[int, ...]] = asyncio.get_running_loop().create_future()

        def on_subscribe(_client: Any, _mid: int, codes: tuple[int, ...], _props: Any) -> None:
            if not subacks.done():
                subacks.set_result(tuple(codes))

        client.on_subscribe = on_subscribe
        self._disconnect_reason = None
        client.on_disconnect = self._on_disconnect
        self._client = client
        try:
            await asyncio.wait_for(
                client.connect(s.mqtt_broker_host, s.mqtt_broker_port, keepalive=s.mqtt_keepalive, version=MQTTv50),
                timeout=s.mqtt_connect_timeout,
            )
            client._connection.__class__ = _Connection
            client._connection._protocol.__class__ = _Protocol
            # Resubscribe on every connect, whatever session-present says: the broker may have
            # dropped the session (expiry, restart without persistence).
            client.subscribe([Subscription(f, qos=q) for f, q in self._filters])
            codes = await asyncio.wait_for(subacks, timeout=s.mqtt_connect_timeout)
        except BaseException:
            self._client = None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), timeout=2)
            raise
        self._link = link
        self._record_subacks(codes)
        self.state.connected = True
        self.state.connected_since = time.time()
        self.state.connects += 1
        self.state.last_error = None
        log.info(
            "connected to MQTT broker %s:%s as %r; subscribed %d filters",
            s.mqtt_broker_host,
            s.mqtt_broker_port,
            s.client_id,
            sum(1 for q in self.state.subscriptions.values() if q is not None),
        )
        self._on_state_change(self.state)
        return client

    def _on_disconnect(self, _client: Any, packet: bytes | None, _exc: Any = None) -> None:
        # gmqtt passes the broker's DISCONNECT body (reason code first), or b"" for a lost socket.
        if packet:
            self._disconnect_reason = packet[0]

    def _after_loss(self, connected_for: float, attempt: int) -> float | None:
        """After a lost connection: the backoff delay when it was short-lived (None: reconnect now);
        a takeover is logged, counted and kept in the state for health."""
        s = self._settings
        short = connected_for < SHORT_LIVED
        self._short_losses = self._short_losses + 1 if short else 0
        why = classify_loss(self._disconnect_reason, connected_for, self._short_losses)
        if why is not None:
            self.state.takeover = why
            self.state.takeover_at = time.time()
            self.state.takeovers += 1
            self.state.last_error = why
            metrics.MQTT_TAKEOVERS.inc()
        if not short and why is None:
            return None
        delay = full_jitter(attempt, s.mqtt_monitor_reconnect_delay, s.mqtt_reconnect_max_delay)
        if why is not None:
            log.error(
                "another client uses MQTT client id %r on %s:%s (%s); backing off %.1fs. Give each "
                "process its own MQTT_CLIENT_ID (with MQTT_SHARED_GROUP to share the traffic)",
                s.client_id,
                s.mqtt_broker_host,
                s.mqtt_broker_port,
                why,
                delay,
            )
        else:
            log.warning("MQTT connection lost %.1fs after connecting; reconnecting in %.1fs", connected_for, delay)
        self._on_state_change(self.state)
        return delay

    def _record_subacks(self, codes: tuple[int, ...]) -> None:
        granted: dict[str, int | None] = {}
        for (flt, qos), code in zip(self._filters, codes, strict=False):
            if code >= 0x80:
                log.error("broker refused subscription %r (reason code 0x%02x)", flt, code)
                granted[flt] = None
                continue
            if code < qos:
                # Still a subscription, but the broker will not redeliver what we lose on the way.
                log.warning("broker granted QoS %d for %r, not %d: messages arrive at most once", code, flt, qos)
            granted[flt] = code
        for flt, _qos in self._filters[len(codes) :]:
            log.error("no SUBACK code for subscription %r", flt)
            granted[flt] = None
        self.state.subscriptions = granted

    def _set_disconnected(self, reason: str | None) -> None:
        if self.state.connected:
            self.state.disconnects += 1
            self.state.last_error = reason
        self.state.connected = False
        self.state.connected_since = None
        self.state.subscriptions = {f: None for f, _ in self._filters}
        self._on_state_change(self.state)

    def _deliver(self, message: InboundMessage) -> None:
        self._sink(message)


def _drop(_message: InboundMessage) -> None:
    pass


def classify_loss(reason: int | None, connected_for: float, short_in_a_row: int) -> str | None:
    """Why a lost connection looks like another client with our id, or None when it does not."""
    if reason == SESSION_TAKEN_OVER:
        return "the broker closed the connection with reason 0x8E, session taken over"
    if connected_for < SHORT_LIVED and short_in_a_row >= _SHORT_IN_A_ROW:
        return f"{short_in_a_row} connections in a row lost within {SHORT_LIVED:g}s of their CONNACK"
    return None


def shared_filters(filters: Sequence[tuple[str, int]], group: str | None) -> list[tuple[str, int]]:
    """The filters to subscribe: `$share/<group>/<filter>` in shared mode, so replicas split the traffic."""
    if not group:
        return list(filters)
    return [(f"$share/{group}/{flt}", qos) for flt, qos in filters]
