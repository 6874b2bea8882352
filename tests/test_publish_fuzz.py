"""The transport's own PUBLISH reader (`_Protocol._read_packet` + `_handle_publish_packet`) against
garbage: property-based (hypothesis) on the reader, fed the way gmqtt's read loop feeds it.

* A valid stream, cut anywhere into any number of chunks: exactly its messages, in order, nothing
  else, no reset.
* A malformed packet (lying lengths, topic past the end, bad UTF-8, wildcards, QoS 3, a packet type
  a broker never sends): the connection is reset; the messages before it are delivered unchanged,
  nothing after it; never an exception out of the reader.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from gmqtt import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.mqtt.message import InboundMessage
from service.mqtt.transport import _DeferredAckHandler, _Protocol

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


@dataclass(frozen=True)
class Pub:
    topic: str
    payload: bytes
    qos: int
    retain: bool = False
    dup: bool = False
    mid: int = 1
    props: bytes = b""

    def encode(self) -> bytes:
        t = self.topic.encode()
        body = struct.pack("!H", len(t)) + t
        if self.qos:
            body += struct.pack("!H", self.mid)
        body += varint(len(self.props)) + self.props + self.payload
        cmd = 0x30 | (self.dup << 3) | (self.qos << 1) | self.retain
        return bytes([cmd]) + varint(len(body)) + body

    def seen(self) -> tuple[str, bytes, int, bool, int | None]:
        return (self.topic, self.payload, self.qos, self.retain, self.mid if self.qos else None)


PINGRESP = b"\xd0\x00"

topic_chars = st.characters(exclude_characters="+#\x00", exclude_categories=("Cs",))
topics = st.lists(st.text(topic_chars, max_size=12), min_size=1, max_size=4).map("/".join).filter(bool)


@st.composite
def pubs(draw: Any) -> Pub:
    qos = draw(st.integers(0, 2))
    return Pub(
        topic=draw(topics),
        payload=draw(st.one_of(st.just(b""), st.binary(max_size=300))),
        qos=qos,
        retain=draw(st.booleans()),
        dup=qos > 0 and draw(st.booleans()),
        mid=draw(st.integers(1, 65535)),
        # Opaque to us: only their length counts (one byte of it, or two from 128 bytes on).
        props=draw(st.one_of(st.just(b""), st.binary(max_size=20), st.binary(min_size=128, max_size=140))),
    )


@dataclass
class Reader:
    """A `_Protocol` with what its reader touches: the connection, gmqtt's own handler, a transport."""

    got: list[InboundMessage] = field(default_factory=list)
    other: list[Any] = field(default_factory=list)
    aborted: bool = False

    def __post_init__(self) -> None:
        handler = Client("fuzz")._package_handler
        handler.__class__ = _DeferredAckHandler
        handler.sink = self.got.append
        handler.link = None
        reader = self

        class Connection:
            _handler = handler
            _last_data_in = 0.0

            def put_package(self, package: Any) -> None:
                reader.other.append(package)

        class Transport:
            def abort(self) -> None:
                reader.aborted = True

        handler._connection = Connection()
        self.proto = _Protocol.__new__(_Protocol)
        self.proto._connection = handler._connection
        self.proto._transport = Transport()

    def feed(self, chunks: list[bytes]) -> bytes | None:
        """gmqtt's `_read_loop`: append, parse, keep the rest; None once the reader reset the connection."""
        buf = b""
        for chunk in chunks:
            buf += chunk
            parsed = self.proto._read_packet(buf)
            if parsed == -1:
                assert self.aborted
                return None
            buf = buf[parsed:]
        assert not self.aborted
        return buf

    def seen(self) -> list[tuple[str, bytes, int, bool, int | None]]:
        return [(m.topic, m.payload, m.qos, m.retain, m.mid) for m in self.got]


def cut(data: bytes, points: list[int]) -> list[bytes]:
    edges = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [data[a:b] for a, b in itertools.pairwise(edges)] or [b""]


