"""Our PUBLISH encoder (service/mqtt/transport.py:publish_packet) makes gmqtt's bytes."""

from __future__ import annotations

from typing import Any

from gmqtt import Message
from gmqtt.mqtt.constants import MQTTv50
from gmqtt.mqtt.package import PublishPacket
from hypothesis import given
from hypothesis import strategies as st

from service.mqtt.transport import IDEMPOTENCY_KEY, publish_packet


class _Ids:
    def __init__(self, mid: int) -> None:
        self.mid = mid

    def next_id(self) -> int:
        return self.mid


class _Protocol:
    proto_ver = MQTTv50

    def __init__(self, mid: int) -> None:
        self.id_generator = _Ids(mid)


def gmqtt_bytes(topic: str, payload: bytes, qos: int, retain: bool, mid: int, key: str | None) -> bytes:
    extra: dict[str, Any] = {} if key is None else {"user_property": (IDEMPOTENCY_KEY, key)}
    got_mid, packet = PublishPacket.build_package(Message(topic, payload, qos=qos, retain=retain, **extra),
                                                  _Protocol(mid))  # fmt: skip
    assert got_mid == (mid if qos else None)
    return bytes(packet)


topics = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00+#"), min_size=1, max_size=80)
# Payload sizes around the remaining length's width changes (127/128, 16 383/16 384 with the head).
payloads = st.one_of(st.binary(max_size=300), st.integers(16_300, 16_500).map(lambda n: b"p" * n))
keys = st.none() | st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)


@given(topics, payloads, st.sampled_from([0, 1]), st.booleans(), st.integers(1, 65535), keys)
def test_the_same_bytes_as_gmqtt(topic: str, payload: bytes, qos: int, retain: bool, mid: int, key: str | None) -> None:
    ours = publish_packet(topic, payload, qos, retain, mid if qos else None, key)
    assert ours == gmqtt_bytes(topic, payload, qos, retain, mid, key)


def test_a_key_long_enough_for_a_two_byte_property_length() -> None:
    key = "k" * 200  # the property block passes 127 bytes
    assert publish_packet("a/é/b", b"{}", 1, False, 7, key) == gmqtt_bytes("a/é/b", b"{}", 1, False, 7, key)
