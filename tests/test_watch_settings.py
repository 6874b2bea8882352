"""Fleet-watch settings: a bad value stops start-up naming it (never echoing a secret); the parsed forms."""

from __future__ import annotations

import pytest

from service.config import SettingsError, load_settings, parse_critical_relays
from service.mqtt.transport import MqttTransport, PublishError


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("critical_relays", "ESP32_001"),
        ("critical_relays", "ESP32_001:x"),
        ("device_registration", "manual"),
        ("device_offline_after_seconds", "-1"),
        ("notify_max_age_seconds", "0"),
        ("alert_mqtt_topic", "a/+/b"),
    ],
)
def test_bad_watch_setting_is_named(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"invalid setting {name.upper()}:"):
        load_settings(_env_file=None, **{name: value})


def test_bad_webhook_url_is_named_without_echoing_credentials() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(_env_file=None, alert_webhook_urls="https://ok.example/h,ftp://user:pw@x/h")
    assert str(caught.value).startswith("invalid setting ALERT_WEBHOOK_URLS:")
    assert "pw" not in str(caught.value)


def test_parsed_forms() -> None:
    assert parse_critical_relays("ESP32_001:0, *:3,GH_*:*") == [("ESP32_001", 0), ("*", 3), ("GH_*", None)]
    s = load_settings(_env_file=None, mqtt_topic_prefix="fleet", alert_webhook_urls=" http://a/h , https://b/h ")
    assert s.alert_topic == "fleet/alerts"
    assert s.webhook_urls == ["http://a/h", "https://b/h"]
    assert load_settings(_env_file=None, alert_mqtt_topic="/ops/alerts/").alert_topic == "ops/alerts"


async def test_publish_without_a_connection_is_refused() -> None:
    transport = MqttTransport(load_settings(_env_file=None), [("x/#", 1)])
    with pytest.raises(PublishError, match="not connected"):
        await transport.publish("x/alerts/D/offline", b"{}")
