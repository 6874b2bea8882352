from __future__ import annotations

import pytest

from service.routing.topics import compile_topic


@pytest.mark.parametrize(
    ("template", "mqtt_filter", "params"),
    [
        ("autocore/{device_id}/status", "autocore/+/status", ("device_id",)),
        ("autocore/{device_id}/relay/{relay:int}/status", "autocore/+/relay/+/status", ("device_id", "relay")),
        ("a/b", "a/b", ()),
    ],
)
def test_compile(template: str, mqtt_filter: str, params: tuple[str, ...]) -> None:
    compiled = compile_topic(template)
    assert compiled.filter == mqtt_filter
    assert compiled.param_names == params


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("autocore/ESP32_001/relay/3/status", {"device_id": "ESP32_001", "relay": 3}),
        ("autocore/ESP32_001/relay/x/status", None),
        ("autocore/ESP32_001/relay/-1/status", None),
        ("autocore/ESP32_001/relay/3/status/extra", None),
        ("autocore/ESP32_001/relay/3", None),
        ("other/ESP32_001/relay/3/status", None),
    ],
)
def test_match(topic: str, expected: dict[str, object] | None) -> None:
    compiled = compile_topic("autocore/{device_id}/relay/{relay:int}/status")
    assert compiled.match(topic.split("/")) == expected


def test_format_round_trip() -> None:
    compiled = compile_topic("autocore/{device_id}/relay/{relay:int}/status")
    topic = compiled.format(device_id="D1", relay=2)
    assert topic == "autocore/D1/relay/2/status"
    assert compiled.match(topic.split("/")) == {"device_id": "D1", "relay": 2}
    with pytest.raises(KeyError, match="relay"):
        compiled.format(device_id="D1")


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("a/{id}/{id}", "duplicated parameter 'id'"),
        ("a/{id:uuid}", "unknown parameter type 'uuid'"),
        ("a/+/b", "invalid topic level '\\+'"),
        ("a//b", "invalid topic level ''"),
        ("/a", "must not be empty"),
    ],
)
def test_bad_templates(template: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compile_topic(template)
