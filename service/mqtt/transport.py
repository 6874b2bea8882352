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
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gmqtt import Client, Subscription
from gmqtt.mqtt.connection import MQTTConnection
from gmqtt.mqtt.constants import MQTTv50, MQTTv311
from gmqtt.mqtt.handler import MQTTConnectError, MqttPackageHandler
from gmqtt.mqtt.package import Package
from gmqtt.mqtt.protocol import MQTTProtocol
from gmqtt.mqtt.utils import pack_variable_byte_integer

from service import metrics
from service.config import Settings
from service.mqtt import failures, probe, tls
from service.mqtt.backoff import full_jitter
from service.mqtt.message import InboundMessage
from service.tasks import cancel_and_wait

log = logging.getLogger(__name__)

Sink = Callable[[InboundMessage], None]
# topic, payload, QoS, retain, idempotency key (sent as the MQTT 5 user property IDEMPOTENCY_KEY,
# so that a subscriber can drop a copy the at-least-once outbox sent twice; None: none)
Outgoing = tuple[str, bytes, int, bool, str | None]
IDEMPOTENCY_KEY = "idempotency-key"

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
_pack_u16 = struct.Struct("!H").pack
# User property (38): the name IDEMPOTENCY_KEY, then the value's length and the value follow.
_KEY_PROPERTY = b"\x26" + struct.pack("!H", len(IDEMPOTENCY_KEY)) + IDEMPOTENCY_KEY.encode()
_new = tuple.__new__


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


class MalformedPacket(ValueError):
    """A packet MQTT 5 calls malformed: the connection is closed (MQTT-4.13), never a guess at its content."""


def publish_packet(topic: str, payload: bytes, qos: int, retain: bool, mid: int | None, key: str | None) -> bytes:
    """An MQTT 5 PUBLISH, the bytes gmqtt's `PublishPacket.build_package` makes of the same message
    (tests/test_publish_packet.py compares them) for 1.3 µs instead of 4.7: no Message object, no
    property lookup, no debug line. `key` goes as the user property IDEMPOTENCY_KEY."""
    name = topic.encode("utf-8", "replace")
    if key is None:
        props = b"\x00"
    else:
        value = key.encode()
        body = _KEY_PROPERTY + _pack_u16(len(value)) + value
        props = bytes(pack_variable_byte_integer(len(body))) + body
    head = _pack_u16(len(name)) + name + (_pack_u16(mid) if mid is not None else b"") + props
    remaining = pack_variable_byte_integer(len(head) + len(payload))
    return b"".join((bytes((0x30 | qos << 1 | retain,)), remaining, head, payload))


def _varint(data: bytes, pos: int, *, partial: bool = False) -> tuple[int, int]:
    """A variable byte integer of at most 4 bytes at `pos`; (value, position after it). It running
    past the end of `data` is malformed, or with `partial` (a packet's remaining length in a read
    buffer) means the rest is still to come: (-1, pos)."""
    value, shift, end = 0, 0, len(data)
    while True:
        if pos >= end:
            if partial:
                return -1, pos
            raise MalformedPacket("variable byte integer runs past the end of the packet")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 21:
            raise MalformedPacket("variable byte integer longer than 4 bytes")


# Packets a broker never sends to a client: receiving one means the stream is not MQTT we can trust.
_NEVER_FROM_BROKER = frozenset({0x00, 0x10, 0x80, 0xA0, 0xC0})


class PublishError(Exception):
    """A publish the broker did not acknowledge: not connected, connection lost, or refused."""


