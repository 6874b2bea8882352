"""The msgspec fast path accepts and refuses exactly what Pydantic does, with the same records and reasons."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.models import DeviceStatus, RelayStatus, Telemetry
from service.models.fast import FAST_DECODERS
from service.mqtt.message import InboundMessage
from service.pipeline import Pipeline
from service.routes import build_router

ROUTER = build_router("autocore")
FAST = Pipeline(ROUTER)
REFERENCE = Pipeline(ROUTER, fast_decode=False)

# Timestamps in the forms devices send and the ones near them that parsers disagree on.
_digits = st.integers(0, 9).map(str)
stamps = st.builds(
    lambda y, mo, d, sep, h, mi, s, frac, tz: f"{y:04d}-{mo:02d}-{d:02d}{sep}{h:02d}:{mi:02d}:{s:02d}{frac}{tz}",
    st.integers(0, 10000),
    st.integers(0, 13),
    st.integers(0, 32),
    st.sampled_from(["T", "t", " ", "_"]),
    st.integers(0, 25),
    st.integers(0, 61),
    st.integers(0, 61),
    st.one_of(st.just(""), st.text("0123456789", min_size=0, max_size=10).map(lambda f: "." + f)),
    st.sampled_from(["", "Z", "z", "+00:00", "-00:00", "+01:30", "-23:59", "+24:00", "+0100", "+01:30:15", "+01"]),
)
numbers = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -0.0, 100, 100.0000001, 65535, 65536, 2**63, 1e308]),
)
# Strings at the models' length limits (64, 128), in characters of 1 to 4 UTF-8 bytes.
boundary_text = st.builds(lambda n, c: c * n, st.sampled_from([0, 1, 63, 64, 65, 127, 128, 129]),
                          st.sampled_from(["a", "é", "😀", "/", "+", "\x00"]))  # fmt: skip
scalars = st.one_of(
    st.none(),
    boundary_text,
    st.booleans(),
    numbers,
    numbers.map(str),
    stamps,
    st.text(max_size=70),
    st.sampled_from(["online", "offline", "ONLINE", "10.0.0.1", "::1", "2001:db8::0:1", "999.1.1.1", "ESP32_007"]),
)
values = st.one_of(scalars, st.lists(scalars, max_size=2), st.dictionaries(st.text(max_size=3), scalars, max_size=2))
FIELDS = ["device_id", "timestamp", "temperature", "humidity", "voltage", "memory_free", "relay_index", "state",
          "triggered_by", "status", "ip_address", "firmware_version", "uptime", "rssi"]  # fmt: skip

# Mostly well-formed messages (the fast path's business), with any field replaced by anything.
TEMPLATES = {
    "telemetry": {"device_id": "ESP32_007", "temperature": 20.5, "humidity": 31.3, "voltage": 3.07,
                  "memory_free": 40101, "timestamp": "2025-01-28T00:00:01.007Z"},
    "relay": {"relay_index": 2, "state": True, "triggered_by": "schedule", "timestamp": "2025-01-28T00:00:01Z"},
    "status": {"status": "online", "ip_address": "10.0.1.2", "firmware_version": "1.2.0", "uptime": 7,
               "timestamp": "2025-01-28T00:00:01.5+01:00"},
}  # fmt: skip
TOPICS = {"telemetry": "autocore/ESP32_007/telemetry", "relay": "autocore/ESP32_007/relay/2/status",
          "status": "autocore/ESP32_007/status"}  # fmt: skip


@st.composite
def messages(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(sorted(TEMPLATES)))
    body: dict[str, Any] = dict(TEMPLATES[kind])
    for key in draw(st.lists(st.sampled_from(FIELDS), max_size=3)):
        if draw(st.booleans()) and key in body:
            del body[key]
        else:
            body[key] = draw(values)
    topic = TOPICS[kind]
    claimed = body.get("device_id")
    if isinstance(claimed, str) and claimed and "/" not in claimed and draw(st.booleans()):
        topic = topic.replace("ESP32_007", claimed)  # the payload names the topic's device: checked, not refused
    text = json.dumps(body, allow_nan=False)
    if draw(st.integers(0, 20)) == 0:  # now and then not JSON, or not an object
        text = draw(st.sampled_from([text[:-1], text + "x", "[]", "null", "1", text.replace("{", "{{", 1)]))
    return topic, text.encode()


def comparable(value: Any) -> Any:
    """Records with each datetime as (instant, offset): the same stored value and the same zone."""
    if isinstance(value, datetime):
        return (value, value.utcoffset())
    if isinstance(value, tuple):
        return tuple(comparable(v) for v in value)
    return value


async def outcome(pipeline: Pipeline, topic: str, payload: bytes) -> Any:
    message = InboundMessage(topic, payload, 1, False, 1_738_022_400.0, 1, None)
    route, records = await pipeline.process(message)
    # A dead letter's fields, its digest included, all follow from the message and the error text.
    return route, [comparable(tuple(r)) for r in records]


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
async def test_fast_path_decides_as_pydantic(message: tuple[str, bytes]) -> None:
    topic, payload = message
    assert await outcome(FAST, topic, payload) == await outcome(REFERENCE, topic, payload)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(TEMPLATES)), stamps)
async def test_timestamps_as_pydantic(kind: str, stamp: str) -> None:
    payload = json.dumps({**TEMPLATES[kind], "timestamp": stamp}).encode()
    assert await outcome(FAST, TOPICS[kind], payload) == await outcome(REFERENCE, TOPICS[kind], payload)


def test_plain_messages_take_the_fast_path() -> None:
    # Otherwise the comparison above would only compare Pydantic with itself.
    for model, kind in ((Telemetry, "telemetry"), (RelayStatus, "relay"), (DeviceStatus, "status")):
        assert FAST_DECODERS[model](json.dumps(TEMPLATES[kind]).encode()) is not None, kind
    # and what it cannot be sure of goes to Pydantic
    telemetry = FAST_DECODERS[Telemetry]
    assert telemetry(b'{"temperature": 1, "rssi": -70}') is None  # an extra reading
    assert telemetry(b'{"temperature": "20.5"}') is None  # a number as a string
    assert telemetry(b'{"timestamp": "2025-01-28T00:00:01.1234567Z"}') is None  # 7 digits: Pydantic truncates


async def test_refusals_keep_pydantics_reasons() -> None:
    _route, records = await FAST.process(
        InboundMessage("autocore/D1/telemetry", b'{"humidity": 140}', 1, False, time.time(), 1, None)
    )
    (dead,) = records
    assert dead.stage == "validation"
    assert "humidity" in dead.error_message
    assert "less than or equal to 100" in dead.error_message


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(TEMPLATES)), st.one_of(boundary_text, st.text(min_size=1, max_size=140)))
async def test_device_ids_as_pydantic(kind: str, device: str) -> None:
    # The payload names the topic's own device: only the model's DeviceId rules can refuse it.
    topic = TOPICS[kind].replace("ESP32_007", device.replace("/", "_") or "x")
    payload = json.dumps({**TEMPLATES[kind], "device_id": device}).encode()
    assert await outcome(FAST, topic, payload) == await outcome(REFERENCE, topic, payload)
