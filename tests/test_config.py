from __future__ import annotations

import os
import subprocess
import sys

import pytest

from service.config import Settings, SettingsError, load_settings, redact_url


def start(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MQTT_", "DATABASE_", "DB_", "WRITER_"))}
    return subprocess.run([sys.executable, "-c", "import service.main"], env={**clean, **env},
                          capture_output=True, text=True, timeout=60)  # fmt: skip


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MQTT_BROKER_PORT", "abc"),
        ("MQTT_BROKER_PORT", "70000"),
        ("MQTT_MONITOR_ENABLED", "maybe"),
        ("MQTT_MONITOR_LOG_LEVEL", "LOUD"),
        ("WRITER_BATCH_SIZE", "0"),
        ("MQTT_TOPIC_PREFIX", "a/#"),
    ],
)
def test_bad_setting_stops_startup_naming_it(name: str, value: str) -> None:
    result = start({name: value})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"invalid setting {name}:")


def test_bad_database_url_is_named_without_echoing_it() -> None:
    result = start({"DATABASE_URL": "mysql://root:s3cret@db/x"})
    assert result.returncode == 1
    assert result.stderr.startswith("invalid setting DATABASE_URL:")
    assert "s3cret" not in result.stderr


def test_libpq_url_gets_the_async_driver() -> None:
    s = Settings(database_url="postgresql://u@h:5432/d", _env_file=None)  # type: ignore[call-arg]
    assert s.database_url == "postgresql+asyncpg://u@h:5432/d"


def test_reconnect_cap_below_first_step_is_refused() -> None:
    with pytest.raises(SettingsError, match="MQTT_RECONNECT_MAX_DELAY"):
        load_settings(mqtt_monitor_reconnect_delay=10, mqtt_reconnect_max_delay=1, _env_file=None)


@pytest.mark.parametrize("token", [" s3cret-token", "s3cret-token\n", "   "])
def test_unusable_api_token_is_refused_without_echoing_it(token: str) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(api_token=token, _env_file=None)
    assert str(refused.value).startswith("invalid setting API_TOKEN: Value error, must be non-empty")
    assert "s3cret" not in str(refused.value)


def test_stale_window_setting() -> None:
    assert load_settings(_env_file=None).health_stale_after_seconds == 300
    assert load_settings(health_stale_after_seconds=0, _env_file=None).health_stale_after_seconds == 0
    with pytest.raises(SettingsError, match="HEALTH_STALE_AFTER_SECONDS"):
        load_settings(health_stale_after_seconds=-1, _env_file=None)


def test_redacted_urls_keep_no_credentials() -> None:
    assert redact_url("https://user:pw@hooks.slack.com/services/T0/B0/SECRET?x=1#f") == "https://hooks.slack.com/services/…"
    assert redact_url("http://127.0.0.1:8080/hook") == "http://127.0.0.1:8080/hook"
    assert redact_url("https://ops.example") == "https://ops.example"