class _DeferredAckHandler(MqttPackageHandler):  # type: ignore[misc]
    """gmqtt's packet handler, with PUBLISH handed to `sink` synchronously and never acknowledged here.
    Our own QoS 1 publishes wait in `pubacks` (mid -> future) for their PUBACK."""

    sink: Sink
    link: Link
    pubacks: dict[int, asyncio.Future[None]]
    freed: asyncio.Event  # set when a PUBACK frees a packet id, or the connection is lost
    # The receive time (whole µs since 1970) given to the last PUBLISH: each next one gets a later
    # microsecond. A message without its own timestamp is stored at its receive time, and PostgreSQL
    # keeps microseconds: two of one device's messages read within one (a burst in one TCP read)
    # would share (device_id, ts) and the second would be taken for a redelivery of the first.
    last_received_us: int = 0

    def _handle_puback_packet(self, cmd: int, packet: bytes) -> None:
        super()._handle_puback_packet(cmd, packet)
        self.freed.set()
        (mid,) = _unpack_u16(packet, 0)
        waiter = self.pubacks.pop(mid, None)
        if waiter is None or waiter.done():
            return
        # MQTT 5: a reason code >= 0x80 refuses the message (0x10 "no subscribers" is a success).
        code = packet[2] if len(packet) > 2 else 0
        if code >= 0x80:
            waiter.set_exception(PublishError(f"broker refused the message (reason code 0x{code:02x})"))
        else:
            waiter.set_result(None)

    def fail_pending(self, reason: str) -> None:
        self.freed.set()
        waiters, self.pubacks = self.pubacks, {}
        for waiter in waiters.values():
            if not waiter.done():
                waiter.set_exception(PublishError(reason))

    def __call__(self, package: Any) -> None:
        # PUBLISH straight to our parser; gmqtt's generic dispatch (debug log, handler lookup)
        # costs more than the parse itself at tens of thousands of messages a second.
        if package.cmd & 0xF0 == 0x30:
            try:
                self._handle_publish_packet(package.cmd, package.data)
            except MalformedPacket as exc:
                log.error("malformed PUBLISH from the broker (%s): closing the connection", exc)
                self._connection._transport.abort()
            return
        super().__call__(package)

    def _handle_connack_packet(self, cmd: int, packet: bytes) -> None:
        # "Unacceptable protocol version" to our MQTT 5 CONNECT: gmqtt would quietly downgrade to
        # 3.1.1, where acknowledgements are sent on receipt (messages lost on a crash). Refuse instead.
        if len(packet) >= 2 and packet[1] == 1 and self._connection_state.protocol_version == MQTTv50:
            self._connection_state.protocol_version = MQTTv311  # what the broker speaks, for the record
            self._error = failures.BrokerTooOld()
            self._connack_received.set()
            return
        super()._handle_connack_packet(cmd, packet)

    def _handle_publish_packet(self, cmd: int, raw: bytes) -> None:
        """Parse one PUBLISH (MQTT 5) and hand it on; MalformedPacket if it is not one."""
        qos = (cmd & 0x06) >> 1
        size = len(raw)
        if qos == 3:
            raise MalformedPacket("QoS 3")
        if size < 2:
            raise MalformedPacket("no room for the topic length")
        (topic_len,) = _unpack_u16(raw, 0)
        pos = 2 + topic_len
        if pos > size:
            raise MalformedPacket(f"topic length {topic_len} runs past the end of the packet ({size} bytes)")
        try:
            topic = raw[2:pos].decode()
        except UnicodeDecodeError:
            raise MalformedPacket("topic is not valid UTF-8") from None
        # No topic aliases are allowed (no Topic Alias Maximum in CONNECT), so an empty topic is an error.
        if not topic or "+" in topic or "#" in topic or "\x00" in topic:
            raise MalformedPacket(f"not a topic name: {topic!r}")
        mid = None
        if qos:
            if pos + 2 > size:
                raise MalformedPacket("no room for the packet identifier")
            (mid,) = _unpack_u16(raw, pos)
            if not mid:
                raise MalformedPacket("packet identifier 0")
            pos += 2
        elif cmd & 0x08:
            raise MalformedPacket("DUP set on a QoS 0 message")
        # MQTT 5 properties: nothing in them changes how the message is routed.
        if pos < size and raw[pos] < 0x80:  # the properties' length in one byte: inline
            props_len = raw[pos]
            pos += 1
        else:
            props_len, pos = _varint(raw, pos)
        pos += props_len
        if pos > size:
            raise MalformedPacket(f"properties ({props_len} bytes) run past the end of the packet")
        us = time.time_ns() // 1000
        if us <= self.last_received_us:
            us = self.last_received_us + 1
        self.last_received_us = us
        # us / 1e6 is within 0.12 µs of the microsecond: it rounds back to it (datetime, the writer).
        # Every field given, in order: tuple.__new__ skips the NamedTuple's Python __new__ (0.2 µs).
        self.sink(_new(InboundMessage, (topic, raw[pos:], qos, bool(cmd & 1), us / 1e6, mid, self.link, bool(cmd & 8))))