@FUZZ
@given(st.lists(pubs(), min_size=1, max_size=8), st.lists(st.integers(0, 10**6), max_size=12), st.booleans())
def test_a_valid_stream_cut_anywhere_gives_exactly_its_messages(
    messages: list[Pub], points: list[int], pings: bool
) -> None:
    stream = b"".join(m.encode() + (PINGRESP if pings else b"") for m in messages)
    reader = Reader()
    assert reader.feed(cut(stream, points)) == b""
    assert reader.seen() == [m.seen() for m in messages]
    assert len(reader.other) == (len(messages) if pings else 0)


def test_every_single_split_point_and_one_byte_at_a_time() -> None:
    messages = [Pub("a/b", b"", 0), Pub("ü/😀 x", b"\x00\xff" * 70, 1, mid=7, props=b"\x01\x01"),
                Pub("t", b"{}", 2, retain=True, mid=65535)]  # fmt: skip
    stream = b"".join(m.encode() for m in messages)
    expected = [m.seen() for m in messages]
    for i in range(len(stream) + 1):
        reader = Reader()
        assert reader.feed([stream[:i], stream[i:]]) == b"", i
        assert reader.seen() == expected, i
    reader = Reader()
    assert reader.feed([stream[i : i + 1] for i in range(len(stream))]) == b""
    assert reader.seen() == expected


def test_remaining_lengths_and_property_lengths_of_every_width() -> None:
    # Packets whose remaining length takes 1, 2 and 3 bytes, each at its edges (127/128,
    # 16383/16384), and property lengths of 1 and 2 bytes: whole, and cut at every byte of the
    # packet's head.
    base = len(Pub("t", b"", 1, mid=1).encode()) - 2  # remaining length with an empty payload
    messages = [Pub("t", b"p" * (n - base), 1, mid=1 + k) for k, n in enumerate((127, 128, 16_383, 16_384, 20_000))]
    messages += [Pub("t", b"{}", 1, mid=9, props=b"\x26" * n) for n in (127, 128, 300)]
    stream = b"".join(m.encode() for m in messages)
    expected = [m.seen() for m in messages]
    reader = Reader()
    assert reader.feed([stream]) == b""
    assert reader.seen() == expected
    heads = [sum(len(m.encode()) for m in messages[:k]) for k in range(len(messages))]
    for at in {h + d for h in heads for d in range(6)}:
        reader = Reader()
        assert reader.feed([stream[:at], stream[at:]]) == b"", at
        assert reader.seen() == expected, at


def _malformed(kind: str, m: Pub) -> bytes:
    t = m.topic.encode()
    if kind == "topic_past_end":
        body = struct.pack("!H", len(t) + 50) + t
    elif kind == "bad_utf8":
        body = struct.pack("!H", len(t) + 2) + t + b"\xc3\x28" + varint(0) + m.payload
    elif kind == "wildcard":
        body = struct.pack("!H", len(t) + 2) + t + b"/#" + varint(0) + m.payload
    elif kind == "empty_topic":
        body = struct.pack("!H", 0) + varint(0) + m.payload
    elif kind == "props_past_end":
        body = struct.pack("!H", len(t)) + t + varint(len(m.payload) + 10) + m.payload
    elif kind == "props_varint_past_end":
        body = struct.pack("!H", len(t)) + t + b"\x80"
    elif kind == "no_mid":
        body = struct.pack("!H", len(t)) + t
        return bytes([0x32]) + varint(len(body)) + body
    elif kind == "mid_zero":
        body = struct.pack("!H", len(t)) + t + b"\x00\x00" + varint(0) + m.payload
        return bytes([0x32]) + varint(len(body)) + body
    elif kind == "qos3":
        body = struct.pack("!H", len(t)) + t + b"\x00\x01" + varint(0) + m.payload
        return bytes([0x36]) + varint(len(body)) + body
    elif kind == "remaining_length_5_bytes":
        return b"\x30\xff\xff\xff\xff\x01" + b"\x00" * 8
    elif kind == "remaining_length_short":  # says fewer bytes than the topic needs
        good = m.encode()
        return bytes([0x30]) + varint(1) + good[-1:]
    elif kind == "never_from_broker":
        return b"\x82\x05\x00\x01\x00\x00\x00"  # SUBSCRIBE
    else:
        raise AssertionError(kind)
    return bytes([0x30]) + varint(len(body)) + body


