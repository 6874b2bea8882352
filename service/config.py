"""Settings from the environment and `.env` (pydantic-settings).

A bad value stops start-up with one line naming the setting: see `load_settings()`.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_ASYNC_SCHEME = "postgresql+asyncpg"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_ignore_empty=True, extra="ignore", case_sensitive=False)

    # Broker
    mqtt_broker_host: str = "localhost"
    mqtt_broker_port: Annotated[int, Field(ge=1, le=65535)] = 1883
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    mqtt_keepalive: Annotated[int, Field(ge=5, le=65535)] = 60
    # Stable by default: the broker keeps our session (and queues messages) across restarts.
    mqtt_client_id: Annotated[str, Field(min_length=1, max_length=128)] = "autocore-monitor"
    mqtt_topic_prefix: Annotated[str, Field(min_length=1, pattern=r"^[^+#]+$")] = "autocore"
    # How long the broker keeps the session while we are away (seconds); must outlive a restart.
    mqtt_session_expiry: Annotated[int, Field(ge=0, le=0xFFFFFFFF)] = 86_400
    # CONNECT Receive Maximum: unacknowledged QoS 1 messages the broker may send us.
    # This is the service's only buffer: memory is bounded by it.
    mqtt_receive_maximum: Annotated[int, Field(ge=1, le=65535)] = 4_000
    mqtt_monitor_enabled: bool = True
    mqtt_monitor_log_level: str = "INFO"
    mqtt_monitor_reconnect_delay: Annotated[float, Field(gt=0, le=3600)] = 5.0
    mqtt_reconnect_max_delay: Annotated[float, Field(gt=0, le=86_400)] = 60.0
    mqtt_connect_timeout: Annotated[float, Field(gt=0, le=600)] = 10.0

    # Database
    database_url: str = f"{_ASYNC_SCHEME}://postgres@localhost:5432/autocore"
    # PostgreSQL schema holding the service's tables (created if missing): lets the service share a
    # database with other applications without name clashes.
    database_schema: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]{0,62}$")] = "public"
    db_migrate_on_start: bool = True
    db_pool_size: Annotated[int, Field(ge=1, le=100)] = 5

    # Writer
    writer_batch_size: Annotated[int, Field(ge=1, le=50_000)] = 2_000
    writer_linger_ms: Annotated[float, Field(ge=0, le=60_000)] = 20.0
    writer_retry_max_delay: Annotated[float, Field(gt=0, le=3600)] = 30.0
    # Last-seen updates for a device are coalesced to at most one per this many seconds.
    device_last_seen_resolution: Annotated[float, Field(ge=0, le=3600)] = 1.0

    shutdown_grace_seconds: Annotated[float, Field(ge=0, le=3600)] = 20.0

    # HTTP API
    # Bearer token for mutating endpoints (dead-letter replay); unset disables them (403).
    api_token: SecretStr | None = None
    # No message for this many seconds while devices are known turns health "degraded"; 0 = off.
    health_stale_after_seconds: Annotated[float, Field(ge=0, le=86_400)] = 300.0

    # History (docs/retention.md): days kept, 0 = forever. Retention drops whole partitions.
    telemetry_retention_days: Annotated[int, Field(ge=0, le=36_500)] = 30
    relay_history_retention_days: Annotated[int, Field(ge=0, le=36_500)] = 365
    dead_letter_retention_days: Annotated[int, Field(ge=0, le=36_500)] = 30
    # Resolved alerts; applies once the alerts table exists (skipped while it does not).
    alert_retention_days: Annotated[int, Field(ge=0, le=36_500)] = 90
    rollup_retention_days: Annotated[int, Field(ge=0, le=36_500)] = 400
    # Partition upkeep and retention run at start and then this often (any value from 1 s).
    retention_interval_seconds: Annotated[float, Field(ge=1, le=30 * 86_400)] = 3600.0
    # The rollup sweep runs this often; 0 = never (reads then always aggregate the raw rows).
    rollup_interval_seconds: Annotated[float, Field(ge=0, le=86_400)] = 30.0
    # Rows are rolled up once they were received this long ago: a batch still on its way to the
    # database (the writer's linger and retries) must be committed by then.
    rollup_settle_seconds: Annotated[float, Field(ge=0, le=86_400)] = 60.0

    @field_validator("mqtt_monitor_log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in logging.getLevelNamesMapping():
            raise ValueError(f"unknown log level {value!r} (use DEBUG, INFO, WARNING, ERROR)")
        return level

    @field_validator("api_token")
    @classmethod
    def _usable_token(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty token would let an empty "Authorization: Bearer" in.
        token = value.get_secret_value() if value is not None else None
        if token is not None and (not token or token.strip() != token):
            raise ValueError("must be non-empty without leading or trailing spaces (unset it to disable replays)")
        return value

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        scheme, sep, rest = value.partition("://")
        if not sep or not rest:
            raise ValueError("expected a URL such as postgresql+asyncpg://user@host:5432/dbname")
        if scheme in ("postgres", "postgresql", "postgresql+psycopg", "postgresql+psycopg2"):
            scheme = _ASYNC_SCHEME
        if scheme != _ASYNC_SCHEME:
            raise ValueError(f"unsupported scheme {scheme!r}: use postgresql+asyncpg://")
        return f"{scheme}://{rest}"

    @field_validator("mqtt_topic_prefix")
    @classmethod
    def _strip_slashes(cls, value: str) -> str:
        stripped = value.strip("/")
        if not stripped:
            raise ValueError("must contain at least one topic level")
        return stripped

    @field_validator("mqtt_reconnect_max_delay")
    @classmethod
    def _cap_not_below_first_step(cls, value: float, info: Any) -> float:
        first = info.data.get("mqtt_monitor_reconnect_delay")
        if first is not None and value < first:
            raise ValueError(f"must be >= MQTT_MONITOR_RECONNECT_DELAY ({first})")
        return value


class SettingsError(SystemExit):
    """Start-up stops here: one line that names the setting."""


def load_settings(**overrides: Any) -> Settings:
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]).upper() if first["loc"] else "settings"
        raise SettingsError(
            f"invalid setting {name}: {first['msg']} (got {first.get('input')!r})"
            if name not in ("MQTT_PASSWORD", "DATABASE_URL", "API_TOKEN")
            else f"invalid setting {name}: {first['msg']}"
        ) from None