class _Client(Client):  # type: ignore[misc]
    def __init__(self, *args: Any, on_lost: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_lost = on_lost

    async def reconnect(self, delay: bool = False) -> None:
        # gmqtt calls this when the connection drops or a CONNACK refuses us; the transport's
        # own loop reconnects with backoff instead.
        self._on_lost()

    async def _create_connection(self, *args: Any, **kwargs: Any) -> Any:
        # Our connection and protocol classes from the start, so a loss before CONNACK (a TLS
        # alert, a broker closing on us) is recorded with its cause.
        connection = await super()._create_connection(*args, **kwargs)
        connection.__class__ = _Connection
        connection._protocol.__class__ = _Protocol
        return connection

    @property
    def lost_because(self) -> BaseException | None:
        conn = self._connection
        return getattr(conn._protocol, "lost_because", None) if conn is not None else None


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

    lost_because: BaseException | None = None

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost_because = exc
        super().connection_lost(exc)

    def _read_packet(self, data: bytes) -> int:
        conn = self._connection
        handler = conn._handler
        if handler.current_connection is not conn:
            return int(super()._read_packet(data))  # a superseded connection: gmqtt drops its packets
        publish = handler._handle_publish_packet
        size = len(data)
        pos = 0
        try:
            while size - pos >= 2:
                cmd = data[pos]
                # Remaining length: a variable byte integer; one or two bytes inline (every packet
                # under 16 KB), longer ones in _varint.
                byte = data[pos + 1]
                if byte < 0x80:
                    length, i = byte, pos + 2
                elif pos + 2 < size and data[pos + 2] < 0x80:
                    length, i = (byte & 0x7F) | data[pos + 2] << 7, pos + 3
                else:
                    length, i = _varint(data, pos + 1, partial=True)
                end = i + length
                if length < 0 or end > size:
                    break
                if cmd & 0xF0 == 0x30:
                    publish(cmd, data[i:end])
                elif cmd & 0xF0 in _NEVER_FROM_BROKER:
                    raise MalformedPacket(f"packet type 0x{cmd & 0xF0:02x} never comes from a broker")
                else:
                    conn.put_package(Package(cmd, data[i:end]))
                pos = end
        except MalformedPacket as exc:
            # MQTT-4.13.1: close the connection. Nothing unacknowledged is lost: the broker sends
            # this packet and every one after it again on the next connection, and the messages
            # delivered before it again too (their acknowledgements die with this link), which the
            # idempotent writes store once.
            log.error("malformed packet from the broker (%s): closing the connection", exc)
            self._transport.abort()
            return -1
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
        # Built here, at start-up: a bad MQTT_TLS_* file stops the service before it serves.
        self._ssl = tls.client_context(settings)
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
        await cancel_and_wait([self._task])
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

    # -- publishing ------------------------------------------------------------------------

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                      timeout: float = 10.0) -> None:  # fmt: skip
        """Publish on the current connection; at QoS 1, return once the broker acknowledged it.

        Raises PublishError when not connected, when the connection is lost first, or when the
        broker refuses it, and TimeoutError without an answer in `timeout` seconds. Nothing is
        resent on a new connection: the caller (the notification outbox) retries.
        """
        (error,) = await self.publish_many([(topic, payload, qos, retain, None)], timeout=timeout)
        if error is not None:
            raise error

    async def publish_many(self, messages: Sequence[Outgoing], *, timeout: float = 10.0) -> list[BaseException | None]:
        """Publish (topic, payload, qos, retain, key) messages, pipelined: as many as the broker's Receive
        Maximum lets us have unacknowledged go out in one write, then their PUBACKs are awaited
        together (while another call holds every id, until one is acknowledged). Per message None
        once acknowledged (QoS 1) or written (QoS 0), else why not, as
        `publish` raises it; `timeout` bounds the whole call. Written in the order given, so the
        broker takes them in that order; what it does with one does not depend on another's fate.
        """
        if any(m[2] not in (0, 1) for m in messages):
            raise ValueError("QoS 0 or 1")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        results: list[BaseException | None] = [None] * len(messages)
        pos = 0
        while pos < len(messages):
            client, link = self._client, self._link
            if client is None or link is None or not link.open or not self.state.connected:
                error: BaseException = PublishError("not connected to the broker")
            elif (room := _free_ids(client)) < 1:
                # Another call's publishes hold every id: wait for one of them to be acknowledged.
                if await _freed(client, deadline - loop.time()):
                    continue
                error = PublishError("the broker's Receive Maximum of unacknowledged publishes is reached")
            else:
                chunk = messages[pos : pos + room]
                answered = await self._publish_chunk(client, chunk, results, pos, deadline - loop.time())
                pos += len(chunk)
                if answered:
                    continue
                error = TimeoutError()  # the broker does not answer: the rest would wait for nothing
            for i in range(pos, len(messages)):
                if results[i] is None:
                    results[i] = error
            break
        return results

    async def _publish_chunk(self, client: _Client, chunk: Sequence[Outgoing], results: list[BaseException | None],
                             first: int, timeout: float) -> bool:  # fmt: skip
        """Write `chunk` at once and wait for its PUBACKs; its outcomes into `results` from `first` on.
        False if some PUBACK did not come in `timeout`."""
        handler = client._package_handler
        protocol = client._connection._protocol
        loop = asyncio.get_running_loop()
        waiters: dict[int, asyncio.Future[None]] = {}  # index in `results` -> its PUBACK
        mine: list[tuple[int, asyncio.Future[None]]] = []  # (mid, its waiter)
        packets: list[bytes] = []
        next_id = protocol.id_generator.next_id  # the allocator gmqtt's PublishPacket takes ids from
        for i, (topic, payload, qos, retain, key) in enumerate(chunk, first):
            mid = next_id() if qos else None
            packets.append(publish_packet(topic, payload, qos, retain, mid, key))
            if mid is not None:
                waiter: asyncio.Future[None] = loop.create_future()
                handler.pubacks[mid] = waiter
                waiters[i] = waiter
                mine.append((mid, waiter))
        try:
            client._connection.send_package(b"".join(packets))
            if len(waiters) > 1:
                _quick_ack(client)
            if not waiters:
                return True
            if len(waiters) == 1:  # wait_for: half the cost of wait() for one future
                ((i, waiter),) = waiters.items()
                try:
                    await asyncio.wait_for(waiter, max(timeout, 0.0))
                except TimeoutError:
                    results[i] = TimeoutError()
                    return False
                except PublishError as refused:
                    results[i] = refused
                return True
            _done, late = await asyncio.wait(waiters.values(), timeout=max(timeout, 0.0))
            for i, waiter in waiters.items():
                if waiter in late:
                    results[i] = TimeoutError()
                elif (error := waiter.exception()) is not None:
                    results[i] = error
            return not late
        finally:
            # A mid acknowledged already may be another call's by now: take out only our own waiters.
            for mid, waiter in mine:
                if handler.pubacks.get(mid) is waiter:
                    del handler.pubacks[mid]

    # -- connection loop -------------------------------------------------------------------

    async def run(self) -> None:
        s = self._settings
        attempt = 0
        while not self._stopping.is_set():
            try:
                client = await self._connect()
            except (OSError, TimeoutError, MQTTConnectError, failures.BrokerTooOld) as exc:
                exc = await self._diagnose(exc)
                delay = full_jitter(attempt, s.mqtt_monitor_reconnect_delay, s.mqtt_reconnect_max_delay)
                attempt += 1
                self.state.failed_attempts = attempt
                metrics.ERRORS.labels("mqtt_connect").inc()
                self.state.last_error = failures.describe(exc, s)
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
            client._package_handler.fail_pending("connection lost before the broker acknowledged")
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
        handler.pubacks = {}
        handler.freed = asyncio.Event()
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
        if s.mqtt_tls and s.mqtt_tls_insecure:
            log.warning("MQTT_TLS_INSECURE=true: the broker's certificate is not verified (anyone on the path "
                        "can impersonate it and read the fleet's messages)")  # fmt: skip
        try:
            await self._until_connack(client)
            # Resubscribe on every connect, whatever session-present says: the broker may have
            # dropped the session (expiry, restart without persistence).
            # No Local: what we publish ourselves (alerts) is not sent back to us. It is a protocol
            # error on shared subscriptions; the router's own-topic filter covers those (and replicas).
            client.subscribe([Subscription(f, qos=q, no_local=not f.startswith("$share/")) for f, q in self._filters])
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

    async def _diagnose(self, exc: BaseException) -> BaseException:
        """A CONNECT left unanswered may be a broker that speaks only MQTT 3.1.1 (service/mqtt/probe.py)."""
        # Only when a connection was made: an unreachable host is not worth a second wait.
        if isinstance(exc, failures.NoConnack | failures.ClosedBeforeConnack) and not isinstance(
            exc.__cause__, ssl.SSLError
        ):
            s = self._settings
            if await probe.speaks_only_311(s.mqtt_broker_host, s.mqtt_broker_port, self._ssl, s.mqtt_connect_timeout):
                return failures.BrokerTooOld()
        return exc

    async def _until_connack(self, client: _Client) -> None:
        """CONNECT and wait for CONNACK, or for the connection to close first (a TLS alert, a broker
        that hangs up on us), or for MQTT_CONNECT_TIMEOUT: whichever comes first, with its cause."""
        s = self._settings
        connect = asyncio.ensure_future(
            client.connect(s.mqtt_broker_host, s.mqtt_broker_port, ssl=self._ssl or False,
                           keepalive=s.mqtt_keepalive, version=MQTTv50)
        )  # fmt: skip
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            done, _ = await asyncio.wait({connect, lost}, timeout=s.mqtt_connect_timeout,
                                         return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        finally:
            lost.cancel()
            if not connect.done():
                connect.cancel()
                with contextlib.suppress(BaseException):
                    await connect
        if connect in done:
            connect.result()
            return
        if lost in done:
            raise failures.ClosedBeforeConnack() from client.lost_because
        raise failures.NoConnack() if client._connection is not None else TimeoutError()
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


async def _freed(client: _Client, timeout: float) -> bool:
    """Wait at most `timeout` for a PUBACK to free a packet id (or for the connection to be lost)."""
    freed = client._package_handler.freed
    freed.clear()
    if timeout > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(freed.wait(), timeout)
            return True
    return False


def _free_ids(client: _Client) -> int:
    """Publishes we may still have unacknowledged: the broker's Receive Maximum (CONNACK) less those
    in flight. gmqtt's allocator refuses the last id of its range, hence the 1."""
    ids = client._package_handler.id_generator
    return int(ids._max) - 1 - len(ids._used_ids)


_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only


def _quick_ack(client: _Client) -> None:
    """Acknowledge the broker's next segment at once rather than after the delayed-ACK timer.

    A broker without TCP_NODELAY (Mosquitto's default) sends the first of several PUBACKs and holds
    the rest (Nagle) until that one is acknowledged; a client that just wrote (as the sender does,
    page after page) delays its ACK up to 40 ms: measured 43 ms per page of 10 publishes instead of
    0.15 ms. Quick-ack mode is not sticky, so it is set after every pipelined write."""
    if _TCP_QUICKACK is None:
        return
    sock = client._connection._transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)


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