KINDS = ["topic_past_end", "bad_utf8", "wildcard", "empty_topic", "props_past_end", "props_varint_past_end",
         "no_mid", "mid_zero", "qos3", "remaining_length_5_bytes", "remaining_length_short",
         "never_from_broker"]  # fmt: skip


@FUZZ
@given(st.lists(pubs(), max_size=4), st.sampled_from(KINDS), pubs(), st.lists(pubs(), min_size=1, max_size=3),
       st.lists(st.integers(0, 10**6), max_size=6))  # fmt: skip
def test_a_malformed_packet_resets_after_delivering_what_came_before(
    before: list[Pub], kind: str, model: Pub, after: list[Pub], points: list[int]
) -> None:
    head = b"".join(m.encode() for m in before)
    stream = head + _malformed(kind, model) + b"".join(m.encode() for m in after)
    reader = Reader()
    assert reader.feed(cut(stream, points)) is None, kind
    assert reader.seen() == [m.seen() for m in before], kind


@FUZZ
@given(st.lists(pubs(), min_size=1, max_size=5), st.data())
def test_mutated_streams_never_raise_and_keep_the_untouched_prefix(messages: list[Pub], data: Any) -> None:
    encoded = [m.encode() for m in messages]
    stream = bytearray(b"".join(encoded))
    at = data.draw(st.integers(0, len(stream) - 1))
    how = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete", "lie_length"]))
    if how == "flip":
        stream[at] ^= data.draw(st.integers(1, 255))
    elif how == "truncate":
        del stream[at:]
    elif how == "insert":
        stream[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    elif how == "delete":
        del stream[at]
    else:  # a remaining length byte that lies, by a little or a lot
        start = sum(map(len, encoded[: data.draw(st.integers(0, len(encoded) - 1))]))
        stream[start + 1] = data.draw(st.integers(0, 255))
        at = start + 1
    reader = Reader()
    rest = reader.feed(cut(bytes(stream), data.draw(st.lists(st.integers(0, 10**6), max_size=6))))
    # Every packet entirely before the first changed byte arrives as it was sent.
    whole, end = 0, 0
    for e in encoded:
        if end + len(e) > at:
            break
        end += len(e)
        whole += 1
    assert reader.seen()[:whole] == [m.seen() for m in messages[:whole]]
    for m in reader.got:  # and whatever else arrived is a well-formed message
        assert m.topic and not set(m.topic) & {"+", "#", "\x00"} and m.qos in (0, 1, 2)
        assert (m.mid is None) == (m.qos == 0) and m.mid != 0
    assert rest is None or isinstance(rest, bytes)


@FUZZ
@given(st.binary(max_size=400), st.lists(st.integers(0, 10**6), max_size=6))
def test_random_bytes_never_raise(garbage: bytes, points: list[int]) -> None:
    reader = Reader()
    reader.feed(cut(garbage, points))
    for m in reader.got:
        assert m.topic and m.qos in (0, 1, 2)


@pytest.mark.parametrize("payload", [b"", b"x", b"\x00" * 1000])
def test_zero_and_short_payloads(payload: bytes) -> None:
    reader = Reader()
    assert reader.feed([Pub("a", payload, 1, mid=3).encode()]) == b""
    assert reader.seen() == [("a", payload, 1, False, 3)]


def test_messages_of_one_read_get_distinct_microseconds() -> None:
    # An unstamped message is stored at its receive time, to the microsecond: a burst in one read
    # must not give two of one device's messages the same (device_id, ts), or the second would be
    # taken for a redelivery of the first (tests/test_rate_limit.py lost one that way).
    reader = Reader()
    burst = b"".join(Pub("p/D1/telemetry", b"{}", 1, mid=i + 1).encode() for i in range(2000))
    assert reader.feed([burst]) == b""
    stamps = [datetime.fromtimestamp(m.received_at, UTC) for m in reader.got]
    assert len(set(stamps)) == 2000 and stamps == sorted(stamps)
    # The writer's conversion (microseconds since PostgreSQL's epoch) keeps them apart too.
    pg_us = [round((m.received_at - 946_684_800) * 1e6) for m in reader.got]
    assert all(b > a for a, b in itertools.pairwise(pg_us))
