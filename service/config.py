"""Settings from the environment and `.env` (pydantic-settings).

A bad value stops start-up with one line naming the setting: see `load_settings()`.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.routing.middleware.rate_limit import RateRule

_ASYNC_SCHEME = "postgresql+asyncpg"
DEFAULT_CLIENT_ID = "autocore-monitor"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_ignore_empty=True, extra="ignore", case_sensitive=False)

    # Broker
    mqtt_broker_host: str = "localhost"
    mqtt_broker_port: Annotated[int, Field(ge=1, le=65535)] = 1883
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    mqtt_keepalive: Annotated[int, Field(ge=5, le=65535)] = 60
    # Stable by default: the broker keeps our session (and queues messages) across restarts.
    # May contain {hostname} (the pod name in Kubernetes) and {pid}: see `client_id`.
    mqtt_client_id: Annotated[str, Field(min_length=1, max_length=128)] = DEFAULT_CLIENT_ID
    # Shared-subscription group: replicas subscribe $share/<group>/<prefix>/# and split the traffic.
    mqtt_shared_group: Annotated[str | None, Field(pattern=r"^[^/+#$\s]+$", max_length=64)] = None
    mqtt_topic_prefix: Annotated[str, Field(min_length=1, pattern=r"^[^+#]+$")] = "autocore"
    # How long the broker keeps the session while we are away (seconds); must outlive a restart.
    mqtt_session_expiry: Annotated[int, Field(ge=0, le=0xFFFFFFFF)] = 86_400
    # CONNECT Receive Maximum: unacknowledged QoS 1 messages the broker may send us.
    # This is the service's only buffer: memory is bounded by it.
    mqtt_receive_maximum: Annotated[int, Field(ge=1, le=65535)] = 4_000
    mqtt_monitor_enabled: bool = True
    mqtt_monitor_log_level: str = "INFO"
    # text (default) or json: one JSON object per line for log collectors.
    log_format: Literal["text", "json"] = "text"
    # The logging middleware on every route (DEBUG line per message, WARNING per dead letter,
    # INFO on a status change).
    log_messages: bool = True
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

    # Routing middleware: rate limits
    rate_limits: list[RateRule] = Field(default_factory=list)  # JSON list, see docs/routing.md
    rate_limit_exempt_devices: Annotated[list[str], NoDecode] = Field(default_factory=list)  # globs, comma-separated
    # Redis shared by the replicas (redis://host:6379/0); unset = limits held in each process.
    rate_limit_redis_url: SecretStr | None = None
    rate_limit_redis_timeout: Annotated[float, Field(gt=0, le=10)] = 0.5

    # Routing middleware: HMAC-SHA256 signed envelopes
    hmac_secret: SecretStr | None = None
    hmac_secret_previous: SecretStr | None = None  # accepted as well while a fleet rotates keys
    hmac_required: bool = False  # every route refuses unsigned messages
    hmac_routes: Annotated[list[str], NoDecode] = Field(default_factory=list)  # routes that refuse unsigned ones

    @field_validator("rate_limit_exempt_devices", "hmac_routes", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _routing(self) -> Settings:
        from service.routes import ROUTE_NAMES  # the route table, imported late (it imports the handlers)

        for rule in self.rate_limits:
            if rule.route not in ROUTE_NAMES:
                raise ValueError(f"RATE_LIMITS: unknown route {rule.route!r} (routes: {', '.join(ROUTE_NAMES)})")
        unknown = [r for r in self.hmac_routes if r not in ROUTE_NAMES]
        if unknown:
            raise ValueError(f"HMAC_ROUTES: unknown route {unknown[0]!r} (routes: {', '.join(ROUTE_NAMES)})")
        if (self.hmac_required or self.hmac_routes or self.hmac_secret_previous) and not self.hmac_secret:
            raise ValueError("HMAC_REQUIRED, HMAC_ROUTES and HMAC_SECRET_PREVIOUS need HMAC_SECRET")
        for name in ("hmac_secret", "hmac_secret_previous"):
            secret = getattr(self, name)
            if secret is not None and len(secret.get_secret_value()) < 16:
                raise ValueError(f"{name.upper()} must be at least 16 characters")
        if self.mqtt_shared_group and self.mqtt_client_id == DEFAULT_CLIENT_ID:
            raise ValueError(
                "MQTT_SHARED_GROUP needs a client id of each replica's own: set MQTT_CLIENT_ID, "
                "e.g. autocore-monitor-{hostname} (the fixed default would make the replicas take over "
                "each other's session)"
            )
        return self

    @property
    def client_id(self) -> str:
        """MQTT_CLIENT_ID with {hostname} and {pid} filled in."""
        return self.mqtt_client_id.replace("{hostname}", socket.gethostname()).replace("{pid}", str(os.getpid()))

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


# Their values never appear in an error message.
_SECRET_SETTINGS = (
    "MQTT_PASSWORD", "DATABASE_URL", "API_TOKEN", "HMAC_SECRET", "HMAC_SECRET_PREVIOUS", "RATE_LIMIT_REDIS_URL",
)  # fmt: skip


class SettingsError(SystemExit):
    """Start-up stops here: one line that names the setting."""


def load_settings(**overrides: Any) -> Settings:
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        if not first["loc"]:  # a check across settings: its message names them
            raise SettingsError(f"invalid settings: {first['msg'].removeprefix('Value error, ')}") from None
        name = str(first["loc"][0]).upper()
        raise SettingsError(
            f"invalid setting {name}: {first['msg']} (got {first.get('input')!r})"
            if name not in _SECRET_SETTINGS
            else f"invalid setting {name}: {first['msg']}"
        ) from None
